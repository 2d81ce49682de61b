#!/usr/bin/env python3
"""The bf16 GEMM alone: sightline's kernel (crates/kernels/src/gemm_bf16) against PyTorch's bf16
matmul on the decoder's shapes, in GFLOP/s, with the CPU's measured ceiling (TDPBF16PS where the
kernel runs on AMX tiles, else VDPBF16PS).

    cargo build --release -p sightline-kernels --example gemm_bf16_timing
    .venv-ref/bin/python bench/gemm_bf16_vs_torch.py [--threads 2]

`y = x · Wᵀ` with x `[n, k]` and W `[m, k]` in bf16, y in bf16, as a linear layer computes it.
Shapes: SmolLM2-135M's projections at a scoring batch of 8 × 200 tokens (n = 1600) and at one
decoding row, and LLaMA-2-7B's at 256 rows and one row. Each figure is the best of 5 timed
repeats of ~0.3 s (the example; for torch the same loop here). The example also prints candle's
f32 and bf16 matmuls on the same shapes (candle's bf16 widens both operands to f32 per call).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = [
    # SmolLM2-135M: q/o (576x576), k/v (192x576), gate/up (1536x576), down (576x1536), lm_head
    (1600, 576, 576), (1600, 576, 192), (1600, 576, 1536), (1600, 1536, 576), (256, 576, 49152),
    (1, 576, 1536), (1, 1536, 576),
    # TinyLlama-1.1B at a scoring batch of 8 TruthfulQA sequences (~3,600 rows): q/o (2048x2048),
    # k/v (256x2048), gate/up (5632x2048), down (2048x5632)
    (3600, 2048, 2048), (3600, 2048, 256), (3600, 2048, 5632), (3600, 5632, 2048),
    # LLaMA-2-7B: q/k/v/o (4096x4096), gate/up (11008x4096), down (4096x11008)
    (256, 4096, 4096), (256, 4096, 11008), (256, 11008, 4096), (1, 4096, 11008),
]


def torch_gflops(n, k, m):
    import torch
    x = torch.randn(n, k).to(torch.bfloat16)
    w = torch.randn(m, k).to(torch.bfloat16)
    flops = 2.0 * n * k * m
    with torch.no_grad():
        torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(5):
            t0, reps = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.3:
                torch.nn.functional.linear(x, w)
                reps += 1
            best = min(best, (time.perf_counter() - t0) / reps)
    return flops / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--binary", default=str(ROOT / "target/release/examples/gemm_bf16_timing"))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    env = {"RAYON_NUM_THREADS": str(a.threads), "PATH": "/usr/bin:/bin"}
    if os.environ.get("SIGHTLINE_AMX"):
        env["SIGHTLINE_AMX"] = os.environ["SIGHTLINE_AMX"]
    p = subprocess.run([a.binary, *[f"{n},{k},{m}" for n, k, m in SHAPES]], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{a.binary} failed: {p.stderr.strip()[-800:]}")
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    head = next((l for l in lines if "vdpbf16ps_peak_per_core" in l), {})
    tiles = next((l["tdpbf16ps_peak_per_core"] for l in lines if "tdpbf16ps_peak_per_core" in l), None)
    name, peak = ("TDPBF16PS", tiles) if tiles else ("VDPBF16PS", head.get("vdpbf16ps_peak_per_core"))
    rows = [l for l in lines if "shape" in l]
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {a.threads} threads; "
          f"sightline kernel {head.get('kernel', '?')}; "
          f"{name} ceiling {peak * a.threads:.0f} GFLOP/s ({peak:.0f} per core, measured)" if peak else "")
    print(f"{'n x k x m':>20} {'sightline':>10} {'torch':>8} {'ratio':>6} {'% ceiling':>9} "
          f"{'candle f32':>10} {'candle bf16':>11}")
    for r in rows:
        n, k, m = r["shape"]
        t = torch_gflops(n, k, m)
        ours = r["sightline_bf16"]
        ceil = f"{100 * ours / (peak * a.threads):8.0f}%" if peak else "-"
        print(f"{f'{n} x {k} x {m}':>20} {ours:10.1f} {t:8.1f} {ours / t:6.2f} {ceil:>9} "
              f"{r['candle_f32']:10.1f} {r['candle_bf16']:11.1f}")


if __name__ == "__main__":
    sys.exit(main())
