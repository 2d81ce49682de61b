#!/usr/bin/env python3
"""Fixtures for `sightline report`: two real lm-evaluation-harness output folders and the
statistics that compare them, computed with scipy / statsmodels / numpy.

Run from the repository root with the pinned stack (scripts/reference/requirements.txt, plus
statsmodels):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_report_fixtures.py

1. Two LlamaForCausalLM models with the same 512-token vocabulary: stories260K, converted to HF in
   Python exactly as make_eval_fixtures.py does, and tests/fixtures/train/base.
2. lm_eval 0.4.9.1's own task YAMLs for truthfulqa_mc1, truthfulqa_mc2, ethics_cm and
   ethics_justice, copied into a temporary --include_path with only the dataset lines changed to
   `dataset_path: json` + `data_files` built from data/ (TruthfulQA v0 mc_task.json, the ETHICS
   test CSVs), since there is no hub access. lm_eval's truthfulqa utils.py is copied beside them.
3. `simple_evaluate(..., log_samples=True)` + `EvaluationTracker`, as `lm_eval --log_samples
   --output_path` does: TruthfulQA with --limit 12 and ETHICS with --limit 40 in two calls, so each
   folder holds two results_<date>.json files (the samples' prompts make TruthfulQA large).
   Written to tests/fixtures/report/lm-eval/<model>/.
4. tests/fixtures/report/golden.json: lm-eval's values and stderrs; per (task, metric) with the
   first model as baseline: McNemar b, c and p from statsmodels (exact=True) and scipy.binomtest,
   or the paired bootstrap (numpy RandomState(1234).randint(0, n, size=(10000, n))) p and 95% CI
   plus scipy's ttest_rel; the unpaired z-test p; Holm over the paired p-values
   (statsmodels multipletests); the first bootstrap indices; McNemar on large counts; a synthetic
   POPE split whose F1 delta is bootstrapped by recomputing F1 on every resample (spec item 7).
   `--stats-only` recomputes golden.json from the committed lm-eval folders without rerunning
   lm-eval.
"""
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.stats  # noqa: E402
import statsmodels  # noqa: E402
from statsmodels.stats.contingency_tables import mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
import lm_eval  # noqa: E402
from lm_eval.loggers import EvaluationTracker  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from make_eval_fixtures import convert_stories260k  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
OUT = ROOT / "tests/fixtures/report"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
MODELS = ["stories260k", "tiny-base"]
RUNS = [(["truthfulqa_mc1", "truthfulqa_mc2"], 12), (["ethics_cm", "ethics_justice"], 40)]
B, SEED = 10_000, 1234


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def ethics_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["label"] = int(r["label"])
        for k in ("is_short", "edited"):
            if k in r:
                r[k] = r[k] == "True"
    return rows


def make_tasks(tmp):
    """lm-eval's YAMLs with the hub dataset lines replaced by local JSON files."""
    data = tmp / "data"
    data.mkdir()
    raw = json.loads((DATA / "truthfulqa/v0/mc_task.json").read_text())
    mc = [dict(question=d["question"],
               mc1_targets=dict(choices=list(d["mc1_targets"]), labels=list(d["mc1_targets"].values())),
               mc2_targets=dict(choices=list(d["mc2_targets"]), labels=list(d["mc2_targets"].values())))
          for d in raw]
    write_jsonl(data / "truthfulqa_mc.jsonl", mc)
    write_jsonl(data / "cm_test.jsonl", ethics_rows(DATA / "ethics/commonsense/cm_test.csv"))
    write_jsonl(data / "justice_test.jsonl", ethics_rows(DATA / "ethics/justice/justice_test.csv"))
    inc = tmp / "tasks"
    inc.mkdir()

    def copy(src, dst, old, new):
        text = (LM_EVAL_TASKS / src).read_text()
        for o, n in zip(old, new):
            assert o in text, (src, o)
            text = text.replace(o, n)
        (inc / dst).write_text(text)

    tqa = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {data / 'truthfulqa_mc.jsonl'}\n"
    copy("truthfulqa/truthfulqa_mc1.yaml", "truthfulqa_mc1.yaml",
         ["dataset_path: truthful_qa\ndataset_name: multiple_choice\n"], [tqa])
    copy("truthfulqa/truthfulqa_mc2.yaml", "truthfulqa_mc2.yaml", [], [])
    shutil.copy(LM_EVAL_TASKS / "truthfulqa/utils.py", inc / "utils.py")
    cm = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data / 'cm_test.jsonl'}\n"
    copy("hendrycks_ethics/commonsense.yaml", "commonsense.yaml",
         ["dataset_path: EleutherAI/hendrycks_ethics\ndataset_name: commonsense\n", "training_split: train\n"],
         [cm, "training_split: null\n"])
    # deontology.yaml is justice's parent; its own task is registered but never run.
    copy("hendrycks_ethics/deontology.yaml", "deontology.yaml", ["dataset_name: deontology\n"], [""])
    just = f"dataset_kwargs:\n  data_files:\n    test: {data / 'justice_test.jsonl'}\n"
    copy("hendrycks_ethics/justice.yaml", "justice.yaml", ["dataset_name: justice\n"], [just])
    return inc


