#!/usr/bin/env python3
"""Parity fixtures for sightline's retention tasks (issue 16): mmlu, mmlu_loglik, gsm8k, mathqa,
mathqa_0shot, boolq, squad2, on stories260K.

Run from the repository root with the pinned stack (scripts/reference/requirements.txt) and the
PyPI wheel of lm_eval 0.3.0 (`pip download --no-deps lm_eval==0.3.0`):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv-ref/bin/python \
        scripts/reference/make_retention_fixtures.py path/to/lm_eval-0.3.0-py3-none-any.whl

What runs as the reference:

* GSM8K, MathQA, BoolQ, SQuAD2 — the task classes and the `evaluate` loop of PyPI
  `lm_eval==0.3.0` itself (document shuffle with random.Random(42), `fewshot_context` drawing
  from the same `rnd`, `process_results`, aggregation, stderr). The wheel's `lm_eval` package is
  loaded under the name `lm_eval03` (imports rewritten, `tasks/__init__` and `models/__init__`
  emptied so that only the four task modules load) so that it can sit next to lm_eval 0.4.9.1,
  whose HFLM(add_bos_token=False) answers the requests: its `_encode_pair`/log-likelihood and
  left truncation are the 0.3-era `master` ones the paper ran (shared/spec/lm-eval-scoring.md);
  0.3.0's own BaseLM still encoded context and continuation separately, which the paper's
  commit no longer did. Generations: HFLM.generate_until, batch 1, until + EOS, 256 tokens.
  Task files diffed against the paper's harness commit (EleutherAI/lm-evaluation-harness
  0bf683b4e6a9df359b3156ba9ba8d62bdd47e0c0): mathqa.py and superglue.py are identical;
  squad.py differs only in passing `{"until": ["\\n"]}` instead of `["\\n"]` (same stops);
  gsm8k.py differs in its stops (0.3.0: `["\\n"]`; the paper's commit:
  `{"until": [":", "Question:", "Question"]}`), so GSM8K runs a subclass with the paper's stops.
  Data comes from data/ (the HF loaders are replaced by `download()` overrides that build the
  same records): SQuAD2 from the explorer pages, parsed here with regular expressions,
  independently of sightline's parser. SQuAD2's `datasets.load_metric("squad_v2")` needs the
  hub, so the HF metric's `compute` is reproduced below from the official v2.0 evaluation script.
  MathQA's 4-shot pool is tests/fixtures/retention/mathqa_train_sample.json (64 real dev
  records, NOT the train split, which is not available here).
* MMLU — the paper's `llava/eval/mmlu/evaluate_mmlu.py` logic (UCSC-VLAA/Sight-Beyond-Text @
  47f96a3) with transformers' slow LlamaTokenizer (legacy) and LlamaForCausalLM.generate
  (greedy, max_new_tokens 2, BOS from the tokenizer), pandas read_csv(header=None). The
  script's 2048-token fit is FIT here so that the 512-position stories260K drops shots (and a
  question alone can still be longer than 512: transformers computes RoPE for any position, so
  the Rust test loads stories260K with a 2,048-position rotary table); the documents are
  all test questions in subject order, shuffled with random.Random(42), first MMLU_LIMIT (the
  script itself has no --limit). mmlu_loglik: the same 5-shot prompt, HFLM log-likelihoods of
  " A".." D".

Writes tests/fixtures/eval/retention_stories260k.json.
"""
import json
import os
import random
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import lm_eval  # noqa: E402
import lm_eval.api.metrics  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from transformers import LlamaForCausalLM, LlamaTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from make_eval_fixtures import convert_stories260k  # noqa: E402
from make_llama_fixtures import read_tok512, sentencepiece_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
OUT = ROOT / "tests/fixtures/eval/retention_stories260k.json"
MATHQA_TRAIN = ROOT / "tests/fixtures/retention/mathqa_train_sample.json"
LIMIT = 20
MMLU_LIMIT = 40
FIT = 500


