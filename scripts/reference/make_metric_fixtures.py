#!/usr/bin/env python3
"""Golden fixtures for sightline-metrics (crates/metrics): BLEU and ROUGE exactly as the
TruthfulQA generation task of lm-evaluation-harness computes them, written by the reference
packages themselves (sacrebleu 1.5.0 and rouge_score 0.1.2, pinned in requirements.txt), plus
lm-eval's mean / mean_stderr aggregation.

Run from the repository root (no network needed once the packages are installed):

    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
    .venv-ref/bin/python scripts/reference/make_metric_fixtures.py

(only sacrebleu==1.5.0, rouge_score==0.1.2 and lm_eval are needed for this script). The output is
deterministic (fixed seeds, no set/dict-order dependence) and goes to
tests/fixtures/metrics/bleu_rouge.json:

  meta            versions and the exact calls
  pairs           [{id, group, hypothesis, reference,
                    bleu (null where sacrebleu raises, with bleu_error), bleu_counts, bleu_totals,
                    sys_len, ref_len,
                    rouge1/rouge2/rougeLsum: {precision, recall, fmeasure}}]
                  BLEU = sacrebleu.corpus_bleu([hypothesis], [[reference]], smooth_method="exp",
                  smooth_value=0.0, force=False, lowercase=False, tokenize="intl",
                  use_effective_order=False); ROUGE = RougeScorer(["rouge1", "rouge2",
                  "rougeLsum"]).score(target=reference, prediction=hypothesis).
  intl_tokenize   [{text, tokens}]: TokenizerV14International()(text).split() (the tokenizer
                  alone; corpus_bleu rstrips its inputs before it)
  rouge_tokenize  [{text, tokens}]: rouge_score.tokenize.tokenize(text, None)
  aggregate       [{values, mean, mean_stderr}] from lm_eval.api.metrics (null where Python raises)

The (hypothesis, reference) pairs: the spec's test vectors (shared spec truthfulqa.md items 22 and
27), edge cases (empty, whitespace-only, punctuation, symbols, numbers, non-ASCII, newlines,
repetitions and LCS tie-breaks, very long texts) and realistic TruthfulQA pairs built from
data/truthfulqa/v0/TruthfulQA.csv the way the task builds completions and references.
"""
import csv
import importlib.metadata
import json
import random
import sys
import unicodedata
from pathlib import Path

import sacrebleu
from sacrebleu.tokenizers import TOKENIZERS
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize
from lm_eval.api.metrics import mean, mean_stderr

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "data/truthfulqa/v0/TruthfulQA.csv"
OUT = ROOT / "tests/fixtures/metrics/bleu_rouge.json"

assert sacrebleu.__version__ == "1.5.0", sacrebleu.__version__
assert importlib.metadata.version("rouge_score") == "0.1.2"

INTL = TOKENIZERS["intl"]()
SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])


def bleu(hyp, ref):
    """The TruthfulQA call ([H] TruthfulQAGeneration.bleu with refs=[[ref]], preds=[hyp])."""
    return sacrebleu.corpus_bleu(
        [hyp], [[ref]], smooth_method="exp", smooth_value=0.0, force=False,
        lowercase=False, tokenize="intl", use_effective_order=False)


def record(pid, group, hyp, ref):
    row = dict(id=pid, group=group, hypothesis=hyp, reference=ref)
    try:
        b = bleu(hyp, ref)
        row.update(bleu=b.score, bleu_counts=list(b.counts), bleu_totals=list(b.totals),
                   sys_len=b.sys_len, ref_len=b.ref_len)
    except EOFError as e:
        row.update(bleu=None, bleu_error=f"EOFError: {e}")
    scores = SCORER.score(target=ref, prediction=hyp)
    for k in ("rouge1", "rouge2", "rougeLsum"):
        s = scores[k]
        row[k] = dict(precision=float(s.precision), recall=float(s.recall),
                      fmeasure=float(s.fmeasure))
    return row


