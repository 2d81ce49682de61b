#!/usr/bin/env python3
"""Before/after for a change to the decoder: two sightline builds, alternated in one run, on the
scoring workload of `score_vs_transformers.py` (f32 and bf16) and the training step of
`train_step_vs_torch.py`. Prints tokens/s of each build per round and the median ratio new/old.

    cargo build --release -p sightline && cargo build --release -p sightline-train --example step_timing
    .venv-ref/bin/python bench/decoder_before_after.py \
        --old-sightline OLD/sightline --old-step-timing OLD/step_timing [--rounds 3] [--model smollm2]

The new binaries default to target/release/{sightline,examples/step_timing}. Old and new run
back to back, alternating (old, new, new, old, ...), so that load from other jobs on a shared
machine falls on both; the ratio, not the absolute figure, is the result. Each run's CPU seconds
(user + system of the child) are printed too: they move less than wall time when other jobs
share the machine. The Python venv is only needed to build the models and batch files once
(bench/out/); no PyTorch timing runs.

--model random (default): the random 134M LLaMA of score_vs_transformers.py for scoring and the
random configs of train_step_vs_torch.py for training. --model smollm2: the real pretrained
SmolLM2-135M-Instruct (bench/smollm2.py) for scoring, and for training the case `smollm2:full` /
`smollm2:lora` (batch 4 x 128 tokens of ids drawn from its 49,152-token vocabulary).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import score_vs_transformers as score_bench  # noqa: E402
import smollm2  # noqa: E402
import train_step_vs_torch as train_bench  # noqa: E402

SMOLLM2_TRAIN = (49152, 4, 128)  # vocabulary, batch, sequence length


def run_timed(cmd, env=None):
    """Runs cmd to completion, its output discarded; returns (wall seconds, CPU seconds of the
    child). The benches that time whole sightline processes share it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed with {os.waitstatus_to_exitcode(status)}")
    return dt, usage.ru_utime + usage.ru_stime


def time_score(binary, model_dir, req_file, dtype, batch, threads):
    out = score_bench.OUT / f"scores-{dtype}-{Path(binary).parent.name}.jsonl"
    cmd = [str(binary), "--threads", str(threads), "score", "--model", str(model_dir), "--requests",
           str(req_file), "--batch-size", str(batch), "--dtype", dtype, "--output", str(out),
           "--overwrite"]
    dt, cpu = run_timed(cmd)
    return dt, cpu, [json.loads(line)["logprob"] for line in out.read_text().splitlines()]


def time_step(binary, name, mode, steps, threads):
    if name == "smollm2":
        vocab, batch, seq = SMOLLM2_TRAIN
        model = smollm2.smollm2_dir()
    else:
        vocab, batch, seq = train_bench.CONFIGS[name][4:7]
        model = train_bench.model_dir(name)
    bf = train_bench.batch_file(name, batch, seq, vocab)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    res = train_bench.run_child([str(binary), "--model", str(model), "--batch-file", str(bf),
                                 "--mode", mode, "--steps", str(steps)], env)
    return res["tokens_per_s"], res["cpu_s"], res["losses"]


def alternate(rounds, run_old, run_new):
    """[(old, new)] per round, order old-new then new-old, ..."""
    out = []
    for r in range(rounds):
        if r % 2 == 0:
            o = run_old()
            n = run_new()
        else:
            n = run_new()
            o = run_old()
        out.append((o, n))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-sightline", required=True)
    ap.add_argument("--old-step-timing", required=True)
    ap.add_argument("--new-sightline", default=str(ROOT / "target/release/sightline"))
    ap.add_argument("--new-step-timing", default=str(ROOT / "target/release/examples/step_timing"))
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--train", default=None,
                    help="cases NAME:MODE (default small:full,small:lora,20m:lora; with --model smollm2 "
                         "smollm2:full,smollm2:lora)")
    ap.add_argument("--model", default="random", choices=["random", "smollm2"])
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    score_bench.OUT.mkdir(parents=True, exist_ok=True)
    if a.model == "smollm2":
        model_dir = smollm2.smollm2_dir()
        model_name = "SmolLM2-135M-Instruct (real weights)"
    else:
        model_dir = score_bench.OUT / "llama-134m"
        score_bench.build_model(model_dir)
        model_name = "random LLaMA 134M"
    if a.train is None:
        a.train = "smollm2:full,smollm2:lora" if a.model == "smollm2" else "small:full,small:lora,20m:lora"
    reqs = score_bench.requests(a.questions)
    req_file = score_bench.OUT / "truthfulqa_requests.jsonl"
    req_file.write_text("".join(json.dumps(dict(context=c, continuation=x)) + "\n" for c, x in reqs))
    print(f"uptime: {os.getloadavg()}", flush=True)
    print(f"scoring: {model_name}, {len(reqs)} TruthfulQA MC requests ({a.questions} questions), "
          f"batch {a.batch_size}, {a.threads} threads; whole process timed (load included)")
    for dtype in filter(None, a.dtypes.split(",")):
        rows = alternate(a.rounds,
                         lambda: time_score(a.old_sightline, model_dir, req_file, dtype, a.batch_size, a.threads),
                         lambda: time_score(a.new_sightline, model_dir, req_file, dtype, a.batch_size, a.threads))
        ratios, cpu_ratios = [], []
        for i, ((to, co, lo), (tn, cn, ln)) in enumerate(rows):
            diff = max(abs(x - y) for x, y in zip(lo, ln))
            ratios.append(to / tn)
            cpu_ratios.append(co / cn)
            print(f"  {dtype} round {i}: old {to:7.2f} s ({co:7.2f} CPU s)  new {tn:7.2f} s ({cn:7.2f} CPU s)  "
                  f"new/old speed {to / tn:5.2f} (CPU {co / cn:5.2f})  max |Δ logprob| {diff:.2e}", flush=True)
        print(f"  {dtype}: median new/old speed {statistics.median(ratios):.2f}, "
              f"by CPU seconds {statistics.median(cpu_ratios):.2f}", flush=True)
    print(f"training step: step_timing, {a.steps} timed steps after one warm-up, RAYON_NUM_THREADS={a.threads}")
    for case in filter(None, a.train.split(",")):
        name, mode = case.split(":")
        rows = alternate(a.rounds,
                         lambda: time_step(a.old_step_timing, name, mode, a.steps, a.threads),
                         lambda: time_step(a.new_step_timing, name, mode, a.steps, a.threads))
        ratios, cpu_ratios = [], []
        for i, ((to, co, lo), (tn, cn, ln)) in enumerate(rows):
            ratios.append(tn / to)
            cpu_ratios.append(co / cn)
            print(f"  {name} {mode} round {i}: old {to:7.0f} tok/s ({co:6.1f} CPU s)  new {tn:7.0f} tok/s "
                  f"({cn:6.1f} CPU s)  new/old {tn / to:5.2f} (CPU {co / cn:5.2f})  "
                  f"first loss old {lo[0]:.6f} new {ln[0]:.6f}", flush=True)
        print(f"  {name} {mode}: median new/old speed {statistics.median(ratios):.2f}, "
              f"by CPU seconds of the whole process {statistics.median(cpu_ratios):.2f}", flush=True)
    print(f"uptime: {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