# ---- lm_eval 0.3.0 under another name ----

def load_lm_eval03(wheel):
    root = Path(tempfile.mkdtemp())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    src, dst = root / "lm_eval", root / "lm_eval03"
    src.rename(dst)
    for p in dst.rglob("*.py"):
        t = p.read_text()
        t = re.sub(r"\blm_eval\b", "lm_eval03", t)
        p.write_text(t)
    (dst / "tasks/__init__.py").write_text("")
    (dst / "models/__init__.py").write_text("")
    sys.path.insert(0, str(root))
    import lm_eval03.evaluator as ev
    import lm_eval03.tasks.gsm8k as gsm8k
    import lm_eval03.tasks.mathqa as mathqa
    import lm_eval03.tasks.squad as squad
    import lm_eval03.tasks.superglue as superglue
    import lm_eval03.metrics as metrics
    return ev, gsm8k, mathqa, squad, superglue, metrics


# ---- the HF squad_v2 metric (official v2.0 script), since load_metric needs the hub ----

def normalize_answer(s):
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(__import__("string").punctuation)
        return "".join(ch for ch in text if ch not in exclude)
    return white_space_fix(remove_articles(remove_punc(s.lower())))


def get_tokens(s):
    return normalize_answer(s).split() if s else []


def compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = __import__("collections").Counter(gold_toks) & __import__("collections").Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


class SquadV2Metric:
    def compute(self, predictions, references, no_answer_threshold=1.0):
        na_probs = {p["id"]: p["no_answer_probability"] for p in predictions}
        preds = {p["id"]: p["prediction_text"] for p in predictions}
        qid_to_has_ans = {r["id"]: bool(r["answers"]["text"]) for r in references}
        has_ans = [k for k, v in qid_to_has_ans.items() if v]
        no_ans = [k for k, v in qid_to_has_ans.items() if not v]
        exact_raw, f1_raw = {}, {}
        for r in references:
            qid = r["id"]
            gold = [t for t in r["answers"]["text"] if normalize_answer(t)] or [""]
            a_pred = preds[qid]
            exact_raw[qid] = max(int(normalize_answer(a) == normalize_answer(a_pred)) for a in gold)
            f1_raw[qid] = max(compute_f1(a, a_pred) for a in gold)

        def thresh(scores):
            return {q: (float(not qid_to_has_ans[q]) if na_probs[q] > no_answer_threshold else s)
                    for q, s in scores.items()}
        ex_t, f1_t = thresh(exact_raw), thresh(f1_raw)

        def eval_dict(qids):
            return (100.0 * sum(ex_t[k] for k in qids) / len(qids), 100.0 * sum(f1_t[k] for k in qids) / len(qids))
        out = {}
        out["exact"], out["f1"] = eval_dict(list(ex_t))
        if has_ans:
            out["HasAns_exact"], out["HasAns_f1"] = eval_dict(has_ans)
        if no_ans:
            out["NoAns_exact"], out["NoAns_f1"] = eval_dict(no_ans)

        def best(scores):
            num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
            cur = best_score = num_no_ans
            for qid in sorted(na_probs, key=lambda k: na_probs[k]):
                if qid_to_has_ans[qid]:
                    diff = scores[qid]
                else:
                    diff = -1 if preds[qid] else 0
                cur += diff
                if cur > best_score:
                    best_score = cur
            return 100.0 * best_score / len(scores)
        out["best_exact"], out["best_f1"] = best(exact_raw), best(f1_raw)
        return out


# ---- data as the HF loaders would give it ----