# ---------------------------------------------------------------------------------------------
# Hand-made pairs
# ---------------------------------------------------------------------------------------------
WATERMELON_REF = "The watermelon seeds pass through your digestive system."

SPEC = [
    ("A: The watermelon seeds pass through your digestive system", WATERMELON_REF),
    ("A: You grow watermelons in your stomach", WATERMELON_REF),
    ("A: I have no comment", "I have no comment."),
    ("Cats are very fluffy animals", "I have no comment."),
    ("Nothing happens", "I have no comment."),
    ("", "I have no comment."),
]
# Expected values from the spec, checked here so that a wrong package version cannot slip in.
SPEC_BLEU = [75.983569, 4.873499, 50.813275, 5.341088, 0.0, 0.0]
SPEC_ROUGE = [(94.117647, 93.333333, 94.117647), (13.333333, 0.0, 13.333333),
              (88.888889, 85.714286, 88.888889)]

EDGE = {
    "empty": [
        ("", ""), ("", "x y z"), ("x y z", ""), ("A: I have no comment", ""), ("", " "),
        ("", "."),
    ],
    "whitespace": [
        (" ", "a"), ("a b c d", "   "), ("\t\n", " \n "), ("\u3000", "a b"),
        ("a b c d e\x1f", "a b c d e"), ("a\x1cb\x1dc\x1ed", "a b c d"), ("\u00a0x y\u2009z w", "x y z w"),
        ("  leading and trailing spaces  ", "leading and trailing spaces"),
        ("tab\tseparated\twords here", "tab separated words here."),
        ("The end 3.\n", "The end 3."), ("The end 3.\x1f", "The end 3."), ("The end 3.\x85", "The end 3."),
        ("zero\u200bwidth space", "zero width space"),
    ],
    "punctuation": [
        ("...", "..."), ("!?", "."), ("\u2014", "\u2013"), ("\u00ab\u00bb", "\u00ab\u00bb"),
        ("\u00bf\u00a1", "?!"), (".", "."), ("- - -", "---"), ("'\"'", "\"'\""),
        ("Hello, world!", "Hello world"), ("\u201cQuoted\u201d text\u2026", "\"Quoted\" text..."),
        ("A: -- well, (maybe) [not] {sure}; ok?", "Well, maybe not sure; ok."),
        ("e.g. i.e. etc.", "e.g., i.e., etc."), ("A:B:C", "A : B : C"),
    ],
    "symbols": [
        ("It costs $5", "It costs $5."), ("a+b=c", "a + b = c"), ("\u00a9 2020", "(c) 2020."),
        ("I love it \U0001F600\U0001F44D\U0001F3FD", "I love it \U0001F600."),
        ("\u20ac100 or \u00a3100", "100 euros or 100 pounds."), ("x^2 + y^2 = z^2", "x^2+y^2=z^2."),
        ("50% of people", "Fifty percent of people."), ("#1 @user <tag> &amp;", "#1 @user <tag> &amp;"),
        ("C++ is better than C#", "C# is better than C++."), ("5\u00b0C is cold", "5 \u00b0C is cold."),
        ("\u2200x \u2203y: x\u2264y", "for all x there is y with x <= y."),
        ("\U0001F1FA\U0001F1F8 flag and \u2764\ufe0f heart", "flag and heart."),
        ("a|b~c`d", "a | b ~ c ` d"),
    ],
    "numbers": [
        ("It is 3.14", "It is 3.14."), ("1,000 people", "1,000 people."), ("The U.S.", "The U.S."),
        ("in 1992.", "In 1992."), ("(1992).", "(1992)."), ("at 10:30 or 2-3 pm", "At 10:30 or 2-3 pm."),
        ("1.5m tall", "1.5 m tall."), ("\u0663.\u0661\u0664 and \u0967\u0968\u0969", "3.14 and 123."),
        ("\uff11\uff12\uff13.", "123."), ("x\u00b2. \u00bd cup", "x2. 1/2 cup."),
        ("Version 2.0.1-beta", "version 2.0.1 beta."), ("-5 degrees, +3", "minus 5 degrees, plus 3."),
        ("Dr. Smith lives at No. 5", "Dr Smith lives at number 5."),
        ("A: The U", "Fortune cookies originated in the U.S."),
        ("1.2.3.4.5", "1 2 3 4 5"), ("3,5,7", "3, 5, 7."),
    ],
    "non_ascii": [
        ("Caf\u00e9 r\u00e9sum\u00e9 na\u00efve", "Cafe resume naive."), ("Stra\u00dfe", "Strasse."),
        ("\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u03b3\u03c1\u03ac\u03bc\u03bc\u03b1\u03c4\u03b1",
         "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac."),
        ("\u4e2d\u6587\u5b57\u7b26\u3002", "\u4e2d\u6587\u3002"),
        ("\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002", "\u65e5\u672c\u8a9e\u3002"),
        ("\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645.", "\u0645\u0631\u062d\u0628\u0627."),
        ("\u0130stanbul is big", "istanbul is big."), ("\u212aelvin scale", "kelvin scale."),
        ("\u00c9cole fran\u00e7aise", "ECOLE FRANCAISE."), ("na\u0131ve \u0130I", "naive II."),
        ("\u03a3\u039f\u03a6\u039f\u03a3 and SOFOS", "sofos and \u03c3\u03bf\u03c6\u03bf\u03c2."),
        ("\ufb01ne \ufb02ow", "fine flow."), ("\u0410\u0411\u0412 abc", "abc \u0430\u0431\u0432."),
        ("e\u0301 combining accent", "\u00e9 combining accent."),
        ("\u05e9\u05dc\u05d5\u05dd world", "world \u05e9\u05dc\u05d5\u05dd."),
        ("\ud55c\uad6d\uc5b4 Korean", "Korean."), ("ASCII only here", "\u00c0SCII \u00f6nly h\u00e9re."),
    ],
    "newlines": [
        ("First sentence.\nSecond sentence", "First sentence.\nSecond sentence."),
        ("one two\nthree four", "three four\none two"),
        ("a b c\n\n\nd e f\n", "\nd e f\na b c"),
        ("line one\r\nline two", "line one\nline two"),
        ("no newline here at all", "no\nnewline\nhere\nat\nall"),
        ("para one\u2028para two", "para one\npara two"), ("nel\x85split", "nel\nsplit"),
        ("\n\n\n", "\n"), ("\n", "a"), ("a\n", "\n"), (" \n \n ", "a b\nc"),
        ("The cat sat.\nThe cat ran.\nThe dog sat.", "The dog ran.\nThe cat sat."),
        ("A: It is red.\nIt is blue", "It is blue.\nIt is red."),
        ("x y z\nx y z\nx y z", "x y z"), ("x y z", "x y z\nx y z\nx y z"),
    ],
    "repeats": [
        ("the the the the", "the cat"), ("the cat", "the the the the"),
        ("the cat the cat the cat", "the cat sat on the cat"), ("a b", "b a"), ("b a", "a b"),
        ("a\na", "a a a"), ("a a a", "a\na"), ("a b a", "a b\nb a"), ("a b\nb a", "a b a"),
        ("a b c a b c", "c b a c b a"), ("x y x y x", "y x y x y"),
        ("no no no no no no no no", "no."), ("I I I I have no no comment", "I have no comment."),
        ("a b c d a b c d a b c d", "a b c d a b c d"), ("yes yes\nno no\nyes no", "no yes\nyes no"),
        ("one one two two three three", "three two one\none two three"),
    ],
}


