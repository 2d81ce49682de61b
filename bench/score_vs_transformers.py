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
.loglikelihood, timed without model loading; sightline is timed as a whole process (model
loading included), once with its shared-prefix KV cache (default) and once without.
"""
import argparse
import json
import os
import shutil
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


def build_model(path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if (path / "model.safetensors").exists():
        return
    cfg = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=12, vocab_size=32000, max_position_embeddings=2048,
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    torch.set_num_threads(a.threads)

    model_dir = OUT / "llama-134m"
    build_model(model_dir)
    reqs = requests(a.questions)
    req_file = OUT / "truthfulqa_requests.jsonl"
    req_file.write_text("".join(json.dumps(dict(context=c, continuation=x)) + "\n" for c, x in reqs))

    lm = HFLM(pretrained=str(model_dir), backend="causal", device="cpu", dtype="float32",
              batch_size=a.batch_size, add_bos_token=False, prefix_token_id=2)
    tokens = 0
    for c, x in reqs:
        ce, xe = lm._encode_pair(c, x)
        tokens += min(len(ce) + len(xe), lm.max_length + 1) - 1
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
    t0 = time.perf_counter()
    ref = lm.loglikelihood(insts, disable_tqdm=True)
    t_ref = time.perf_counter() - t0

    binary = ROOT / "target/release/sightline"
    runs = {}
    for label, extra in [("sightline (shared prefix)", []), ("sightline (plain)", ["--no-shared-prefix"])]:
        out = OUT / ("scores" + ("-plain" if extra else "") + ".jsonl")
        cmd = [str(binary), "--threads", str(a.threads), "score", "--model", str(model_dir), "--requests",
               str(req_file), "--batch-size", str(a.batch_size), "--output", str(out), "--overwrite", *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        got = [json.loads(l)["logprob"] for l in out.read_text().splitlines()]
        diff = max(abs(g - r[0]) / max(1.0, abs(r[0])) for g, r in zip(got, ref))
        runs[label] = (dt, diff)

    print(f"model: random LLaMA 134M f32 | {len(reqs)} TruthfulQA MC requests ({a.questions} questions), "
          f"{tokens} input tokens | batch {a.batch_size} | {a.threads} threads")
    print(f"reference: torch {torch.__version__}, transformers {transformers.__version__}, lm_eval {lm_eval.__version__}")
    print(f"{'system':32} {'seconds':>8} {'tokens/s':>9} {'ratio':>6} {'max rel |Δll|':>14}")
    print(f"{'lm-eval HFLM (transformers)':32} {t_ref:8.2f} {tokens / t_ref:9.0f} {1.0:6.2f} {'-':>14}")
    for label, (dt, diff) in runs.items():
        print(f"{label:32} {dt:8.2f} {tokens / dt:9.0f} {t_ref / dt:6.2f} {diff:14.2e}")


if __name__ == "__main__":
    sys.exit(main())