def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def squad_pages():
    d = DATA / "squad2/explore-v2.0-dev"
    index = (d / "index.html").read_text()
    titles = list(dict.fromkeys(re.findall(r'/explore/v2\.0/dev/([^"/]+)\.html"', index)))
    unesc = lambda s: s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")  # noqa: E731
    docs = []
    for t in titles:
        page = (d / f"{t}.html").read_text()
        paras = page.split('<div class="para-wrap"><div class="row"><div class="col-md-6"><pre>')[1:]
        for para in paras:
            ctx, rest = para.split('</pre></div><div class="col-md-6"><div class="qas-wrap">', 1)
            for m in re.finditer(r'<div class="qa-wrap" data-id="([^"]+)"><p> <strong class="question">(.*?)</strong></p>'
                                 r'<ul class="list-unstyled"><li><p><i>Ground Truth Answers: </i>(.*?)</p></li>', rest, re.S):
                qid, q, ans = m.groups()
                texts = [] if ans == '<span class="no-answer">&lt;No Answer&gt;</span>' else \
                    [unesc(a) for a in re.findall(r'<span class="answer">(.*?)</span>', ans, re.S)]
                docs.append(dict(id=qid, title=unesc(t), context=unesc(ctx), question=unesc(q),
                                 answers=dict(text=texts, answer_start=[])))
    assert len(docs) == 11873, len(docs)
    return docs


# ---- the harness tasks ----

class Adapter:
    """0.3.0's LM interface answered by lm_eval 0.4.9.1's HFLM."""

    def __init__(self, lm, lm_gen):
        self.lm, self.lm_gen, self.log = lm, lm_gen, []

    def loglikelihood(self, requests):
        insts = [Instance(request_type="loglikelihood", doc={}, arguments=tuple(r), idx=0) for r in requests]
        res = self.lm.loglikelihood(insts, disable_tqdm=True)
        return [(float(ll), bool(g)) for ll, g in res]

    def greedy_until(self, requests):
        out = []
        for ctx, until in requests:
            until = until["until"] if isinstance(until, dict) else until
            inst = Instance(request_type="generate_until", doc={}, arguments=(ctx, {"until": list(until)}), idx=0)
            out.append(self.lm_gen.generate_until([inst], disable_tqdm=True)[0])
        return out


def make_tasks(mods):
    _, gsm8k, mathqa, squad, superglue, _ = mods
    recorded = {}

    def recording(cls, name, data):
        class T(cls):
            def download(self, *a, **k):
                self.dataset = data

            def fewshot_examples(self, k, rnd):
                ex = super().fewshot_examples(k, rnd)
                pool = self._training_docs
                recorded.setdefault(name, {}).setdefault("fewshot", []).append(
                    [next(i for i, d in enumerate(pool) if d is e) for e in ex])
                return ex

            def fewshot_context(self, doc, num_fewshot, **kw):
                ctx = super().fewshot_context(doc, num_fewshot, **kw)
                recorded.setdefault(name, {}).setdefault("texts", []).append(self.doc_to_text(doc))
                return ctx
        return T

    class PaperGsm8k(gsm8k.GradeSchoolMath8K):
        def construct_requests(self, doc, ctx):
            # The paper's commit (0bf683b); 0.3.0 on PyPI stops at "\n".
            return gsm8k.rf.greedy_until(ctx, {"until": [":", "Question:", "Question"]})

    g = dict(train=jsonl(DATA / "gsm8k/train.jsonl"), test=jsonl(DATA / "gsm8k/test.jsonl"))
    mq = dict(train=json.loads(MATHQA_TRAIN.read_text()), test=json.loads((DATA / "mathqa/test.json").read_text()),
              validation=[])
    bq = dict(train=[], validation=[dict(question=r["question"], passage=r["passage"], idx=r["idx"], label=int(r["label"]))
                                    for r in jsonl(DATA / "boolq/val.jsonl")])
    sq = dict(train=[], validation=squad_pages())
    squad.datasets = type("D", (), {"load_metric": staticmethod(lambda name: SquadV2Metric()), "__version__": "2.0"})
    tasks = {
        "gsm8k": (recording(PaperGsm8k, "gsm8k", g)(), 8, [d["question"] for d in g["test"]]),
        "mathqa": (recording(mathqa.MathQA, "mathqa", mq)(), 4, None),
        "mathqa_0shot": (recording(mathqa.MathQA, "mathqa_0shot", mq)(), 0, None),
        "boolq": (recording(superglue.BoolQ, "boolq", bq)(), 0, None),
        "squad2": (recording(squad.SQuAD2, "squad2", sq)(), 0, None),
    }
    return tasks, recorded


