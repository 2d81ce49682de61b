#!/usr/bin/env python3
"""Golden fixtures for the multimodal metrics of sightline-metrics (crates/metrics: caption/,
vqa.rs, pope.rs, mme.rs), spec/multimodal-eval.md E3-E6.

Run from the repository root (needs Java >= 8 on PATH for the Stanford PTBTokenizer that
pycocoevalcap bundles, and scikit-learn for the MME reference):

    .venv-ref/bin/pip install pycocoevalcap==1.2 scikit-learn
    .venv-ref/bin/python scripts/reference/make_mm_metric_fixtures.py

It writes tests/fixtures/mm_metrics/mm_metrics.json (deterministic: fixed seeds, no set order):

  meta      versions and sources
  ptb       [{text, tokens}]: pycocoevalcap 1.2 PTBTokenizer (Stanford CoreNLP 3.4.1
            `-preserveLines -lowerCase`, then its punctuation filter) on 400 COCO val2014
            captions (data/llava/caps_boxes_coco2014_val_80.jsonl), BLIP/LAION captions
            (data/llava/LLaVA-Pretrain/blip_laion_cc_sbu_2k.json), GPT-4 answer sentences
            (data/llava/coco2014_val_qa_eval/qa90_gpt4_answer.jsonl) and hand-made edge cases.
  caption   [{name, candidates: [[id, caption]], references: {id: [caption]}, tokenized_res,
            bleu: [4], bleu_per_image: [[4]], rouge_l, rouge_l_per_image,
            cider_d, cider_d_per_image}] exactly as SBT's coco_metric.COCOEvalCap.evaluate calls
            pycocoevalcap (tokenize gts and res separately, Bleu(4) with option "closest",
            Rouge(), Cider()); values unscaled (SBT multiplies by 100 when it reports).
  vqa       normalize: [{text, normalized}]; cases: [{answer, annotators, accuracy}];
            postprocess: [{text, processed}]
  pope      templates (model outputs) with their parsed answer; splits [{name, labels "y"/"n"
            string, answers (template indices), tp, fp, tn, fn, acc, precision, recall, f1,
            yes_ratio (null where Python raises ZeroDivisionError)}]
  mme       tasks: {task: [line]}, per-task acc / acc_plus / score / tp / fn / tn / fp /
            precision / recall / other_num, perception, cognition.

The SBT metric files (UCSC-VLAA/Sight-Beyond-Text @ 47f96a32 llava/eval/mmoverall/
{vqa_metric,pope_metric,mme_metric}.py; vqa_metric.py is GT-Vision-Lab/VQA @ a013f00 vqaEval.py)
are not pip-installable, so the functions below re-state them line by line as the oracle; the
caption metrics come from the pycocoevalcap package itself.
"""
import importlib.metadata
import json
import os
import random
import re
import sys
import tempfile

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("SIGHTLINE_DATA", "/work/shared/data")
OUT = os.path.join(ROOT, "tests", "fixtures", "mm_metrics", "mm_metrics.json")


# ---------------------------------------------------------------------------------------------
# Oracle: VQA (vqaEval.py VQAEval.__init__ tables, processPunctuation, processDigitArticle,
# evaluate's per-question loop) and SBT postprocess_vqa_generation.
# ---------------------------------------------------------------------------------------------
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
              "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
         "`", ",", "?", "!"]


def vqa_process_punctuation(in_text):
    out = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(COMMA_STRIP, in_text) != None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)  # re.UNICODE (= 32) lands in `count`


def vqa_process_digit_article(in_text):
    out = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.setdefault(word, word)
        if word not in ARTICLES:
            out.append(word)
    for i, word in enumerate(out):
        if word in CONTRACTIONS:
            out[i] = CONTRACTIONS[word]
    return " ".join(out)


def vqa_accuracy(answer, annotators):
    # Annotations carry distinct answer_ids, so `item != gtAnsDatum` removes exactly one entry.
    gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(annotators)]
    for g in gts:
        g["answer"] = g["answer"].replace("\n", " ").replace("\t", " ").strip()
    res = answer.replace("\n", " ").replace("\t", " ").strip()
    if len(set(g["answer"] for g in gts)) > 1:
        for g in gts:
            g["answer"] = vqa_process_digit_article(vqa_process_punctuation(g["answer"]))
        res = vqa_process_digit_article(vqa_process_punctuation(res))
    accs = []
    for g in gts:
        others = [item for item in gts if item != g]
        matching = [item for item in others if item["answer"] == res]
        accs.append(min(1, float(len(matching)) / 3))
    return float(sum(accs)) / len(accs)


