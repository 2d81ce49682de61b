#!/usr/bin/env python3
"""End-to-end TruthfulQA MC evaluation: sightline vs lm-evaluation-harness 0.4.9.1, on the same
model, the same documents and the same machine, in one run. Prints both wall times, the ratio
(harness seconds / sightline seconds) and both runs' truthfulqa_mc1 and truthfulqa_mc2 side by side.

    cargo build --release        # target/release/sightline (this script never builds it)
    .venv-ref/bin/python bench/eval_vs_lm_eval.py [--questions 48] [--threads 2] [--batch-size 8]

(`.venv-ref` is a venv of scripts/reference/requirements.txt: lm_eval 0.4.9.1, torch,
transformers 4.46.3.) Everything runs offline; generated files go to the git-ignored bench/out/.

Model: the random 134M LLaMA of bench/score_vs_transformers.py (bench/out/llama-134m, f32,
built there if missing).

Documents. The two `--limit`s do not mean the same thing: lm-eval 0.4 takes the first N
documents in dataset order, sightline (like the paper's 0.3 harness) the first N after
`random.Random(42).shuffle`. So the harness is not given a limit. Instead the script writes a
local copy of TruthfulQA (data/truthfulqa/v0/mc_task.json, the rows HF `truthful_qa`
`multiple_choice` serves, converted to its {choices, labels} format, answer order kept) that
holds only the N questions sightline will evaluate -- the first N of the seed-42 shuffle, in that
order -- and the harness evaluates all of that file. Both systems therefore score exactly the
same questions. With --questions 817 (all) sightline runs without --limit.

Harness side: the machines have no network, so the HF dataset cannot be downloaded. The script
writes task YAMLs under bench/out/lm_eval_tasks/ that are lm_eval 0.4.9.1's own
tasks/truthfulqa/truthfulqa_mc1.yaml and truthfulqa_mc2.yaml, text copied, with only these
changes: task names truthfulqa_mc1_local / truthfulqa_mc2_local, tag truthfulqa_local,
`dataset_path: json` + `dataset_kwargs: {data_files: {validation: <the local JSONL>}}` instead of
`truthful_qa` / `multiple_choice`, and mc2 including the local mc1 YAML. The harness's
tasks/truthfulqa/utils.py is copied next to them, since `!function utils.process_results_mc2`
is resolved relative to the YAML file. It runs through `lm_eval.simple_evaluate(model="hf",
model_args="pretrained=<dir>,dtype=float32,add_bos_token=False", batch_size=8, device="cpu")`
with HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1 and torch.set_num_threads(--threads).

Timing. Harness: the TaskManager (task index) and the simple_evaluate call, model loading,
dataset loading and metrics included; Python start-up and `import lm_eval, torch` are not
(printed separately). Sightline: the whole `sightline --threads T eval ...` process.

Metric differences to expect. MC1 and MC2 are computed from the same log-likelihoods (lm-eval
`HFLM(add_bos_token=False)` rules), so they should agree to float rounding. But lm-eval >= 0.4.9
computes MC2 as the probability mass of all answers with label 1, while sightline (the 0.3
harness) splits true/false at the first 0 label; the two differ on 2 of the 817 questions, whose
labels are not of the form 1..1 0..0. The script says which of them are in the sample and also
recomputes the harness's MC2 with the 0.3 split from the harness's own log-likelihoods
(log_samples), so the remaining difference is the numerical one.

GPU and bf16 (what scripts/gpu/check.sh runs): `--device cuda --dtype bf16` runs both on the GPU
in bf16 (the harness: `device="cuda"`, `dtype=bfloat16`; sightline: `--device cuda --dtype bf16`),
`--shape tinyllama-1.1b` evaluates a random LLaMA of TinyLlama-1.1B's shape instead of the 134M
one, `--binary PATH` names the sightline to run (the CUDA build's launcher), `--work DIR` where
the model, data and outputs go (default bench/out), `--json FILE` writes the figures.
`--shape llama2-7b` evaluates a LLaMA-2-7B-shaped checkpoint with random bf16 weights, written
by bench/llama7b.py (13.5 GB, sharded; use it with `--dtype bf16`).

Peak memory: each system's peak resident set (sightline: the child process's `ru_maxrss`; the
harness: this Python process's, measured after its run, so it includes the imports). Tokens/s
counts each request's context + continuation tokens once (the harness's input positions; the
same count for both, so the tokens/s ratio is the wall-time ratio).
"""
import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_vs_transformers import QA_PROMPT, SHAPES, build_model  # noqa: E402
import llama7b  # noqa: E402

