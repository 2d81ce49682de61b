#!/usr/bin/env python3
"""Parity fixtures for the lm-eval 0.4 side of sightline's retention tasks (issue 16), on
stories260K: lm_eval 0.4.9.1's own `gsm8k`, `boolq` and `squadv2` tasks run by its own
`simple_evaluate`.

Run from the repository root with the pinned stack (scripts/reference/requirements.txt):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv-ref/bin/python \
        scripts/reference/make_retention_v04_fixtures.py

What runs as the reference:

* gsm8k — lm_eval 0.4.9.1's `lm_eval/tasks/gsm8k/gsm8k.yaml`, read from the installed package and
  changed only in where the data comes from (`dataset_path: json` on data/gsm8k/{train,test}.jsonl,
  the same records as HF `gsm8k` `main`): 5-shot from `train` with the task's seed-1234 sampler,
  `until ["Question:", "</s>", "<|im_end|>"]` (+ EOS), filters `strict-match` and
  `flexible-extract`, `exact_match` with `ignore_case`, `regexes_to_ignore` `,` `\\$`
  `(?s).*#### ` `\\.$`.
* boolq — `lm_eval/tasks/super_glue/boolq/default.yaml`, data from data/boolq/val.jsonl.
* squadv2 — the task class `lm_eval/tasks/squadv2/task.py::SQuAD2`, data from the explorer
  pages (make_retention_fixtures.squad_pages); `evaluate.load("squad_v2")` needs the hub, so it
  is replaced by make_retention_fixtures.SquadV2Metric (the official v2.0 script, as for 0.3).

Model: stories260K converted in Python, HFLM(add_bos_token=False, prefix_token_id=2, batch 1).

Documents: `simple_evaluate(samples=...)` with the documents sightline's `--limit 20` selects
(random.Random(42).shuffle of the indices, first 20; 0.4's own `--limit` would take the first 20
unshuffled). 0.4 evaluates them in index order, so gsm8k's seed-1234 draws go to the documents in
index order — what sightline's `--gsm8k-harness 0.4` does (on a full run, exactly 0.4's order).

boolq and squadv2 are recorded to show that 0.4.9.1 gives the numbers the 0.3.0 reference
(retention_stories260k.json) gives on the same documents; the script asserts it.

Writes tests/fixtures/eval/retention_v04_stories260k.json.
"""
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
import lm_eval  # noqa: E402
import lm_eval.evaluator  # noqa: E402
import lm_eval.tasks.squadv2.task as squad_task  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from make_eval_fixtures import convert_stories260k  # noqa: E402
from make_retention_fixtures import SquadV2Metric, squad_pages  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
OUT = ROOT / "tests/fixtures/eval/retention_v04_stories260k.json"
REF03 = ROOT / "tests/fixtures/eval/retention_stories260k.json"
LIMIT = 20
TASKS = Path(lm_eval.__file__).parent / "tasks"


