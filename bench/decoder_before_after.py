#!/usr/bin/env python3
"""Before/after for a change to the decoder: two sightline builds, alternated in one run, on the
scoring workload of `score_vs_transformers.py` (f32 and bf16) and the training step of
`train_step_vs_torch.py`. Prints tokens/s of each build per round and the median ratio new/old.

    cargo build --release -p sightline && cargo build --release -p sightline-train --example step_timing
    .venv-ref/bin/python bench/decoder_before_after.py \
        --old-sightline OLD/sightline --old-step-timing OLD/step_timing [--rounds 3]

The new binaries default to target/release/{sightline,examples/step_timing}. Old and new run
back to back, alternating (old, new, new, old, ...), so that load from other jobs on a shared
machine falls on both; the ratio, not the absolute figure, is the result. The Python venv is only
needed to build the random models and batch files once (bench/out/); no PyTorch timing runs.
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
import train_step_vs_torch as train_bench  # noqa: E402


def time_score(binary, model_dir, req_file, dtype, batch, threads):
    out = score_bench.OUT / f"scores-{dtype}-{Path(binary).parent.name}.jsonl"
    cmd = [str(binary), "--threads", str(threads), "score", "--model", str(model_dir), "--requests",
           str(req_file), "--batch-size", str(batch), "--dtype", dtype, "--output", str(out),
           "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    return dt, [json.loads(line)["logprob"] for line in out.read_text().splitlines()]


def time_step(binary, name, mode, steps, threads):
    _, _, _, _, vocab, batch, seq = train_bench.CONFIGS[name]
    model = train_bench.model_dir(name)
    bf = train_bench.batch_file(name, batch, seq, vocab)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    res = train_bench.run_child([str(binary), "--model", str(model), "--batch-file", str(bf),
                                 "--mode", mode, "--steps", str(steps)], env)
    return res["tokens_per_s"], res["losses"]


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
    ap.add_argument("--train", default="small:full,small:lora,20m:lora")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    score_bench.OUT.mkdir(parents=True, exist_ok=True)
    model_dir = score_bench.OUT / "llama-134m"
    score_bench.build_model(model_dir)
    reqs = score_bench.requests(a.questions)
    req_file = score_bench.OUT / "truthfulqa_requests.jsonl"
    req_file.write_text("".join(json.dumps(dict(context=c, continuation=x)) + "\n" for c, x in reqs))
    print(f"uptime: {os.getloadavg()}", flush=True)
    print(f"scoring: random LLaMA 134M, {len(reqs)} TruthfulQA MC requests ({a.questions} questions), "
          f"batch {a.batch_size}, {a.threads} threads; whole process timed (load included)")
    for dtype in filter(None, a.dtypes.split(",")):
        rows = alternate(a.rounds,
                         lambda: time_score(a.old_sightline, model_dir, req_file, dtype, a.batch_size, a.threads),
                         lambda: time_score(a.new_sightline, model_dir, req_file, dtype, a.batch_size, a.threads))
        ratios = []
        for i, ((to, lo), (tn, ln)) in enumerate(rows):
            diff = max(abs(x - y) for x, y in zip(lo, ln))
            ratios.append(to / tn)
            print(f"  {dtype} round {i}: old {to:7.2f} s  new {tn:7.2f} s  new/old speed {to / tn:5.2f}  "
                  f"max |Δ logprob| {diff:.2e}", flush=True)
        print(f"  {dtype}: median new/old speed {statistics.median(ratios):.2f}", flush=True)
    print(f"training step: step_timing, {a.steps} timed steps after one warm-up, RAYON_NUM_THREADS={a.threads}")
    for case in filter(None, a.train.split(",")):
        name, mode = case.split(":")
        rows = alternate(a.rounds,
                         lambda: time_step(a.old_step_timing, name, mode, a.steps, a.threads),
                         lambda: time_step(a.new_step_timing, name, mode, a.steps, a.threads))
        ratios = []
        for i, ((to, lo), (tn, ln)) in enumerate(rows):
            ratios.append(tn / to)
            print(f"  {name} {mode} round {i}: old {to:7.0f} tok/s  new {tn:7.0f} tok/s  new/old {tn / to:5.2f}  "
                  f"first loss old {lo[0]:.6f} new {ln[0]:.6f}", flush=True)
        print(f"  {name} {mode}: median new/old speed {statistics.median(ratios):.2f}", flush=True)
    print(f"uptime: {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
