#!/usr/bin/env python3
"""CPU-vs-device parity of one sightline binary on the repository's parity fixtures, for
scripts/gpu/check.sh (standard library only: it runs in whatever Python the GPU machine has).

    python3 scripts/gpu/parity.py --bin SIGHTLINE --device cuda --work DIR --json FILE [--what score,generate,train]

What it compares (the same binary, `--device cpu` against `--device DEVICE`):
- score: `sightline score` log-likelihoods of each fixture's requests.jsonl (tests/fixtures/llama/*,
  and tiny-gqa-untied with the LoRA adapter tests/fixtures/lora/tiny-gqa-untied-lora-r4), in f32
  and bf16. The CLI prints log-likelihoods, not logits: a logit error e moves a token's
  log-probability by at most 2e, so f32 passes at max |Δ| / max(1, |ll|) <= 1e-4 (the repository's
  scoring tolerance). bf16 is reported, not judged: its spread (max and median |Δ|) against the CPU
  in bf16 and against the CPU in f32. The device's f32 is also compared with the transformers
  4.46.3 log-likelihoods in each fixture's golden.json.
- generate: greedy tokens of "Once upon a time" (24 new tokens, f32) must be identical.
- train: `sightline train` (text-only full and LoRA, 3 steps, tests/fixtures/train/base) in f32
  and bf16: each step's loss, f32 within 1e-4 relative, bf16 reported.

With --device cpu both sides are the CPU (check.sh's plumbing mode): every difference must be 0.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LLAMA = ["tiny-gqa-untied", "tiny-mha-tied", "tiny-llama3-bin"]
LORA = ("tiny-gqa-untied", "tiny-gqa-untied-lora-r4")
F32_TOL = 1e-4


def sh(cmd, log):
    """Runs `cmd`, its output appended to `log`; raises with the command's last line on failure."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        p = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.PIPE, text=True)
        f.write(p.stderr)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed ({p.returncode}): {last}")


def score(a, model, device, dtype, adapter=None):
    tag = f"{model}{'+lora' if adapter else ''}-{device}-{dtype}"
    out = a.work / f"score-{tag}.jsonl"
    cmd = [a.bin, "score", "--model", ROOT / "tests/fixtures/llama" / model, "--requests",
           ROOT / "tests/fixtures/llama" / model / "requests.jsonl", "--device", device,
           "--dtype", dtype, "--output", out, "--overwrite"]
    if adapter:
        cmd += ["--adapter", ROOT / "tests/fixtures/lora" / adapter]
    sh(cmd, a.log)
    return [json.loads(line)["logprob"] for line in out.read_text().splitlines()]


def spread(x, y):
    d = [abs(p - q) for p, q in zip(x, y)]
    rel = [abs(p - q) / max(1.0, abs(q)) for p, q in zip(x, y)]
    return {"max_abs": max(d), "median_abs": statistics.median(d), "max_rel": max(rel)}


def check_score(a):
    rows = []
    cases = [(m, None) for m in LLAMA] + [LORA]
    for model, adapter in cases:
        name = model + (f" + {adapter}" if adapter else "")
        got = {(dev, dt): score(a, model, dev, dt, adapter)
               for dev in ["cpu", a.device] for dt in ["f32", "bf16"]}
        f32 = spread(got[(a.device, "f32")], got[("cpu", "f32")])
        row = {"case": name, "requests": len(got[("cpu", "f32")]), "f32": f32,
               "f32_pass": f32["max_rel"] <= F32_TOL,
               "bf16_vs_cpu_bf16": spread(got[(a.device, "bf16")], got[("cpu", "bf16")]),
               "bf16_vs_cpu_f32": spread(got[(a.device, "bf16")], got[("cpu", "f32")])}
        if not adapter:
            golden = json.loads((ROOT / "tests/fixtures/llama" / model / "golden.json").read_text())
            row["f32_vs_transformers"] = spread(got[(a.device, "f32")],
                                                [r["logprob"] for r in golden["results"]])
        rows.append(row)
        print(f"score {name}: f32 max rel |Δ| {f32['max_rel']:.2e} ({'PASS' if row['f32_pass'] else 'FAIL'}), "
              f"bf16 vs cpu bf16 max |Δ| {row['bf16_vs_cpu_bf16']['max_abs']:.3e} "
              f"(median {row['bf16_vs_cpu_bf16']['median_abs']:.3e}), bf16 vs cpu f32 max |Δ| "
              f"{row['bf16_vs_cpu_f32']['max_abs']:.3e}", flush=True)
    return rows