def selected(n):
    order = list(range(n))
    random.Random(42).shuffle(order)
    return order[:LIMIT]


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gsm8k_scoring(cfg):
    """gsm8k's filters and exact_match, as the YAML configures them, on responses a story model
    never writes (numbers, signs, `$`, commas, periods, case): lm_eval 0.4.9.1's own RegexFilter
    and exact_match_hf_evaluate."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    filters = {}
    for f in cfg["filter_list"]:
        (regex, take_first) = f["filter"]
        assert regex["function"] == "regex" and take_first["function"] == "take_first"
        filters[f["name"]] = RegexFilter(regex_pattern=regex["regex_pattern"],
                                         group_select=regex.get("group_select", 0))
    (metric,) = cfg["metric_list"]
    kw = {k: metric[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    golds = [d["answer"] for d in jsonl(DATA / "gsm8k/test.jsonl")[:6]]
    # (response, index of the gold solution among the first 6 test documents: answers 18, 3,
    # 70000, 540, 20, 64)
    responses = [
        (" She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18", 0), (" #### 18.", 0), ("So $18.", 0),
        (" The answer is 3", 1), (" It takes 2 + 1 = 3 bolts.\n#### 3", 1), ("#### -3", 1), ("#### 3,000", 1),
        (" He made $70,000 profit.\n#### 70000", 2), ("70,000.", 2), (" #### 70000.0", 2), ("#### 70,000", 2),
        (" 540 meters\n#### 540", 3), ("x = -5 then 540", 3), ("#### 5 40", 3),
        ("Answer: 20 cups", 4), ("#### 20\nQuestion:", 4), ("2 + 2 = 4\n\n#### 4\n", 4), ("20.\n", 4),
        ("  #### 64 ", 5), ("64", 5), ("$64.00", 5), ("THE ANSWER IS 64.", 5), ("-$64", 5),
        ("no numbers at all", 0), ("", 1), ("-", 2), ("--7", 3), ("1.2.3", 4), ("$$", 5), ("#### 1,2,3", 0),
        ("12.", 0), ("it is 5.\n", 1),
    ]
    cases = []
    for r, g in responses:
        gold = golds[g]
        row = dict(response=r, gold=gold)
        for name, f in filters.items():
            got = f.apply([[r]], [None])[0][0]
            row[name] = got
            row[name + ":exact_match"] = float(exact_match_hf_evaluate(predictions=[got], references=[gold], **kw)["exact_match"])
        cases.append(row)
    hits = sum(c["strict-match:exact_match"] + c["flexible-extract:exact_match"] for c in cases)
    assert hits >= 6, hits  # the vectors exercise matches, not only misses
    return cases


def main():
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    convert_stories260k(str(tmp / "model"))
    lm = HFLM(pretrained=str(tmp / "model"), backend="causal", device="cpu", dtype="float32", batch_size=1,
              add_bos_token=False, prefix_token_id=2)

    gsm = yaml.safe_load((TASKS / "gsm8k/gsm8k.yaml").read_text())
    gsm.update(dataset_path="json", dataset_name=None,
               dataset_kwargs=dict(data_files=dict(train=str(DATA / "gsm8k/train.jsonl"),
                                                   test=str(DATA / "gsm8k/test.jsonl"))))
    gsm.pop("tag", None)

    boolq_rows = [dict(question=r["question"], passage=r["passage"], idx=r["idx"], label=int(r["label"]))
                  for r in jsonl(DATA / "boolq/val.jsonl")]
    (tmp / "boolq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in boolq_rows))
    bq = yaml.safe_load((TASKS / "super_glue/boolq/default.yaml").read_text())
    bq.update(dataset_path="json", dataset_name=None, training_split=None,
              dataset_kwargs=dict(data_files=dict(validation=str(tmp / "boolq.jsonl"))))
    bq.pop("tag", None)

    squad_docs = squad_pages()

    class SQuAD2(squad_task.SQuAD2):
        def __init__(self):
            super().__init__()
            self._config.task = "squadv2"  # the registered name, which `samples` is keyed by

        def download(self, dataset_kwargs=None):
            val = datasets.Dataset.from_list(squad_docs)
            # Zero-shot: the train split is never drawn from; one record stands in for it.
            self.dataset = datasets.DatasetDict(train=val.select([0]), validation=val)

    squad_task._squad_metric = lambda predictions, references: SquadV2Metric().compute(
        predictions=predictions, references=references)

    n_docs = dict(gsm8k=len(jsonl(DATA / "gsm8k/test.jsonl")), boolq=len(boolq_rows), squadv2=len(squad_docs))
    # Sorted: 0.4 evaluates in index order and names the k-th document `samples[k]`.
    samples = {t: sorted(selected(n)) for t, n in n_docs.items()}
    run = dict(model=lm, log_samples=True, fewshot_random_seed=1234)
    # Means get lm-eval's analytic stderr; squadv2's corpus metrics would be bootstrapped
    # (100,000 squad_v2 evaluations), so that task runs without stderrs, as in 0.3.
    res = lm_eval.evaluator.simple_evaluate(tasks=[gsm, bq], samples=samples, **run)
    res_sq = lm_eval.evaluator.simple_evaluate(tasks=[SQuAD2()], samples=samples, bootstrap_iters=0, **run)
    for k in ["results", "versions", "n-shot", "samples"]:
        res[k].update(res_sq[k])

    out = dict(reference=dict(torch=torch.__version__, transformers=transformers.__version__,
                              lm_eval=lm_eval.__version__, datasets=datasets.__version__),
               model="stories260K converted in Python", limit=LIMIT, tasks={})
    gsm_pool = jsonl(DATA / "gsm8k/train.jsonl")
    test_docs = jsonl(DATA / "gsm8k/test.jsonl")
    pool_index = {}
    for i, d in enumerate(gsm_pool):
        pool_index.setdefault((d["question"], d["answer"]), i)
    for task in ["gsm8k", "boolq", "squadv2"]:
        r = res["results"][task]
        metrics = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in r.items() if k != "alias"}
        # One logged sample per document and filter (gsm8k has two filters).
        by_doc = {}
        for s in res["samples"][task]:
            by_doc.setdefault(s["doc_id"], []).append(s)
        logged = [by_doc[d][0] for d in sorted(by_doc)]
        assert len(logged) == LIMIT
        entry = dict(version=res["versions"][task], n_shot=res["n-shot"][task], doc_ids=sorted(samples[task]),
                     metrics=metrics)
        if task == "gsm8k":
            shots, resps, filtered = [], [], []
            for s in logged:
                ctx = s["arguments"][0][0]
                blocks = ctx.split("\n\n")[:-1]
                # Each shot is "Question: q\nAnswer: a"; the answers themselves hold no "\n\n".
                ids = []
                for b in blocks:
                    q, a = b[len("Question: "):].split("\nAnswer: ", 1)
                    ids.append(pool_index[(q, a)])
                shots.append(ids)
                resps.append(s["resps"][0][0])
                assert s["doc"]["question"] == test_docs[s["doc_id"]]["question"]
                filtered.append({s2["filter"]: s2["filtered_resps"][0] for s2 in by_doc[s["doc_id"]]})
                assert sorted(filtered[-1]) == ["flexible-extract", "strict-match"], filtered[-1]
            entry.update(fewshot_ids=shots, responses=resps, filtered=filtered,
                         until=gsm["generation_kwargs"]["until"])
        out["tasks"][task] = entry
        print(task, {k: v for k, v in metrics.items() if "stderr" not in k}, file=sys.stderr)

    out["gsm8k_scoring"] = gsm8k_scoring(gsm)

    # 0.4.9.1 boolq and squadv2 give what the 0.3.0 reference gives on the same documents.
    ref03 = json.loads(REF03.read_text())["tasks"]
    for ours, theirs, pairs in [("boolq", "boolq", [("acc,none", "acc")]),
                                ("squadv2", "squad2", [(f"{m},none", m) for m in
                                                       ["exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact",
                                                        "NoAns_f1", "best_exact", "best_f1"]])]:
        assert sorted(ref03[theirs]["doc_ids"]) == out["tasks"][ours]["doc_ids"]
        for k04, k03 in pairs:
            a, b = out["tasks"][ours]["metrics"][k04], ref03[theirs]["metrics"][k03]
            assert abs(a - b) <= 1e-9, (ours, k04, a, b)
    shutil.rmtree(tmp, ignore_errors=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