BIG_SHAPES = {"llama2-7b": llama7b.write}

N_DOCS = 817
TASKS = ["truthfulqa_mc1", "truthfulqa_mc2"]


def sightline_docs(n):
    """Indices (into mc_task.json) of the documents `sightline eval --limit n` evaluates, in order."""
    order = list(range(N_DOCS))
    random.Random(42).shuffle(order)
    return order[:n]


def to_hf_row(d):
    """v0 mc_task.json object -> HF truthful_qa `multiple_choice` row (dict order = answer order)."""
    return {
        "question": d["question"],
        "mc1_targets": {"choices": list(d["mc1_targets"]), "labels": list(d["mc1_targets"].values())},
        "mc2_targets": {"choices": list(d["mc2_targets"]), "labels": list(d["mc2_targets"].values())},
    }


def mc2_first_zero(lls, labels):
    """MC2 as the 0.3 harness (and sightline) computes it: true/false split at the first 0 label."""
    split = labels.index(0) if 0 in labels else len(labels)
    p = [math.exp(x) for x in lls]
    return sum(p[:split]) / sum(p)


def write_tasks(task_dir, data_file):
    """lm_eval 0.4.9.1's truthfulqa_mc1/mc2 YAMLs, reading data_file instead of HF truthful_qa."""
    import lm_eval
    src = Path(lm_eval.__file__).parent / "tasks/truthfulqa"
    if task_dir.exists():
        shutil.rmtree(task_dir)
    task_dir.mkdir(parents=True)
    shutil.copy(src / "utils.py", task_dir / "utils.py")

    def edit(text, repl):
        for old, new in repl:
            assert text.count(old) == 1, f"{old!r} not found once in lm_eval's truthfulqa YAML"
            text = text.replace(old, new)
        return text

    dataset = (f"dataset_path: json\ndataset_name: null\n"
               f"dataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(data_file))}")
    mc1 = edit((src / "truthfulqa_mc1.yaml").read_text(), [
        ("  - truthfulqa\n", "  - truthfulqa_local\n"),
        ("task: truthfulqa_mc1\n", "task: truthfulqa_mc1_local\n"),
        ("dataset_path: truthful_qa\ndataset_name: multiple_choice", dataset),
    ])
    mc2 = edit((src / "truthfulqa_mc2.yaml").read_text(), [
        ("include: truthfulqa_mc1.yaml\n", "include: truthfulqa_mc1_local.yaml\n"),
        ("task: truthfulqa_mc2\n", "task: truthfulqa_mc2_local\n"),
    ])
    (task_dir / "truthfulqa_mc1_local.yaml").write_text(mc1)
    (task_dir / "truthfulqa_mc2_local.yaml").write_text(mc2)