def vqa_postprocess(predictions):
    predictions = re.split("Question|Answer|###|</s>", predictions, 1)[0]
    if "Yes" in predictions or "yes" in predictions:
        return "Yes"
    if "No" in predictions or "no" in predictions:
        return "No"
    return predictions


# ---------------------------------------------------------------------------------------------
# Oracle: POPE (pope_metric.get_pope_results, the POPE repo's evaluate.py parsing).
# ---------------------------------------------------------------------------------------------
def pope_parse(text):
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_scores(answers, labels):
    label_list = [0 if l == "no" else 1 for l in labels]
    pred_list = [0 if pope_parse(a) == "no" else 1 for a in answers]
    out = {}
    tp = tn = fp = fn = 0
    for pred, label in zip(pred_list, label_list):
        if pred == 1 and label == 1:
            tp += 1
        elif pred == 1 and label == 0:
            fp += 1
        elif pred == 0 and label == 0:
            tn += 1
        elif pred == 0 and label == 1:
            fn += 1
    out.update(tp=tp, fp=fp, tn=tn, fn=fn)

    def guard(f):
        try:
            return f()
        except ZeroDivisionError:
            return None

    out["yes_ratio"] = guard(lambda: pred_list.count(1) / len(pred_list))
    precision = guard(lambda: float(tp) / float(tp + fp))
    recall = guard(lambda: float(tp) / float(tp + fn))
    out["precision"] = precision
    out["recall"] = recall
    out["f1"] = None if precision is None or recall is None else guard(
        lambda: 2 * precision * recall / (precision + recall))
    out["acc"] = guard(lambda: (tp + tn) / (tp + tn + fp + fn))
    return out


# ---------------------------------------------------------------------------------------------
# Oracle: MME (mme_metric.calculate_metrics, with sklearn as SBT imports it).
# ---------------------------------------------------------------------------------------------
MME_TYPES = {
    "Perception": ["existence", "count", "position", "color", "posters", "celebrity", "scene", "OCR"],
    "Cognition": ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"],
}


