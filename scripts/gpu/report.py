#!/usr/bin/env python3
"""The report of scripts/gpu/check.sh: OUT/report.md and OUT/report.json from the stage table
(OUT/stages.tsv) and what each stage wrote (parity.json, eval.json, train.json). Standard
library only. `--environment` prints the Python side of the machine instead (the setup log).

    python3 scripts/gpu/report.py OUT
    python3 scripts/gpu/report.py --environment
"""
import importlib
import json
import sys
from pathlib import Path

MODULES = ["torch", "transformers", "peft", "lm_eval", "datasets", "pyarrow", "pandas", "sklearn",
           "scipy", "evaluate", "sacrebleu", "rouge_score"]


def environment():
    print("python", sys.version.split()[0])
    for m in MODULES:
        try:
            print(m, getattr(importlib.import_module(m), "__version__", "?"))
        except Exception as e:  # report every missing module, not only the first
            print(m, "MISSING", type(e).__name__, e)
    try:
        import torch
        ok = torch.cuda.is_available()
        print("torch cuda available", ok, torch.cuda.get_device_name(0) if ok else "")
    except Exception as e:
        print("torch", "MISSING", e)


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def parity_lines(p):
    if not p:
        return ["No parity results (see logs/parity.log)."]
    dev = p.get("device")
    note = " (DEVICE=cpu: both sides are the CPU, a check of the plumbing: every Δ must be 0)" \
        if dev == "cpu" else ""
    lines = [f"Each row: the same binary with `--device cpu` and `--device {dev}`{note}.", "",
             "| score case | requests | f32 max rel \\|Δll\\| | f32 ≤ 1e-4 | bf16 vs CPU bf16 max / median \\|Δll\\| "
             "| bf16 vs CPU f32 max \\|Δll\\| | device f32 vs transformers max rel |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    score = p.get("score")
    if isinstance(score, list):
        for r in score:
            b = r["bf16_vs_cpu_bf16"]
            tr = r.get("f32_vs_transformers", {}).get("max_rel")
            lines.append(f"| {r['case']} | {r['requests']} | {fmt(r['f32']['max_rel'], '.2e')} | "
                         f"{'pass' if r['f32_pass'] else 'FAIL'} | {fmt(b['max_abs'], '.2e')} / "
                         f"{fmt(b['median_abs'], '.2e')} | {fmt(r['bf16_vs_cpu_f32']['max_abs'], '.2e')} | "
                         f"{fmt(tr, '.2e')} |")
    else:
        lines.append(f"| score | error: {score.get('error') if score else 'not run'} | | | | | |")
    gen = p.get("generate")
    if isinstance(gen, list):
        same = [r["case"] for r in gen if r["identical"]]
        lines += ["", f"Greedy generation (f32, 24 tokens): identical for {len(same)} of {len(gen)} "
                      f"fixtures ({', '.join(same) or 'none'})."]
    train = p.get("train")
    if isinstance(train, list):
        lines += ["", "| training (3 steps, fixture model) | losses on the device | max rel \\|Δ\\| vs CPU | verdict |",
                  "| --- | --- | --- | --- |"]
        for r in train:
            verdict = ("pass" if r["pass"] else "FAIL") if "pass" in r else "reported (bf16)"
            losses = ", ".join(f"{x:.5f}" for x in r["device"])
            lines.append(f"| {r['case']} | {losses} | {fmt(r['max_rel'], '.2e')} | {verdict} |")
    elif train:
        lines.append(f"\nTraining parity: error: {train.get('error')}")
    return lines


def eval_lines(e):
    if not e:
        return ["No evaluation results (see logs/eval.log)."]
    return [f"Random LLaMA `{e['shape']}`, {e['dtype']} on {e['device']}, {e['questions']} TruthfulQA "
            f"questions (MC1 + MC2), {e['tokens']} input tokens.", "",
            "| system | seconds | tokens/s | mc1 | mc2 |", "| --- | --- | --- | --- | --- |",
            f"| lm-eval + transformers | {e['lm_eval']['seconds']:.2f} | {e['lm_eval']['tokens_per_s']:.0f} | "
            f"{e['lm_eval']['truthfulqa_mc1']:.4f} | {e['lm_eval']['truthfulqa_mc2']:.4f} |",
            f"| sightline | {e['sightline']['seconds']:.2f} | {e['sightline']['tokens_per_s']:.0f} | "
            f"{e['sightline']['truthfulqa_mc1']:.4f} | {e['sightline']['truthfulqa_mc2']:.4f} |", "",
            f"sightline / lm-eval tokens/s: **{e['speed_ratio']:.2f}×** (wall time of each whole run; "
            f"|Δ mc1| {e['abs_diff']['mc1']:.2e}, |Δ mc2| {e['abs_diff']['mc2']:.2e})."]


def transformers_lines(e):
    s = e["sightline"]["sightline (shared prefix)"]
    return [f"lm_eval did not import, so the same TruthfulQA requests ({e['requests']}, {e['tokens']} input "
            f"tokens; random LLaMA `{e['shape']}`, {e['dtype']} on {e['device']}) were scored by "
            f"{e['reference']} instead.", "",
            "| system | seconds | tokens/s | max rel \\|Δll\\| |", "| --- | --- | --- | --- |",
            f"| {e['reference']} (model load excluded) | {e['reference_seconds']:.2f} | "
            f"{e['reference_tokens_per_s']:.0f} | - |"] + [
            f"| {k} (model load excluded; whole process {v.get('process_seconds', float('nan')):.2f} s) | "
            f"{v['seconds']:.2f} | {v['tokens_per_s']:.0f} | {v['max_rel_diff']:.2e} |"
            for k, v in e["sightline"].items()] + [
            "", f"sightline / transformers tokens/s: **{e['speed_ratio']:.2f}×** "
                f"(shared prefix {s['tokens_per_s']:.0f} tokens/s)."]


def train_lines(t):
    if not t:
        return ["No training results (see logs/train.log)."]
    lines = ["| mode | system | s/step | tokens/s | peak GPU MiB | peak RSS MiB | MFU | first loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in t:
        for side in ("pytorch", "sightline"):
            s = r[side]
            lines.append(f"| {r['mode']} ({r['config']}, {'bf16' if r['bf16'] else 'f32'}, {r['device']}) | "
                         f"{side} | {s['secs_per_step']:.3f} | {s['tokens_per_s']:.0f} | "
                         f"{fmt(s.get('gpu_peak_mib'), '.0f')} | {s['maxrss_mib']:.0f} | "
                         f"{100 * s['mfu']:.2f}% | {fmt(s['losses'][0], '.4f')} |")
    lines.append("")
    for r in t:
        lines.append(f"- {r['mode']}: sightline / PyTorch tokens/s **{r['speed_ratio']:.2f}×**, peak memory "
                     f"{fmt(r.get('memory_ratio'), '.2f')}× (MFU against {r['peak_tflops']:.0f} TFLOP/s, "
                     f"{r['flops_per_token'] / 1e9:.3g} GFLOP per token)")
    return lines


def main(out):
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()[1:]]
    p, e, t = load(out / "parity.json"), load(out / "eval.json"), load(out / "train.json")
    et = load(out / "eval-transformers.json")
    md = ["# scripts/gpu/check.sh report", "",
          "| stage | status | exit | seconds | limit |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {' | '.join(s)} |" for s in stages]
    md += ["", "Logs of every stage: `logs/<stage>.log` (the machine and its Python: "
               "`logs/environment.log`).", "",
           "## CPU vs device parity", ""] + parity_lines(p)
    md += ["", "## TruthfulQA MC1 + MC2: sightline vs lm-eval + transformers", ""]
    md += transformers_lines(et) if et and not e else eval_lines(e)
    md += ["", "## Training step: sightline vs PyTorch + peft", ""] + train_lines(t)
    (out / "report.md").write_text("\n".join(md) + "\n")
    summary = {"stages": [dict(zip(["stage", "status", "rc", "seconds", "limit"], s)) for s in stages],
               "parity": p, "eval": e, "eval_transformers": et, "train": t}
    (out / "report.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if sys.argv[1:] == ["--environment"]:
        environment()
    elif len(sys.argv) == 2:
        main(Path(sys.argv[1]))
    else:
        sys.exit(__doc__)