def count_tokens(model_dir, docs, picked):
    """Input positions of the MC1 + MC2 requests, context + continuation, as lm-eval builds them
    (the QA preamble + "Q: ...\nA:", then " " + answer; no BOS)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    n = 0
    for i in picked:
        ctx = QA_PROMPT + "\n\nQ: " + docs[i]["question"] + "\nA:"
        c = len(tok(ctx, add_special_tokens=False)["input_ids"])
        for k in ["mc1_targets", "mc2_targets"]:
            n += sum(c + len(tok(" " + x, add_special_tokens=False)["input_ids"]) for x in docs[i][k])
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=48,
                    help="TruthfulQA questions (the first N of the seed-42 shuffle); 817 = all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--shape", default="134m", choices=sorted(SHAPES) + sorted(BIG_SHAPES))
    ap.add_argument("--binary", default=str(ROOT / "target/release/sightline"))
    ap.add_argument("--work", help="models, data and outputs (default bench/out)")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    global OUT
    if a.work:
        OUT = Path(a.work).resolve()
    n = max(1, min(a.questions, N_DOCS))

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    t0 = time.perf_counter()
    import torch
    import lm_eval
    import lm_eval.tasks
    import transformers
    t_import = time.perf_counter() - t0
    torch.set_num_threads(a.threads)

    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = OUT / f"llama-{a.shape}"
    if a.shape in BIG_SHAPES:
        BIG_SHAPES[a.shape](model_dir)
    else:
        build_model(model_dir, a.shape)
    torch_dtype = {"f32": "float32", "bf16": "bfloat16"}[a.dtype]

    docs = json.loads((ROOT / "data/truthfulqa/v0/mc_task.json").read_text())
    assert len(docs) == N_DOCS
    picked = sightline_docs(n)
    data_file = OUT / f"truthfulqa_mc_seed42_first{n}.jsonl"
    data_file.write_text("".join(json.dumps(to_hf_row(docs[i]), ensure_ascii=False) + "\n" for i in picked))
    # questions where "all labels == 1" (lm-eval >= 0.4.9) and "split at the first 0" (0.3) differ
    noncontig = [i for i, d in enumerate(docs)
                 if (lab := list(d["mc2_targets"].values())) != sorted(lab, reverse=True)]
    noncontig_in = [i for i in noncontig if i in set(picked)]
    n_req = {k: sum(len(docs[i][k + "_targets"]) for i in picked) for k in ["mc1", "mc2"]}
    n_distinct = len({(i, c) for i in picked for k in ["mc1", "mc2"] for c in docs[i][k + "_targets"]})
    task_dir = OUT / "lm_eval_tasks"
    write_tasks(task_dir, data_file)

    # --- sightline (first: a binary that fails ends the run before the harness's long one) -----
    binary = Path(a.binary)
    sl_out = OUT / "eval_sightline"
    cmd = [str(binary), "--threads", str(a.threads), "eval", "--model", str(model_dir), "--tasks", ",".join(TASKS),
           *(["--limit", str(n)] if n < N_DOCS else []), "--batch-size", str(a.batch_size),
           "--device", a.device, "--dtype", a.dtype, "--output", str(sl_out), "--overwrite"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_sl = time.perf_counter() - t0
    rss_sl = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if p.returncode != 0:
        sys.exit(f"sightline eval failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    sl_res = json.loads((sl_out / "results.json").read_text())
    sl = {t: sl_res["results"][t]["acc,none"] for t in TASKS}
    sl_docs = {t: sl_res["n-samples"][t]["effective"] for t in TASKS}

    # --- lm-evaluation-harness ---------------------------------------------------------------
    model_args = f"pretrained={model_dir},dtype={torch_dtype},add_bos_token=False"
    local_tasks = [t + "_local" for t in TASKS]
    t0 = time.perf_counter()
    tm = lm_eval.tasks.TaskManager(include_path=str(task_dir))
    t_index = time.perf_counter() - t0
    res = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=local_tasks, task_manager=tm,
                                  batch_size=a.batch_size, device=a.device, log_samples=True)
    t_ref = time.perf_counter() - t0
    rss_ref = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ref = {t: res["results"][t + "_local"]["acc,none"] for t in TASKS}
    ref_docs = {t: res["n-samples"][t + "_local"]["effective"] for t in TASKS}
    ref_mc2_split = sum(mc2_first_zero([r[0] for r in s["filtered_resps"]], s["doc"]["mc2_targets"]["labels"])
                        for s in res["samples"]["truthfulqa_mc2_local"]) / ref_docs["truthfulqa_mc2"]

    # --- report ------------------------------------------------------------------------------
    tokens = count_tokens(model_dir, docs, picked)
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    print(f"model: random LLaMA {a.shape} {a.dtype} on {a.device} ({rel(model_dir)}) | TruthfulQA v0, {n} questions "
          f"(the first {n} of the seed-42 shuffle, the same for both) | batch {a.batch_size} | {a.threads} threads")
    print(f"reference: lm_eval {lm_eval.__version__} simple_evaluate(model='hf', {model_args}), "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"harness tasks: {', '.join(local_tasks)} from {rel(task_dir)}/ "
          f"(lm_eval's YAMLs, data {rel(data_file)}), no --limit")
    print("sightline: " + " ".join(cmd).replace(str(ROOT) + "/", ""))
    print(f"requests: {n_req['mc1']} mc1 + {n_req['mc2']} mc2 = {n_req['mc1'] + n_req['mc2']} log-likelihoods, "
          f"{n_distinct} distinct (the harness scores each task's requests; sightline pools them and runs each "
          f"question's context once)")
    print(f"harness seconds: TaskManager index {t_index:.2f} s + simple_evaluate (model load, data, "
          f"scoring, metrics); not counted: python imports {t_import:.2f} s. "
          f"sightline seconds: the whole process.")
    for t in TASKS:
        if ref_docs[t] != n or sl_docs[t] != n:
            print(f"WARNING: {t}: harness evaluated {ref_docs[t]} docs, sightline {sl_docs[t]}, expected {n}")
    print()
    print(f"{'system':32} {'seconds':>8} {'s/question':>10} {'ratio':>6} {'peak RSS GB':>11} {'mc1':>10} {'mc2':>10}")
    print(f"{'lm-eval 0.4.9.1 (transformers)':32} {t_ref:8.2f} {t_ref / n:10.2f} {1.0:6.2f} {rss_ref / 1e9:11.2f} "
          f"{ref['truthfulqa_mc1']:10.6f} {ref['truthfulqa_mc2']:10.6f}")
    print(f"{'sightline':32} {t_sl:8.2f} {t_sl / n:10.2f} {t_ref / t_sl:6.2f} {rss_sl / 1e9:11.2f} "
          f"{sl['truthfulqa_mc1']:10.6f} {sl['truthfulqa_mc2']:10.6f}")
    print()
    d1 = abs(sl["truthfulqa_mc1"] - ref["truthfulqa_mc1"])
    d2 = abs(sl["truthfulqa_mc2"] - ref["truthfulqa_mc2"])
    d2s = abs(sl["truthfulqa_mc2"] - ref_mc2_split)
    print(f"|Δ mc1| = {d1:.2e} ({round(d1 * n)} of {n} questions)")
    print(f"|Δ mc2| = {d2:.2e} (lm-eval 0.4.9 MC2: all labels == 1)")
    print(f"|Δ mc2| = {d2s:.2e} against the harness's log-likelihoods with the 0.3 first-zero split "
          f"(mc2 {ref_mc2_split:.6f}), sightline's rule")
    print(f"questions where the two MC2 rules differ (mc_task.json index): {noncontig}; "
          f"in this sample: {noncontig_in or 'none'}")
    print(f"input tokens {tokens}: lm-eval {tokens / t_ref:.0f} tokens/s, sightline {tokens / t_sl:.0f} tokens/s")
    print("timings are wall clock on a shared machine (other processes may use the same cores): rough")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "shape": a.shape, "device": a.device, "dtype": a.dtype, "questions": n, "tokens": tokens,
            "lm_eval": {"seconds": t_ref, "tokens_per_s": tokens / t_ref, "peak_rss_bytes": rss_ref, **ref},
            "sightline": {"seconds": t_sl, "tokens_per_s": tokens / t_sl, "peak_rss_bytes": rss_sl, **sl},
            "speed_ratio": t_ref / t_sl, "abs_diff": {"mc1": d1, "mc2": d2, "mc2_first_zero": d2s},
        }, indent=1))


if __name__ == "__main__":
    sys.exit(main())
