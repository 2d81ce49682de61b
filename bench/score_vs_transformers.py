#!/usr/bin/env python3
"""Scoring throughput: sightline vs lm-evaluation-harness (transformers) on the same model and
the same requests, in one run. Prints tokens/s of each and the ratio.

    cargo build --release
    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
    .venv-ref/bin/python bench/score_vs_transformers.py [--questions 24] [--batch-size 8] [--threads 2]

Model: a random 134M-parameter LLaMA (hidden 768, 12 layers, 12 heads, SwiGLU 2048, vocab 32000,
untied, f32), built once under bench/out/. Requests: TruthfulQA MC1+MC2 (v0) for the first N
questions, exactly as lm-eval builds them (QA preamble, " " + answer), tokenized with the
tok512 tokenizer of the fixtures. The reference is lm_eval 0.4.9.1 HFLM(add_bos_token=False)
.loglikelihood, timed without model loading; sightline likewise by the scoring time its
`score` command reports on stderr ("scored N requests in X s (model loaded in Y s)"), once with
its shared-prefix KV cache (default) and once without. The ratio compares those two scoring
times; the `process s` column adds sightline's whole process (start, model loading, writing)
for reference. (Until 2026-12-07 the ratio used sightline's whole process, loading included,
against HFLM's scoring alone: 8.5 of 35 s for the f32 TinyLlama-1.1B-shaped checkpoint.)

`--shape smollm2`: the real pretrained SmolLM2-135M-Instruct (bench/smollm2.py) and its own
tokenizer instead of a random LLaMA. With `--dtype bf16` the run also scores the requests with
plain transformers in **f32** (untimed) and reports each bf16 system's log-likelihood error
against it (max, median and mean relative |Δll|): sightline's bf16 must be no worse than
transformers' own bf16.

`--repeat N` runs N rounds (the reference, then sightline's two runs) in turn and reports
median seconds, with the range of the rounds' own ratios: on the shared 2-core machines one
system's time can move by 15–25% between back-to-back runs of the same work.

`--reference transformers` replaces HFLM by plain transformers with HFLM's rules (context +
continuation encoded whole and split at the context's token count, no BOS, left truncation to
max_length + 1, length-sorted batches, log-softmax in f32): for a Python without lm_eval
(scripts/gpu/check.sh falls back to it when lm_eval does not import). `--device cuda --dtype
bf16 --shape tinyllama-1.1b --binary PATH --work DIR --json FILE` as in eval_vs_lm_eval.py.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out"
QA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


# Random LLaMAs by name: (hidden, intermediate, layers, heads, kv heads, vocab).
SHAPES = {
    "134m": (768, 2048, 12, 12, 12, 32000),
    # TinyLlama-1.1B's shape (scripts/gpu/check.sh), rms_norm_eps 1e-5 as its config.json
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
    # plumbing checks on a CPU (check.sh's DEVICE=cpu mode)
    "tiny": (64, 172, 2, 4, 2, 512),
}


def dtype_kwarg(dtype):
    """`from_pretrained`'s dtype argument: `dtype=` from transformers 4.56 on (the GPU machine's
    5.x), `torch_dtype=` before (the reference venv's 4.46.3)."""
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def build_model(path, shape="134m"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if (path / "model.safetensors").exists():
        return
    hs, inter, layers, heads, kv, vocab = SHAPES[shape]
    cfg = LlamaConfig(hidden_size=hs, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=2048,
                      rms_norm_eps=1e-5 if shape == "tinyllama-1.1b" else 1e-6,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    tok = ROOT / "tests/fixtures/llama/tiny-mha-tied"
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok / f, path / f)


def requests(n):
    docs = json.loads((ROOT / "data/truthfulqa/v0/mc_task.json").read_text())[:n]
    reqs = []
    for d in docs:
        ctx = QA_PROMPT + "\n\nQ: " + d["question"] + "\nA:"
        for key in ["mc1_targets", "mc2_targets"]:
            reqs += [(ctx, " " + c) for c in d[key]]
    return reqs


def hflm_reference(model_dir, reqs, a, torch_dtype):
    """lm_eval 0.4.9.1 HFLM(add_bos_token=False).loglikelihood: (tokens, seconds, [(ll, greedy)])."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    lm = HFLM(pretrained=str(model_dir), backend="causal", device=a.device, dtype=torch_dtype,
              batch_size=a.batch_size, add_bos_token=False, prefix_token_id=2)
    tokens = 0
    for c, x in reqs:
        ce, xe = lm._encode_pair(c, x)
        tokens += min(len(ce) + len(xe), lm.max_length + 1) - 1
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
    t0 = time.perf_counter()
    ref = lm.loglikelihood(insts, disable_tqdm=True)
    return tokens, time.perf_counter() - t0, ref


def transformers_reference(model_dir, reqs, a, torch_dtype):
    """HFLM's loglikelihood rules in plain transformers (no lm_eval): the same tuple."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **dtype_kwarg(getattr(torch, torch_dtype)))
    model = model.to(a.device).eval()
    max_length = model.config.max_position_embeddings
    enc = []
    for c, x in reqs:
        whole = tok(c + x, add_special_tokens=False)["input_ids"]
        n_ctx = len(tok(c, add_special_tokens=False)["input_ids"])
        ids = whole[-(max_length + 1):]
        enc.append((ids, min(len(whole) - n_ctx, len(ids) - 1)))
    tokens = sum(len(ids) - 1 for ids, _ in enc)
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))
    out = [None] * len(enc)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(order), a.batch_size):
            idx = order[b:b + a.batch_size]
            width = max(len(enc[i][0]) - 1 for i in idx)
            inp = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids = enc[i][0][:-1]
                inp[r, :len(ids)] = torch.tensor(ids)
            logp = torch.log_softmax(model(inp.to(a.device)).logits.float(), dim=-1).cpu()
            for r, i in enumerate(idx):
                ids, n = enc[i]
                rows = logp[r, len(ids) - 1 - n:len(ids) - 1]
                tgt = torch.tensor(ids[len(ids) - n:])
                ll = rows.gather(1, tgt[:, None]).sum().item()
                out[i] = (ll, bool((rows.argmax(-1) == tgt).all()))
    sync()
    return tokens, time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", default="lm_eval", choices=["lm_eval", "transformers"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--shape", default="134m", choices=sorted(SHAPES) + ["smollm2"])
    ap.add_argument("--binary", default=str(ROOT / "target/release/sightline"))
    ap.add_argument("--work", help="models, requests and outputs (default bench/out)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of (reference, sightline shared prefix, sightline plain), run in turn; "
                         "reports median seconds and the range of the rounds' ratios (this machine's "
                         "run-to-run spread is up to ±15%% on the TinyLlama shape)")
    a = ap.parse_args()
    global OUT
    if a.work:
        OUT = Path(a.work).resolve()
    OUT.mkdir(parents=True, exist_ok=True)

    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers
    torch.set_num_threads(a.threads)

    if a.shape == "smollm2":
        sys.path.insert(0, str(ROOT / "bench"))
        import smollm2
        model_dir = Path(smollm2.smollm2_dir())
    else:
        model_dir = OUT / f"llama-{a.shape}"
        build_model(model_dir, a.shape)
    reqs = requests(a.questions)
    req_file = OUT / "truthfulqa_requests.jsonl"
    req_file.write_text("".join(json.dumps(dict(context=c, continuation=x)) + "\n" for c, x in reqs))

    torch_dtype = {"f32": "float32", "bf16": "bfloat16"}[a.dtype]
    reference = hflm_reference if a.reference == "lm_eval" else transformers_reference
    tokens, t_ref, ref = reference(model_dir, reqs, a, torch_dtype)
    ref_times = [t_ref]
    if a.reference == "lm_eval":
        import lm_eval
        ref_name = f"lm_eval {lm_eval.__version__} HFLM"
    else:
        ref_name = "transformers (HFLM's rules)"

    # bf16 precision: every bf16 system against transformers in f32 on the same weights.
    f32_ref = None
    if a.dtype == "bf16":
        f32_ref = [r[0] for r in transformers_reference(model_dir, reqs, a, "float32")[2]]

    def rel_errors(lls):
        errs = sorted(abs(g - r) / max(1.0, abs(r)) for g, r in zip(lls, f32_ref))
        return errs[-1], errs[len(errs) // 2], sum(errs) / len(errs)

    binary = Path(a.binary)
    runs = {}
    times = {}  # label -> seconds per round
    for round_ in range(a.repeat):
        if round_ > 0:
            ref_times.append(reference(model_dir, reqs, a, torch_dtype)[1])
        run_sightline_round(a, binary, model_dir, req_file, ref, rel_errors if f32_ref else None, runs, times)
    t_ref = statistics.median(ref_times)
    for label in runs:
        dt, diff, e32, wall = runs[label]
        runs[label] = (statistics.median(times[label]), diff, e32, wall)

    kind = "SmolLM2-135M-Instruct" if a.shape == "smollm2" else f"random LLaMA {a.shape}"
    print(f"model: {kind} {a.dtype} on {a.device} | {len(reqs)} TruthfulQA MC requests "
          f"({a.questions} questions), {tokens} input tokens | batch {a.batch_size} | {a.threads} threads")
    print(f"reference: {ref_name}, torch {torch.__version__}, transformers {transformers.__version__}")
    if a.repeat > 1:
        print(f"{a.repeat} rounds, each the reference then sightline; seconds are medians, and the "
              f"last column the range of the rounds' own ratios (reference seconds "
              f"{min(ref_times):.2f}–{max(ref_times):.2f})")
    vs32 = lambda e: f"{e[0]:10.2e} {e[1]:10.2e} {e[2]:10.2e}" if e else ""
    head32 = f" {'max vs f32':>10} {'median':>10} {'mean':>10}" if f32_ref else ""
    ref32 = vs32(rel_errors([r[0] for r in ref])) if f32_ref else ""
    spread = lambda label: (
        f" {min(r / t for r, t in zip(ref_times, times[label])):5.2f}–"
        f"{max(r / t for r, t in zip(ref_times, times[label])):4.2f}" if a.repeat > 1 else "")
    head_spread = f" {'round ratios':>12}" if a.repeat > 1 else ""
    print(f"{'system':32} {'seconds':>8} {'tokens/s':>9} {'ratio':>6} {'process s':>9} "
          f"{'max rel |Δll|':>14}{head32}{head_spread}")
    print(f"{ref_name:32} {t_ref:8.2f} {tokens / t_ref:9.0f} {1.0:6.2f} {'-':>9} {'-':>14} {ref32}")
    for label, (dt, diff, e32, wall) in runs.items():
        print(f"{label:32} {dt:8.2f} {tokens / dt:9.0f} {t_ref / dt:6.2f} {wall:9.2f} {diff:14.2e} "
              f"{vs32(e32)}{spread(label)}")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "shape": a.shape, "device": a.device, "dtype": a.dtype, "questions": a.questions,
            "requests": len(reqs), "tokens": tokens, "reference": ref_name,
            "reference_seconds": t_ref, "reference_tokens_per_s": tokens / t_ref,
            "reference_rounds": ref_times,
            "reference_vs_f32": rel_errors([r[0] for r in ref]) if f32_ref else None,
            "sightline": {k: {"seconds": dt, "tokens_per_s": tokens / dt, "max_rel_diff": d, "vs_f32": e,
                              "process_seconds": wall, "rounds": times[k]}
                          for k, (dt, d, e, wall) in runs.items()},
            "speed_ratio": t_ref / runs["sightline (shared prefix)"][0]}, indent=1))