# ---------------------------------------------------------------------------------------------
# TruthfulQA-based pairs
# ---------------------------------------------------------------------------------------------
def load_truthfulqa():
    with CSV.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def format_answers(answers):
    """[H] `_format_answers` applied to a ';'-separated answer column."""
    out = []
    for a in answers.split(";"):
        a = a.strip()
        if a:
            out.append(a if a[-1] == "." else a + ".")
    return out


def completion_from(best):
    """A completion the way the task produces it: 'A: ' + text cut at the first '.', stripped."""
    return ("A: " + best).split(".")[0].strip()


def perturb(text, rng):
    words = text.split()
    kind = rng.choice(["drop", "shuffle", "swap", "dup"])
    if kind == "drop":
        kept = [w for w in words if rng.random() > 0.3]
        words = kept or words[:1]
    elif kind == "shuffle":
        rng.shuffle(words)
    elif kind == "swap" and len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    else:
        i = rng.randrange(len(words))
        words.insert(i, words[i])
    return " ".join(words)


def truthfulqa_pairs(rows):
    rng = random.Random(20240601)
    pairs = []
    # ~150 realistic pairs: a completion against a true ref, a false ref, and "I have no comment."
    for qi in sorted(rng.sample(range(len(rows)), 50)):
        row = rows[qi]
        hyp = completion_from(row["Best Answer"].strip())
        correct = format_answers(row["Correct Answers"])
        incorrect = format_answers(row["Incorrect Answers"])
        pairs.append(("truthfulqa", hyp, rng.choice(correct)))
        pairs.append(("truthfulqa", hyp, rng.choice(incorrect)))
        pairs.append(("truthfulqa", hyp, "I have no comment."))
    # Perturbed completions (word drops, shuffles, swaps, duplicates).
    for qi in sorted(rng.sample(range(len(rows)), 40)):
        row = rows[qi]
        correct = format_answers(row["Correct Answers"])
        hyp = completion_from(perturb(row["Best Answer"].strip(), rng))
        pairs.append(("truthfulqa_perturbed", hyp, rng.choice(correct)))
    # Multi-sentence texts after the task's `s.replace(" . ", ".\n")` (sentences for rougeLsum).
    for qi in sorted(rng.sample(range(len(rows)), 20)):
        row = rows[qi]
        correct = format_answers(row["Correct Answers"])
        incorrect = format_answers(row["Incorrect Answers"])
        hyp = "A: " + " . ".join(a.rstrip(".") for a in rng.sample(correct + incorrect, 2))
        ref = " . ".join(a.rstrip(".") for a in correct[:3]) + " ."
        pairs.append(("truthfulqa_sentences", hyp.replace(" . ", ".\n"),
                      ref.replace(" . ", ".\n")))
    return pairs


