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

With `--torch-python PY` (an interpreter with torch and transformers, e.g. .venv-ref/bin/python)
the same 100 steps also run in PyTorch, eager f32 and `torch.autocast("cpu", torch.bfloat16)`
with f32 AdamW (what HF Trainer's `bf16=True` does), on the very batches sightline trained on:
each record's ids and labels as `sightline data preview --tokens` prints them, in the epoch
order of sightline's `data_order.json`, right-padded per batch; torch AdamW, HF's cosine
schedule with warmup, no clipping (the config's max_grad_norm = 0). It prints how far PyTorch's
own bf16 curve is from its f32 curve, beside sightline's, and sightline's f32 against PyTorch's.
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


def records(binary, model):
    """(ids, labels) of every record of the run's data file, as sightline trains on them."""
    data = ROOT / "data/training/sketch/sketch_instruct_text.json"
    n = len(json.loads(data.read_text()))
    p = subprocess.run([str(binary), "data", "preview", str(data), "--tokenizer", str(model), "--template", "v1",
                        "--tokens", "--color", "never", "--count", str(n)], capture_output=True, text=True, check=True)
    out, cur = [], None
    for line in p.stdout.splitlines():
        if line.startswith("\u2500\u2500 "):
            cur = ([], [])
            out.append(cur)
            continue
        f = line.split()
        # `pos id "token" label`, the label -100 or `trained` (the id itself, unshifted)
        if cur is not None and len(f) >= 4 and f[0].isdigit() and f[1].isdigit() and f[-1] in ("-100", "trained"):
            cur[0].append(int(f[1]))
            cur[1].append(int(f[1]) if f[-1] == "trained" else -100)
    if len(out) != n:
        sys.exit(f"data preview showed {len(out)} records, expected {n}")
    return out


def torch_worker(spec_path):
    """Runs in the torch interpreter: the spec's batches for the spec's steps, f32 and autocast."""
    import math
    import torch
    from transformers import LlamaForCausalLM, get_cosine_schedule_with_warmup
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    curves = {}
    for mode in ["f32", "autocast"]:
        torch.manual_seed(0)
        model = LlamaForCausalLM.from_pretrained(spec["model"], torch_dtype=torch.float32)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        steps = spec["steps"]
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(0.03 * steps), steps)
        losses = []
        for ids, labels in spec["batches"][:steps]:
            ids, labels = torch.tensor(ids), torch.tensor(labels)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "autocast")):
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves[mode] = losses
    print(json.dumps(curves))


def torch_curves(py, binary, model, steps, threads, lr):
    """PyTorch's f32 and autocast curves on the batches of sightline's f32 run."""
    order = json.loads((OUT / "f32" / "data_order.json").read_text())["epochs"]
    recs = records(binary, model)
    batch, batches = 4, []
    for epoch in order:
        for i in range(0, len(epoch), batch):
            rows = [recs[j] for j in epoch[i:i + batch]]
            t = max(len(r[0]) for r in rows)
            pad = 0  # v1 pads with the unknown token (id 0); labels -100 there, right-padded
            batches.append(([r[0] + [pad] * (t - len(r[0])) for r in rows],
                            [r[1] + [-100] * (t - len(r[1])) for r in rows]))
    if len(batches) < steps:
        sys.exit(f"data_order.json covers {len(batches)} batches, the run {steps} steps")
    spec = OUT / "torch_spec.json"
    spec.write_text(json.dumps({"model": str(model), "steps": steps, "threads": threads, "lr": lr,
                                "batches": batches[:steps]}))
    p = subprocess.run([py, __file__, "--torch-worker", str(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"torch run failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def rel_stats(name, ref, got):
    rel = [abs(b - f) / abs(f) for f, b in zip(ref, got)]
    over = [i + 1 for i, r in enumerate(rel) if r > 0.01]
    print(f"{name}: max {max(rel):.2e} (step {rel.index(max(rel)) + 1}), mean {sum(rel) / len(rel):.2e}, "
          f"last {rel[-1]:.2e}; steps over 1%: {len(over)}{(' ' + str(over)) if over else ''}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--torch-worker":
        return torch_worker(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--binary", default=str(ROOT / "target/release/sightline"))
    ap.add_argument("--torch-python", help="an interpreter with torch + transformers: also run PyTorch")
    ap.add_argument("--reuse", action="store_true",
                    help="read sightline's two curves from the last run's bench/out logs instead of training again")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model = OUT / "stories260k"
    if not (model / "config.json").exists():
        subprocess.run([a.binary, "convert", "builtin", "stories260k", str(model)], check=True)
    if a.reuse:
        def logged(kind):
            rows = [json.loads(x) for x in (OUT / kind / "train_log.jsonl").read_text().splitlines() if x.strip()]
            return [r["loss"] for r in rows if "loss" in r]
        f32, bf16, cmd = logged("f32"), logged("bf16"), "(the last run's logs)"
    else:
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
    if a.torch_python:
        t = torch_curves(a.torch_python, a.binary, model, a.steps, a.threads, a.lr)
        print("relative difference per step:")
        rel_stats("  sightline f32 vs PyTorch f32 (same batches)", t["f32"], f32)
        rel_stats("  PyTorch autocast bf16 vs PyTorch f32      ", t["f32"], t["autocast"])
        rel_stats("  sightline bf16 vs sightline f32           ", f32, bf16)
        rel_stats("  sightline bf16 vs PyTorch autocast        ", t["autocast"], bf16)
        for s in [1, 10, 25, 50, 75, a.steps]:
            if s <= a.steps:
                print(f"  step {s:4d}: PyTorch f32 {t['f32'][s - 1]:.5f}  autocast {t['autocast'][s - 1]:.5f}")


if __name__ == "__main__":
    main()
