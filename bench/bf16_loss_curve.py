#!/usr/bin/env python3
"""bf16 mixed-precision training against f32 over 100 optimizer steps: the two loss curves of
the same run, step by step.

    cargo build --release
    python3 bench/bf16_loss_curve.py [--steps 100] [--binary target/release/sightline]

The run: configs/text-only.toml (the text-only baseline's template and data, 28 records of
data/training/sketch/sketch_instruct_text.json, cycled over epochs) on the real pretrained
stories260K (`sightline convert builtin stories260k`), full fine-tune, batch 4, no accumulation,
learning rate 1e-3 (`--lr`) with the config's cosine schedule and 3% warmup, so that the loss
moves (at the config's 2e-5 a 260K-parameter model barely changes in 100 steps and any two
curves would agree; at 1e-3 it memorises the 28 records, 4.5 -> 0.2). Both runs are identical except `bf16=true|false`; the script prints the relative
difference of the logged losses per step (max, mean, and at the last step) and the first and
last losses of each run. Needs only Python 3 (no packages); outputs go to bench/out/.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out/bf16-loss-curve"


def losses(binary, model, bf16, steps, threads, lr):
    out = OUT / ("bf16" if bf16 else "f32")
    cmd = [str(binary), "--threads", str(threads), "train", "--config", str(ROOT / "configs/text-only.toml"),
           f"model_name_or_path={model}", f"output_dir={out}", f"max_steps={steps}", f"learning_rate={lr}",
           "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "num_train_epochs=1000",
           f"bf16={'true' if bf16 else 'false'}", "save_steps=1000000"]
    if out.exists():
        shutil.rmtree(out)  # a run of this script's own, in bench/out
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"train failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-1500:]}")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r], " ".join(cmd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--binary", default=str(ROOT / "target/release/sightline"))
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model = OUT / "stories260k"
    if not (model / "config.json").exists():
        subprocess.run([a.binary, "convert", "builtin", "stories260k", str(model)], check=True)
    f32, cmd = losses(a.binary, model, False, a.steps, a.threads, a.lr)
    bf16, _ = losses(a.binary, model, True, a.steps, a.threads, a.lr)
    if len(f32) != a.steps or len(bf16) != a.steps:
        sys.exit(f"expected {a.steps} logged losses, got f32 {len(f32)}, bf16 {len(bf16)}")
    rel = [abs(b - f) / abs(f) for f, b in zip(f32, bf16)]
    print(f"run: {cmd.replace(str(ROOT) + '/', '')} (and bf16=true)")
    print(f"f32 loss: step 1 {f32[0]:.5f}, step {a.steps} {f32[-1]:.5f}")
    print(f"bf16 loss: step 1 {bf16[0]:.5f}, step {a.steps} {bf16[-1]:.5f}")
    print(f"|bf16 - f32| / f32 per step: max {max(rel):.2e} (step {rel.index(max(rel)) + 1}), "
          f"mean {sum(rel) / len(rel):.2e}, last {rel[-1]:.2e}")
    over = [i + 1 for i, r in enumerate(rel) if r > 0.01]
    print(f"within 1% at every step: {'yes' if not over else f'NO ({len(over)} steps over 1%: {over})'}")
    for s in [1, 10, 25, 50, 75, a.steps]:
        if s <= a.steps:
            print(f"  step {s:4d}: f32 {f32[s - 1]:.5f}  bf16 {bf16[s - 1]:.5f}  rel {rel[s - 1]:.2e}")


if __name__ == "__main__":
    main()