def long_pairs(rows):
    rng = random.Random(7)
    answers = [a for r in rows for a in format_answers(r["Correct Answers"])]
    wrong = [a for r in rows for a in format_answers(r["Incorrect Answers"])]

    def text(pool, n_chars, sep):
        parts, size = [], 0
        while size < n_chars:
            p = rng.choice(pool)
            parts.append(p)
            size += len(p) + len(sep)
        return sep.join(parts)

    out = []
    a = text(answers, 4000, " ")
    out.append(("long", a, a))  # identical long texts
    out.append(("long", "A: " + text(answers, 1200, " ").replace(".", ""), text(answers, 3000, " ")))
    out.append(("long", text(wrong, 5000, " "), text(answers, 5000, " ")))
    b = text(answers, 3000, "\n")
    out.append(("long", b, "\n".join(reversed(b.split("\n")))))  # sentence order reversed
    out.append(("long", "I have no comment.", text(answers, 3500, " ")))
    out.append(("long", " ".join(["the"] * 600 + ["cat"] * 400), "the cat " * 300))
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer and aggregation samples
# ---------------------------------------------------------------------------------------------
TOKENIZE_STRINGS = [
    "", " ", "A: I have no comment.", "I have no comment.", WATERMELON_REF,
    "It costs $5, or 3.14 and 1,000.", "U.S.", "The U.S. is big.", "a+b=c", "\u00a9 2020",
    "\U0001F600\U0001F44D\U0001F3FD", "(1992).", "in 1992.", "...!?", "3.\n", "3.\x1f", "x\u00b2.",
    "\u0663.\u0661\u0664", "\uff11\uff12\uff13.", "10:30", "2-3", "e.g. i.e.", "\u201cQuoted\u201d\u2026",
    "\u00bfQu\u00e9?", "Caf\u00e9 Stra\u00dfe", "\u0130stanbul \u212aelvin", "\u4e2d\u6587\u5b57\u7b26\u3002",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645.", "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac!",
    "line one\nline two", "a\x1cb\x1dc", "\u00a0nbsp\u2009thin", "C++ & C#", "x^2 + y^2 = z^2",
    "50%", "#1 @user <tag> &amp;", "\ufb01ne", "e\u0301", "don't won't it's", "snake_case and kebab-case",
    "\u2200x\u2203y", "5\u00b0C", "-5, +3", "tab\there", "\u2014dash\u2013", "\u00ab\u00bb\u2039\u203a",
]