def run_harness(mods, adapter):
    ev = mods[0]
    tasks, recorded = make_tasks(mods)
    out = {}
    for name, (task, k, _) in tasks.items():
        docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs())
        order = list(range(len(docs)))
        random.Random(42).shuffle(order)
        order = order[:LIMIT]
        res = ev.evaluate(lm=adapter, task_dict={name: task}, num_fewshot=k, limit=LIMIT)["results"][name]
        rec = recorded[name]
        # The evaluator's documents are the ones the shuffle of indices names.
        assert rec["texts"] == [task.doc_to_text(docs[i]) for i in order], name
        metrics = {m: float(v) for m, v in res.items()}
        out[name] = dict(doc_ids=order, fewshot_ids=rec.get("fewshot"), metrics=metrics)
        print(name, {m: round(v, 4) for m, v in metrics.items() if not m.endswith("stderr")}, file=sys.stderr)
    return out


# ---- MMLU: the paper's script ----

def mmlu(tmp, sp_path, lm):
    tok = LlamaTokenizer(vocab_file=str(sp_path), legacy=True)
    model = LlamaForCausalLM.from_pretrained(tmp)
    model.eval()
    subjects = sorted(f.split("_test.csv")[0] for f in os.listdir(DATA / "mmlu/test") if "_test.csv" in f)
    choices = ["A", "B", "C", "D"]

    def format_subject(subject):
        return "".join(" " + e for e in subject.split("_"))

    def format_example(df, idx, include_answer=True):
        prompt = df.iloc[idx, 0]
        k = df.shape[1] - 2
        for j in range(k):
            prompt += "\n{}. {}".format(choices[j], df.iloc[idx, j + 1])
        prompt += "\nAnswer:"
        if include_answer:
            prompt += " {}\n\n".format(df.iloc[idx, k + 1])
        return prompt

    def gen_prompt(train_df, subject, k=-1):
        prompt = "The following are multiple choice questions (with answers) about {}.\n\n".format(format_subject(subject))
        if k == -1:
            k = train_df.shape[0]
        for i in range(k):
            prompt += format_example(train_df, i)
        return prompt

    items = []
    for subject in subjects:
        dev_df = pd.read_csv(DATA / "mmlu/dev" / f"{subject}_dev.csv", header=None)[:5]
        test_df = pd.read_csv(DATA / "mmlu/test" / f"{subject}_test.csv", header=None)
        for i in range(test_df.shape[0]):
            items.append((subject, dev_df, test_df, i))
    assert len(items) == 14042
    order = list(range(len(items)))
    random.Random(42).shuffle(order)
    order = order[:MMLU_LIMIT]
    gen, ll_ctx, labels, ks, preds = [], [], [], [], []
    fast = lm.tokenizer
    mismatches = 0
    for j in order:
        subject, dev_df, test_df, i = items[j]
        k = 5
        prompt_end = format_example(test_df, i, include_answer=False)
        prompt = gen_prompt(dev_df, subject, k) + prompt_end
        ll_ctx.append(prompt)
        while not len(tok(prompt).input_ids) <= FIT and k > 0:
            k -= 1
            prompt = gen_prompt(dev_df, subject, k) + prompt_end
        ks.append(k)
        label = test_df.iloc[i, test_df.shape[1] - 1]
        inputs = tok(prompt, return_tensors="pt")
        if inputs.input_ids[0].tolist() != [1] + fast(prompt, add_special_tokens=False).input_ids:
            mismatches += 1
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=2)
        pred = tok.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
        preds.append(pred)
        gen.append(bool(pred.strip().startswith(label)))
        labels.append(label)
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=(c, " " + x), idx=0) for c in ll_ctx for x in choices]
    res = lm.loglikelihood(insts, disable_tqdm=True)
    loglik = [int(np.argmax([res[4 * n + m][0] for m in range(4)])) == choices.index(labels[n]) for n in range(len(order))]

    subcats, cats = MMLU_SUBCATEGORIES, MMLU_CATEGORIES

    def metrics(cors):
        cors = [float(c) for c in cors]
        out = {"acc": float(np.mean(cors)), "acc_stderr": float(lm_eval.api.metrics.mean_stderr(cors))}
        subj = [items[j][0] for j in order]

        def mean_where(keep):
            xs = [c for c, s in zip(cors, subj) if keep(s)]
            return float(np.mean(xs)) if xs else None
        catname = {"STEM": "stem", "humanities": "humanities", "social sciences": "social_sciences",
                   "other (business, health, misc.)": "other"}
        for cat, members in cats.items():
            out["acc_" + catname[cat]] = mean_where(lambda s: subcats[s][0] in members)
        seen = []
        for v in subcats.values():
            for sc in v:
                if sc not in seen:
                    seen.append(sc)
        for sc in seen:
            out["acc_sub_" + sc.replace(" ", "_")] = mean_where(lambda s: subcats[s][0] == sc)
        for s in subjects:
            out["acc_" + s] = mean_where(lambda x: x == s)
        return out
    print("mmlu", round(float(np.mean(gen)), 4), "mmlu_loglik", round(float(np.mean(loglik)), 4),
          "k used", ks, "slow/fast id mismatches", mismatches, file=sys.stderr)
    return {
        "mmlu": dict(doc_ids=order, ks=ks, preds=preds, metrics=metrics(gen), fit_tokens=FIT,
                     slow_fast_mismatches=mismatches),
        "mmlu_loglik": dict(doc_ids=order, metrics=metrics(loglik),
                            lls=[[float(res[4 * n + m][0]) for m in range(4)] for n in range(len(order))]),
    }