def evaluate(model_dir, out, tm):
    for tasks, limit in RUNS:
        tracker = EvaluationTracker(output_path=str(out))
        res = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=tasks, limit=limit,
            batch_size=1, device="cpu", log_samples=True, task_manager=tm, evaluation_tracker=tracker)
        samples = res.pop("samples")
        tracker.save_results_aggregated(results=res, samples=samples)
        for t in res["configs"]:
            tracker.save_results_samples(task_name=t, samples=samples[t])


def newest(folder, prefix, task=None):
    files = sorted(folder.glob(f"{prefix}*.json*"))
    if task is None:
        return files
    return [f for f in files if f.name.startswith(f"samples_{task}_")][-1]


def load(folder):
    """task -> (results entry, {doc_id: acc})."""
    out = {}
    for rf in newest(folder, "results_"):
        res = json.loads(rf.read_text())
        for task, entry in res["results"].items():
            sf = newest(folder, "samples_", task)
            docs = {}
            for line in sf.read_text().splitlines():
                r = json.loads(line)
                docs[r["doc_id"]] = (r["acc"], r.get("doc_hash"))
            out[task] = (entry, docs)
    return out


def compare(base, other):
    rows, paired_p = {}, []
    for task in sorted(base):
        (eb, db), (eo, do) = base[task], other[task]
        ids = sorted(db)
        assert ids == sorted(do) and all(db[i][1] == do[i][1] for i in ids)
        x = np.array([db[i][0] for i in ids], dtype=float)
        y = np.array([do[i][0] for i in ids], dtype=float)
        v1, s1, v2, s2 = eb["acc,none"], eb["acc_stderr,none"], eo["acc,none"], eo["acc_stderr,none"]
        z = (v2 - v1) / np.sqrt(s1 ** 2 + s2 ** 2)
        row = dict(n=len(ids), delta=float(y.mean() - x.mean()),
                   z_p=float(2 * scipy.stats.norm.sf(abs(z))))
        if set(np.unique(np.concatenate([x, y]))) <= {0.0, 1.0}:
            a = int(((x == 1) & (y == 1)).sum())
            b = int(((x == 1) & (y == 0)).sum())
            c = int(((x == 0) & (y == 1)).sum())
            d = int(((x == 0) & (y == 0)).sum())
            p_sm = float(mcnemar([[a, b], [c, d]], exact=True).pvalue)
            p_sc = float(scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue) if b + c else 1.0
            row.update(test="mcnemar_exact", b=b, c=c, p_statsmodels=p_sm, p_scipy=p_sc, p=p_sm)
        else:
            idx = np.random.RandomState(SEED).randint(0, len(ids), size=(B, len(ids)))
            dk = (y - x)[idx].mean(axis=1)
            p = min(1.0, 2 * min(int((dk <= 0).sum()), int((dk >= 0).sum())) / B)
            lo, hi = np.quantile(dk, [0.025, 0.975])
            row.update(test="paired_bootstrap", p=p, ci=[float(lo), float(hi)],
                       ttest_rel_p=float(scipy.stats.ttest_rel(y, x).pvalue),
                       first_indices=idx[:2, :10].tolist())
        rows[task] = row
        paired_p.append(row["p"])
    holm = multipletests(paired_p, method="holm")[1]
    for task, h in zip(sorted(base), holm):
        rows[task]["p_holm"] = float(h)
    return rows