def run_sightline_round(a, binary, model_dir, req_file, ref, rel_errors, runs, times):
    """One round of sightline's two runs (shared prefix, plain): fills `runs[label]` with
    (seconds, max rel |Δll| against the reference, errors against f32 or None, process
    seconds) and appends the seconds to `times[label]`."""
    for label, extra in [("sightline (shared prefix)", []), ("sightline (plain)", ["--no-shared-prefix"])]:
        out = OUT / ("scores" + ("-plain" if extra else "") + ".jsonl")
        cmd = [str(binary), "--threads", str(a.threads), "score", "--model", str(model_dir), "--requests",
               str(req_file), "--batch-size", str(a.batch_size), "--device", a.device, "--dtype", a.dtype,
               "--output", str(out), "--overwrite", *extra]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.exit(f"sightline score failed ({p.returncode}): {p.stderr.strip()[-800:]}")
        wall = time.perf_counter() - t0
        summary = re.search(r"scored \d+ requests in ([0-9.]+) s", p.stderr)
        if not summary:
            sys.exit(f"sightline score printed no summary line: {p.stderr.strip()[-800:]}")
        dt = float(summary.group(1))
        got = [json.loads(l)["logprob"] for l in out.read_text().splitlines()]
        diff = max(abs(g - r[0]) / max(1.0, abs(r[0])) for g, r in zip(got, ref))
        runs[label] = (dt, diff, rel_errors(got) if rel_errors else None, wall)
        times.setdefault(label, []).append(dt)


if __name__ == "__main__":
    sys.exit(main())