def mme_parse_pred(pred_ans):
    if pred_ans in ["yes", "no"]:
        return pred_ans
    prefix = pred_ans[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_compute_metric(gts, preds):
    from sklearn.metrics import confusion_matrix, precision_score, recall_score, accuracy_score
    label_map = {"yes": 1, "no": 0, "other": -1}
    gts = [label_map[x] for x in gts]
    preds = [label_map[x] for x in preds]
    acc = accuracy_score(gts, preds)
    clean_gts, clean_preds, other_num = [], [], 0
    for gt, pred in zip(gts, preds):
        if pred == -1:
            other_num += 1
            continue
        clean_gts.append(gt)
        clean_preds.append(pred)
    conf_mat = confusion_matrix(clean_gts, clean_preds, labels=[1, 0])
    precision = precision_score(clean_gts, clean_preds, average="binary", zero_division=0.0)
    recall = recall_score(clean_gts, clean_preds, average="binary", zero_division=0.0)
    tp, fn = conf_mat[0]
    fp, tn = conf_mat[1]
    return {"tp": int(tp), "fn": int(fn), "tn": int(tn), "fp": int(fp), "precision": float(precision),
            "recall": float(recall), "other_num": other_num, "acc": float(acc)}


def mme_process(results_dir):
    out = {}
    for eval_type, tasks in MME_TYPES.items():
        scores = 0
        task_out = {}
        for task in tasks:
            lines = open(os.path.join(results_dir, task + ".txt"), "r").readlines()
            chunks = [lines[i:i + 2] for i in range(0, len(lines), 2)]
            acc_plus_correct = 0
            gts, preds = [], []
            for items in chunks:
                assert len(items) == 2
                correct = 0
                for item in items:
                    try:
                        _, _, gt_ans, pred_ans = item.split("\t")
                    except ValueError:
                        _, _, gt_ans = item.split("\t")
                        pred_ans = "other"
                    gt_ans = gt_ans.strip().lower()
                    pred_ans = mme_parse_pred(pred_ans.strip().lower())
                    assert gt_ans in ["yes", "no"]
                    gts.append(gt_ans)
                    preds.append(pred_ans)
                    if gt_ans == pred_ans:
                        correct += 1
                if correct == 2:
                    acc_plus_correct += 1
            m = mme_compute_metric(gts, preds)
            m["acc_plus"] = acc_plus_correct / len(chunks)
            task_score = 0
            for k in ["acc", "acc_plus"]:  # the order SBT's dict iteration adds them in
                task_score += m[k] * 100
            m["score"] = task_score
            task_out[task] = m
            scores += task_score
        out[eval_type] = {"score": scores, "tasks": task_out}
    return out


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def load_coco80():
    rows = []
    with open(os.path.join(DATA, "llava", "caps_boxes_coco2014_val_80.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows.append((r["id"], r["captions"]))
    return rows


PTB_EDGE = [
    "", "   ", "?!", "A man's \"big\" dog (brown) can't jump... over 1,000.5 cats!",
    "U.S. Mr. Smith doesn't e-mail co-op at 3:30 p.m. ###",
    "It's the dogs' toy; they're gonna wanna go -- now & then [ok] {x} <b> 50% $5 cannot",
    "I'm going, we've said I'll you'd 'tis 'em o'clock", "A DOG'S LIFE. CAN'T stop...end",
    "A man riding a wave on top of a surfboard.", "a cat sitting on a laptop keyboard ###",
    "Two dogs play in the grass. One is brown, the other is white.",
    "The sign says \"STOP\" in red letters.", "A 'quoted' word and `backticks' here",
    "An elephant (or two) near the water's edge", "3.5 inches, 10:30 am, 1/2 cup, #1 fan",
    "Don't won't shouldn't ain't isn't", "e.g. this, i.e. that, etc. and so on",
    "A train at St. Louis station near Dr. Who's box", "A red-and-white bus; people waiting!",
    "Tennis player -- ready to serve", "He said: \"hello\"", "Caf\u00e9 na\u00efve \u00c9COLE",
    "word.word next.", "A  double  spaced   caption\twith tab", "Mixed CASE Words And NUMBERS 123ABC",
    "a kitchen with a stove , sink and refrigerator .", "the man 's hat", "A man's", "men's room",
    "'90s style", "a dog's", "James' car", "A plate of food with broccoli, carrots, and rice.",
    "Is this a question?", "Wow!!!", "a - b", "a -- b", "a...", "...", "'", "\"", "(", ")",
]


def ptb_corpus(coco80):
    texts = []
    for _, caps in coco80:
        texts.extend(caps)
    with open(os.path.join(DATA, "llava", "LLaVA-Pretrain", "blip_laion_cc_sbu_2k.json")) as f:
        blip = [r["conversations"][1]["value"] for r in json.load(f)]
    texts.extend(blip[:600])
    with open(os.path.join(DATA, "llava", "coco2014_val_qa_eval", "qa90_gpt4_answer.jsonl")) as f:
        n = 0
        for line in f:
            for sent in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]):
                if sent and n < 300:
                    texts.append(sent)
                    n += 1
    texts.extend(PTB_EDGE)
    return texts


def ptb_tokenize_list(texts):
    # One image per caption so each line comes back on its own; keys are strings so the dict
    # keeps insertion order.
    out = PTBTokenizer().tokenize({str(i): [{"caption": t}] for i, t in enumerate(texts)})
    return [out[str(i)][0] for i in range(len(texts))]


def perturb(rng, caption, other):
    words = caption.split()
    kind = rng.randrange(9)
    if kind == 0 and len(words) > 3:
        del words[rng.randrange(len(words))]
        return " ".join(words)
    if kind == 1 and len(words) > 3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == 2:
        return " ".join(words[:10]) + " ###"  # the 10-token cap of SBT's sampling harness
    if kind == 3:
        return other
    if kind == 4:
        return caption.upper()
    if kind == 5:
        return '"' + caption.rstrip(".") + '" (photo).'
    if kind == 6:
        return " ".join(words + words[: rng.randrange(1, 4)])
    if kind == 7:
        return words[0] if words else ""
    return caption.lower().rstrip(".") + ", and a dog."


def caption_case(name, candidates, references):
    """Scores as SBT's COCOEvalCap.evaluate: gts/res dicts keyed by the candidates' ids in
    order (a repeated id keeps its last caption at the first position)."""
    gts, res = {}, {}
    for img, _ in candidates:
        gts[img] = [{"caption": c} for c in references[img]]
    pred = {}
    for img, cap in candidates:
        pred[img] = [{"caption": cap}]
    for img, _ in candidates:
        res[img] = pred[img]
    tok = PTBTokenizer()
    gts_t = tok.tokenize(gts)
    res_t = tok.tokenize(res)
    bleu, bleu_imgs = Bleu(4).compute_score(gts_t, res_t, verbose=0)
    rouge, rouge_imgs = Rouge().compute_score(gts_t, res_t)
    cider, cider_imgs = Cider().compute_score(gts_t, res_t)
    return {
        "name": name,
        "candidates": [[i, c] for i, c in candidates],
        "references": {k: references[k] for k in gts},
        "tokenized_res": {k: v for k, v in res_t.items()},
        "bleu": [float(x) for x in bleu],
        "bleu_per_image": [[float(b[i]) for b in bleu_imgs] for i in range(len(gts))],
        "rouge_l": float(rouge),
        "rouge_l_per_image": [float(x) for x in rouge_imgs],
        "cider_d": float(cider),
        "cider_d_per_image": [float(x) for x in cider_imgs],
    }


def caption_cases(coco80):
    rng = random.Random(7)
    cases = []
    refs_loo = {img: caps[1:] for img, caps in coco80}
    refs_all = {img: caps for img, caps in coco80}
    cases.append(caption_case("coco80_leave_one_out", [(img, caps[0]) for img, caps in coco80],
                              refs_loo))
    pert = []
    for k, (img, caps) in enumerate(coco80):
        other = coco80[(k + 17) % len(coco80)][1][0]
        pert.append((img, perturb(rng, caps[0], other)))
    cases.append(caption_case("coco80_perturbed", pert, refs_loo))
    cases.append(caption_case("coco80_self_in_refs", [(img, caps[2]) for img, caps in coco80],
                              refs_all))
    first = coco80[:10]
    cases.append(caption_case("single_image", [(first[0][0], first[0][1][0])], refs_loo))
    cases.append(caption_case("two_images", [(img, caps[4]) for img, caps in first[:2]],
                              {img: caps[:4] for img, caps in first[:2]}))
    edge_cands = ["", "...", "a", "A A A A A A A A", first[3][1][0] + " " + first[3][1][0],
                  "a man (a tall one) with \"quotes\" and it's fine ###",
                  "THE THE THE", "dog", "one two three four five six seven eight nine ten eleven",
                  first[9][1][1]]
    cases.append(caption_case("edge_cases", [(img, c) for (img, _), c in zip(first, edge_cands)],
                              {img: caps[:3] if i % 2 else caps[:1] for i, (img, caps) in
                               enumerate(first)}))
    return cases


VQA_STRINGS = [
    "two", "2", "Two.", "TWO", "2.", "the dog", "a dog", "dog", "dogs", "an apple", "apple",
    "dont", "don't", "Dont know", "3.5", "3.50", "3 5", "1,000", "1000", "1 000", "yes", "Yes",
    "yes.", "YES!", "no", "No", "No.", "none", "0", "zero", "Zero", "nothing", "red, white",
    "red white", "red,white", "red and white", "t-shirt", "tshirt", "t shirt", "hot dog",
    "hotdog", "hot-dog", "?", "", "  yes  ", "yes\n", "yes\tno", "isnt", "isn't", "Im", "I'm",
    "im", "...", "a.b", "mr. smith", "mr smith", "it's", "its", "itll", "10:30", "10 30",
    "left/right", "left right", "$5", "5 dollars", "@home", "c++", "(a)", "a", "the", "u.s.",
    "us", "USA", "one and a half", "1.5", "3 . 5", "50%", "wii", "Wii remote", "whats up",
    "what's up", "one", "1", "ten", "10", "eleven", "11", "sheep's", "cat's toy", "yall",
    "oclock", "2 o'clock", "2 oclock", "a-b", "a - b", "=", "x=1", "back\\slash", "under_score",
    "<3", "a>b", "\"quoted\"", "`tick`", "[bracket]", "{brace}", "semi;colon", "colon:",
    "one, two", "1,2", "1, 2", ". . .", "end.", ".5", "0.5", "5.", "\u0663,\u0664",
    "caf\u00e9", "\u00c9T\u00c9", "twas", "let's", "I'dve", "\u0130stanbul",
]


def vqa_cases():
    rng = random.Random(11)
    normalize = [{"text": s, "normalized": vqa_process_digit_article(vqa_process_punctuation(s))}
                 for s in VQA_STRINGS]
    many_dots = "a" + ".b" * 20 + "." * 20
    normalize.append({"text": many_dots,
                      "normalized": vqa_process_digit_article(vqa_process_punctuation(many_dots))})
    clusters = [
        ["two", "2", "Two.", "2 ", "two dogs", "three"],
        ["yes", "Yes", "yes.", "YES!", "no"],
        ["no", "No", "No.", "none", "0", "zero", "nothing"],
        ["dog", "the dog", "a dog", "dogs", "Dog."],
        ["don't know", "dont know", "Dont know", "unknown"],
        ["3.5", "3.50", "3 5", "3", "three and a half"],
        ["1,000", "1000", "1 000", "thousand"],
        ["red, white", "red white", "red and white", "red,white", "white"],
        ["t-shirt", "tshirt", "t shirt", "shirt"],
        ["hot dog", "hotdog", "hot-dog", "sandwich"],
        ["isn't", "isnt", "is not"],
        ["left/right", "left right", "left", "right"],
        ["10:30", "10 30", "1030", "10:30 am"],
    ]
    cases = []
    for cl in clusters:
        for _ in range(8):
            ann = [rng.choice(cl) for _ in range(10)]
            ans = rng.choice(cl + ["", "?", "  " + cl[0] + "\n"])
            cases.append({"answer": ans, "annotators": ann})
    # Fixed edge cases: all-identical annotators (no normalisation: "Yes" != "yes"), 9+1, 1..10 matches.
    cases.append({"answer": "Yes", "annotators": ["yes"] * 10})
    cases.append({"answer": "yes", "annotators": ["yes"] * 10})
    cases.append({"answer": "yes ", "annotators": ["yes"] * 10})
    cases.append({"answer": "2", "annotators": ["two"] * 10})
    cases.append({"answer": "two", "annotators": ["two"] * 9 + ["2"]})
    for m in range(11):
        cases.append({"answer": "cat", "annotators": ["cat"] * m + ["dog"] * (10 - m)})
    cases.append({"answer": "", "annotators": ["", "", "", "a", "b", "c", "d", "e", "f", "g"]})
    cases.append({"answer": "the", "annotators": ["a"] * 5 + ["an"] * 5})
    cases.append({"answer": "x", "annotators": ["x", "x", "y"]})
    cases.append({"answer": "x", "annotators": ["x"]})
    for c in cases:
        c["accuracy"] = vqa_accuracy(c["answer"], c["annotators"])
    post = ["Yes, it is.", "no", "The answer is none", "snow", "piano", "Two dogs###Question: x",
            "Answer: yes", "blue</s>", "", "Nope", "I don't know", "YES", "2 Question yes",
            "red and white", "noon", "Notebook"]
    postprocess = [{"text": t, "processed": vqa_postprocess(t)} for t in post]
    return {"normalize": normalize, "cases": cases, "postprocess": postprocess}


POPE_TEMPLATES = [
    "Yes", "No", "yes", "no", "Yes, there is a {o} in the image.", "No, there is no {o} in the image.",
    "No.", "Yes.", "", "not", "There is not a {o}.", "I don't think so", "NO", "Nope",
    "Yes. No.", "There is a {o}, no doubt.", "no,", "No, ", "YES", "I cannot tell",
    "The image does not show a {o}.", "There is no {o}. Yes", "Yes,no", "yes no", " No",
    "not sure", "Not", "no.", "In the image. no", "###",
]


def pope_cases():
    rng = random.Random(13)
    templates = [t.replace("{o}", "dog") for t in POPE_TEMPLATES]
    parsed = [pope_parse(t) for t in templates]
    splits = []
    for name in ["coco_pope_popular", "coco_pope_random", "coco_pope_adversarial"]:
        labels = []
        with open(os.path.join(DATA, "pope", name + ".json")) as f:
            for line in f:
                labels.append(json.loads(line)["label"])
                if len(labels) == 300:
                    break
        answers = []
        for lab in labels:
            # A model that is right ~80% of the time, in varied surface forms.
            if rng.random() < 0.8:
                pool = [i for i, p in enumerate(parsed) if p == lab]
            else:
                pool = list(range(len(templates)))
            answers.append(rng.choice(pool))
        s = pope_scores([templates[i] for i in answers], labels)
        splits.append({"name": name, "labels": "".join("y" if l == "yes" else "n" for l in labels),
                       "answers": answers, **s})
    # Zero division: no predicted yes (precision 0/0), and no positive labels (recall 0/0).
    for name, labs, ans in [("all_no_predictions", "ynyn", [1, 1, 3, 6]),
                            ("no_positive_labels", "nnn", [0, 1, 0]),
                            ("empty", "", [])]:
        s = pope_scores([templates[i] for i in ans], ["yes" if c == "y" else "no" for c in labs])
        splits.append({"name": name, "labels": labs, "answers": ans, **s})
    return {"templates": templates, "parsed": parsed, "splits": splits}


MME_PREDS = ["Yes", "No", "yes", "no", "Yes, it is.", "No, it is not.", "Not sure", "", "nope",
             "I think yes", "none", "YES.", "no.", "It is yes", "noo", " yes ", "Yesno",
             "There is a dog", "n", "y"]


def mme_cases():
    rng = random.Random(17)
    tasks = {}
    sizes = {"existence": 30, "count": 30, "position": 30, "color": 30, "posters": 40,
             "celebrity": 40, "scene": 40, "OCR": 20, "commonsense_reasoning": 30,
             "numerical_calculation": 20, "text_translation": 20, "code_reasoning": 20}
    for task, n_img in sizes.items():
        lines = []
        for k in range(n_img):
            img = "%s_%04d.jpg" % (task, k)
            order = ["Yes", "No"] if rng.random() < 0.5 else ["No", "Yes"]
            for gt in order:
                q = "Is there a thing %d in the image? Please answer yes or no." % k
                if rng.random() < 0.6:
                    pred = gt if rng.random() < 0.8 else ("No" if gt == "Yes" else "Yes")
                else:
                    pred = rng.choice(MME_PREDS)
                # As SBT writes it: pred without tabs, the line without newlines, stripped.
                line = (img + "\t" + q + "\t" + gt + "\t" + pred.replace("\t", "")).replace("\n", "").strip()
                lines.append(line)
        tasks[task] = lines
    with tempfile.TemporaryDirectory() as d:
        for task, lines in tasks.items():
            with open(os.path.join(d, task + ".txt"), "w") as f:
                f.write("".join(l + "\n" for l in lines))
        result = mme_process(d)
    return {"tasks": tasks, "result": result}


def main():
    coco80 = load_coco80()
    texts = ptb_corpus(coco80)
    tokens = ptb_tokenize_list(texts)
    out = {
        "meta": {
            "pycocoevalcap": importlib.metadata.version("pycocoevalcap"),
            "scikit-learn": importlib.metadata.version("scikit-learn"),
            "numpy": importlib.metadata.version("numpy"),
            "python": sys.version.split()[0],
            "sources": "pycocoevalcap (package); SBT 47f96a32 llava/eval/mmoverall/"
                       "{vqa_metric,pope_metric,mme_metric}.py re-stated in this script",
        },
        "ptb": [{"text": t, "tokens": k} for t, k in zip(texts, tokens)],
        "caption": caption_cases(coco80),
        "vqa": vqa_cases(),
        "pope": pope_cases(),
        "mme": mme_cases(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