def check_generate(a):
    rows = []
    for model in LLAMA:
        toks = {}
        for dev in ["cpu", a.device]:
            out = a.work / f"generate-{model}-{dev}.txt"
            cmd = [a.bin, "generate", "--model", ROOT / "tests/fixtures/llama" / model, "--prompt",
                   "Once upon a time", "--max-new-tokens", "24", "--device", dev]
            with open(out, "w") as f:
                p = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.PIPE, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"generate {model} on {dev}: {p.stderr.strip()[-300:]}")
            toks[dev] = out.read_text()
        same = toks["cpu"] == toks[a.device]
        rows.append({"case": model, "identical": same})
        print(f"generate {model}: greedy text {'identical' if same else 'DIFFERS'} on cpu and {a.device}",
              flush=True)
    return rows


def train_losses(a, mode, device, dtype):
    out = a.work / f"train-{mode}-{device}-{dtype}"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    over = [f"model_name_or_path={json.dumps(str(ROOT / 'tests/fixtures/train/base'))}",
            f"data_path={json.dumps(str(ROOT / 'data/training/sketch/sketch_instruct_text.json'))}",
            f"output_dir={json.dumps(str(out))}", "max_steps=3", "learning_rate=1e-3",
            f"bf16={'true' if dtype == 'bf16' else 'false'}"]
    if mode == "lora":
        over += ["lora_enable=true", "lora_r=4", "lora_dropout=0.0", "learning_rate=1e-2"]
    sh([a.bin, "train", "--config", ROOT / "configs/text-only.toml", "--device", device, *over], a.log)
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def check_train(a):
    rows = []
    for mode in ["full", "lora"]:
        for dt in ["f32", "bf16"]:
            cpu, dev = train_losses(a, mode, "cpu", dt), train_losses(a, mode, a.device, dt)
            rel = max(abs(x - y) / abs(y) for x, y in zip(dev, cpu))
            row = {"case": f"train {mode} {dt}", "cpu": cpu, "device": dev, "max_rel": rel}
            if dt == "f32":
                row["pass"] = rel <= F32_TOL
            rows.append(row)
            verdict = ("PASS" if row["pass"] else "FAIL") if dt == "f32" else "reported"
            print(f"train {mode} {dt}: losses {['%.6f' % x for x in dev]} on {a.device}, max rel |Δ| vs cpu "
                  f"{rel:.2e} ({verdict})", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="the sightline binary (or the CUDA launcher)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--what", default="score,generate,train")
    a = ap.parse_args()
    a.work = Path(a.work).resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    a.log = a.work / "commands.log"
    checks = {"score": check_score, "generate": check_generate, "train": check_train}
    res, failed = {"device": a.device}, []
    for what in a.what.split(","):
        t0 = time.perf_counter()
        try:
            res[what] = checks[what](a)
        except Exception as e:  # one check failing must not hide the others
            res[what] = {"error": str(e)}
            failed.append(what)
            print(f"{what}: ERROR {e}", flush=True)
        res[what + "_seconds"] = time.perf_counter() - t0
    Path(a.json).write_text(json.dumps(res, indent=1))
    bad = [r["case"] for k in ("score", "train") if isinstance(res.get(k), list)
           for r in res[k] if r.get("f32_pass", r.get("pass", True)) is False]
    bad += [r["case"] for r in res.get("generate", []) if isinstance(r, dict) and not r.get("identical", True)]
    if failed or bad:
        print(f"parity: errors in {failed or 'none'}, f32 mismatches in {bad or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