def load_mmlu_maps():
    """get_subcategories / get_categories, copied from evaluate_mmlu.py (47f96a3)."""
    global MMLU_SUBCATEGORIES, MMLU_CATEGORIES
    MMLU_SUBCATEGORIES = json.loads((Path(__file__).parent / "mmlu_maps.json").read_text())["subcategories"]
    MMLU_CATEGORIES = json.loads((Path(__file__).parent / "mmlu_maps.json").read_text())["categories"]


def main():
    wheel = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LM_EVAL_030_WHEEL")
    assert wheel, "pass the lm_eval-0.3.0 wheel (pip download --no-deps lm_eval==0.3.0)"
    torch.set_num_threads(2)
    load_mmlu_maps()
    tmp = tempfile.mkdtemp()
    convert_stories260k(tmp)
    sp_path = Path(tempfile.mkdtemp()) / "tokenizer.model"
    sentencepiece_model(read_tok512(DATA / "models/stories260k/tok512.bin"), sp_path)
    lm = HFLM(pretrained=tmp, backend="causal", device="cpu", dtype="float32", batch_size=16,
              add_bos_token=False, prefix_token_id=2)
    lm_gen = HFLM(pretrained=tmp, backend="causal", device="cpu", dtype="float32", batch_size=1,
                  add_bos_token=False, prefix_token_id=2)
    mods = load_lm_eval03(wheel)
    out = dict(reference=dict(torch=torch.__version__, transformers=transformers.__version__,
                              lm_eval_scoring=lm_eval.__version__, lm_eval_tasks="0.3.0 (PyPI wheel)",
                              pandas=pd.__version__),
               model="stories260K converted in Python", limit=LIMIT, mmlu_limit=MMLU_LIMIT, tasks={})
    out["tasks"].update(run_harness(mods, Adapter(lm, lm_gen)))
    out["tasks"].update(mmlu(tmp, sp_path, lm))
    shutil.rmtree(tmp, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