def f1(pred, gold):
    """SBT's get_pope_results F1 (NaN where it would divide by zero)."""
    tp = int((pred & gold).sum())
    fp = int((pred & ~gold).sum())
    fn = int((~pred & gold).sum())
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    return 2 * p * r / (p + r) if p + r else float("nan")


def pope_case():
    """A synthetic POPE split: F1's paired bootstrap, recomputing F1 on every resample."""
    n = 80
    rs = np.random.RandomState(7)
    gold = rs.rand(n) < 0.5
    base = np.where(rs.rand(n) < 0.75, gold, ~gold)
    other = np.where(rs.rand(n) < 0.85, gold, ~gold)
    idx = np.random.RandomState(SEED).randint(0, n, size=(B, n))
    dk = np.array([f1(other[i], gold[i]) - f1(base[i], gold[i]) for i in idx])
    p = min(1.0, 2 * min(int((dk <= 0).sum()), int((dk >= 0).sum())) / B)
    lo, hi = np.quantile(dk, [0.025, 0.975])
    return dict(gold=gold.astype(int).tolist(), base=base.astype(int).tolist(),
                other=other.astype(int).tolist(), f1_base=f1(base, gold), f1_other=f1(other, gold),
                delta=f1(other, gold) - f1(base, gold), p=p, ci=[float(lo), float(hi)])


def main():
    if "--stats-only" in sys.argv:  # reuse the lm-eval folders already written
        return write_golden()
    tmp = Path(tempfile.mkdtemp(prefix="report-fixtures-"))
    try:
        inc = make_tasks(tmp)
        tm = TaskManager(include_path=str(inc), include_defaults=False)
        os.chdir(tmp)  # relative model paths give the folder names lm-eval derives from them
        convert_stories260k(tmp / "stories260k")
        shutil.copytree(ROOT / "tests/fixtures/train/base", tmp / "tiny-base")
        if (OUT / "lm-eval").exists():
            shutil.rmtree(OUT / "lm-eval")
        for m in MODELS:
            evaluate(m, OUT / "lm-eval", tm)
    finally:
        os.chdir(ROOT)
        shutil.rmtree(tmp)
    write_golden()


def write_golden():
    runs = {m: load(OUT / "lm-eval" / m) for m in MODELS}
    values = {m: {t: {"acc": e["acc,none"], "acc_stderr": e["acc_stderr,none"]} for t, (e, _) in r.items()}
              for m, r in runs.items()}
    big = [(b, c, float(mcnemar([[0, b], [c, 0]], exact=True).pvalue),
            float(scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue) if b + c else 1.0)
           for b, c in [(0, 0), (1, 5), (7, 7), (450, 520), (1200, 1000), (3000, 3100)]]
    golden = {
        "versions": {"lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4.9.1",
                     "numpy": np.__version__, "scipy": scipy.__version__,
                     "statsmodels": statsmodels.__version__},
        "bootstrap": {"B": B, "seed": SEED},
        "baseline": MODELS[0],
        "values": values,
        "compare": {MODELS[1]: compare(runs[MODELS[0]], runs[MODELS[1]])},
        "mcnemar_large": [dict(b=b, c=c, p_statsmodels=p1, p_scipy=p2) for b, c, p1, p2 in big],
        "holm_cases": [dict(p=ps, holm=multipletests(ps, method="holm")[1].tolist())
                       for ps in ([0.01, 0.04, 0.03, 0.005, 0.5, 0.2], [0.2, 0.2, 0.01], [0.9])],
        "pope_f1": pope_case(),
        "randint_1234_n7_first20": np.random.RandomState(SEED).randint(0, 7, size=(3, 7)).ravel()[:20].tolist(),
    }
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(json.dumps(golden["compare"], indent=1))
    print(json.dumps({k: v for k, v in golden["pope_f1"].items() if k not in ("gold", "base", "other")}))


if __name__ == "__main__":
    main()