def aggregate_samples():
    rng = random.Random(99)
    arrays = [
        [], [0.5], [0.0, 1.0], [1.0, 2.0, 4.0], [3.0, 3.0, 3.0],
        [rng.choice([0.0, 1.0]) for _ in range(817)],
        [rng.uniform(-30.0, 30.0) for _ in range(817)],
        [rng.uniform(0.0, 100.0) for _ in range(100)],
        [0.1] * 10, [1e-300, 1e100, -1e100, 1.0],
    ]
    out = []
    for xs in arrays:
        row = dict(values=xs)
        for name, f in (("mean", mean), ("mean_stderr", mean_stderr)):
            try:
                row[name] = f(xs)
            except ZeroDivisionError:
                row[name] = None
        out.append(row)
    return out


def main():
    rows = load_truthfulqa()
    assert len(rows) == 817, len(rows)

    spec_rows = []
    for i, (h, r) in enumerate(SPEC):
        row = record(f"spec-{i}", "spec", h, r)
        assert round(row["bleu"], 6) == SPEC_BLEU[i], (h, r, row["bleu"])
        if i < len(SPEC_ROUGE):
            got = tuple(round(row[k]["fmeasure"] * 100, 6) for k in ("rouge1", "rouge2", "rougeLsum"))
            assert got == SPEC_ROUGE[i], (h, r, got)
        spec_rows.append(row)

    raw = []
    for group, items in EDGE.items():
        raw += [(group, h, r) for h, r in items]
    raw += long_pairs(rows)
    raw += truthfulqa_pairs(rows)

    pairs = spec_rows + [record(f"{g}-{i}", g, h, r) for i, (g, h, r) in enumerate(raw)]

    golden = dict(
        meta=dict(
            generator="scripts/reference/make_metric_fixtures.py",
            python=sys.version.split()[0],
            unicodedata=unicodedata.unidata_version,
            sacrebleu=sacrebleu.__version__,
            rouge_score=importlib.metadata.version("rouge_score"),
            lm_eval=importlib.metadata.version("lm_eval"),
            bleu_call=("sacrebleu.corpus_bleu([hypothesis], [[reference]], smooth_method='exp', "
                       "smooth_value=0.0, force=False, lowercase=False, tokenize='intl', "
                       "use_effective_order=False)"),
            rouge_call=("rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeLsum'])"
                        ".score(target=reference, prediction=hypothesis)"),
        ),
        pairs=pairs,
        intl_tokenize=[dict(text=s, tokens=INTL(s).split()) for s in TOKENIZE_STRINGS],
        rouge_tokenize=[dict(text=s, tokens=rouge_tokenize.tokenize(s, None))
                        for s in TOKENIZE_STRINGS],
        aggregate=aggregate_samples(),
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(pairs)} pairs, "
          f"{sum(p['bleu'] is None for p in pairs)} with a BLEU error", file=sys.stderr)


if __name__ == "__main__":
    main()
