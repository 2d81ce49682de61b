#!/usr/bin/env python3
"""Training step (forward + backward + clip_grad_norm_ + AdamW, f32): sightline vs PyTorch on the
same LLaMA checkpoint and the same batch, in one run. Prints tokens/s and peak memory of each and
the ratio sightline / PyTorch.

    cargo build --release -p sightline-train --example step_timing
    .venv-ref/bin/python bench/train_step_vs_torch.py [--configs small,20m] [--modes full,lora]
        [--steps 3] [--threads 2] [--memory-seq 1024]

Each side runs in its own child process (PyTorch: this script with `--worker`; sightline:
`target/release/examples/step_timing`), so each peak resident set (ru_maxrss from wait4) is that
side's own. Both start from one random checkpoint written by transformers (`save_pretrained`,
seed 0) and train on one batch of random token ids (labels = inputs), written once to a
safetensors file both read. Each side runs one untimed warm-up step, then `--steps` timed ones;
their first losses are printed side by side as a check that they compute the same thing.

Reference: `LlamaForCausalLM` in eager PyTorch (no torch.compile), transformers' default
attention (sdpa; `--attn eager` for the matmul-softmax one), `torch.optim.AdamW` (lr 1e-4,
weight decay 0), `clip_grad_norm_(1.0)`; LoRA through peft (r 64, alpha 16, dropout 0, all seven
projections), the paper's settings. `--candle-threads 1` sets CANDLE_NUM_THREADS=1 for
sightline: candle 0.11's elementwise ops then run on the calling thread (its barrier pool's
main thread spin-waits for the workers, which costs a lot on a loaded machine) while gemm and
the fused ops still use every core. `--memory-seq N` adds a run at sequence length N, batch 1,
full fine-tune, with and without gradient checkpointing on both sides (PyTorch:
`gradient_checkpointing_enable(use_reentrant=False)`).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out"

CONFIGS = {
    # name: (hidden, layers, heads, intermediate, vocab, batch, seq)
    "small": (256, 4, 4, 688, 8000, 4, 128),
    "20m": (512, 8, 8, 1376, 32000, 4, 256),
}


def model_dir(name):
    hs, layers, heads, inter, vocab, _, _ = CONFIGS[name]
    path = OUT / f"train-llama-{name}"
    if (path / "model.safetensors").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=hs, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, torch_dtype="float32")
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


def batch_file(name, batch, seq, vocab):
    path = OUT / f"train-batch-{name}-{batch}x{seq}.safetensors"
    if not path.exists():
        import torch
        from safetensors.torch import save_file
        g = torch.Generator().manual_seed(1)
        save_file({"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)}, str(path))
    return path


def worker(args):
    """The PyTorch side, in its own process."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                             attn_implementation=args.attn)
    if args.mode == "lora":
        import torch.distributed.tensor  # noqa: F401  (peft 0.21 needs the submodule imported)
        from peft import LoraConfig, get_peft_model
        cfg = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                         "up_proj", "down_proj"])
        model = get_peft_model(model, cfg)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if args.mode == "lora":
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = load_file(args.batch_file)["input_ids"]

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step()]
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    secs = (time.perf_counter() - start) / args.steps
    b, t = ids.shape
    print(json.dumps({"system": "pytorch", "mode": args.mode, "checkpointing": args.checkpointing,
                      "batch": b, "seq": t, "steps": args.steps, "secs_per_step": secs,
                      "tokens_per_s": b * t / secs, "losses": losses}))


def run_child(cmd, env):
    """Runs one side; returns its JSON line with ru_maxrss (KiB) of the child added."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed with {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res["maxrss_mib"] = usage.ru_maxrss / 1024
    # CPU seconds of the whole process (load, warm-up and timed steps): less sensitive than
    # wall time to other jobs on a shared machine, though spin-waiting counts as CPU too.
    res["cpu_s"] = usage.ru_utime + usage.ru_stime
    return res


def compare(name, mode, batch, seq, steps, threads, attn, checkpointing, binary, candle_threads):
    model = model_dir(name)
    vocab = CONFIGS[name][4]
    bf = batch_file(name, batch, seq, vocab)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads))
    ck = ["--checkpointing"] if checkpointing else []
    torch_res = run_child([sys.executable, __file__, "--worker", "--model", str(model),
                           "--batch-file", str(bf), "--mode", mode, "--steps", str(steps),
                           "--threads", str(threads), "--attn", attn] + ck, env)
    if candle_threads:
        env["CANDLE_NUM_THREADS"] = str(candle_threads)
    ours = run_child([str(binary), "--model", str(model), "--batch-file", str(bf), "--mode", mode,
                      "--steps", str(steps)] + ck, env)
    ratio = ours["tokens_per_s"] / torch_res["tokens_per_s"]
    print(f"{name} {mode} batch {batch} seq {seq} checkpointing {checkpointing}:")
    for r in (torch_res, ours):
        print(f"  {r['system']:9s} {r['secs_per_step']:8.3f} s/step {r['tokens_per_s']:8.0f} tokens/s"
              f"  peak RSS {r['maxrss_mib']:7.0f} MiB  process CPU {r['cpu_s']:6.1f} s"
              f"  first loss {r['losses'][0]:.6f}")
    print(f"  ratio sightline/pytorch: speed {ratio:.2f}x, peak memory "
          f"{ours['maxrss_mib'] / torch_res['maxrss_mib']:.2f}x", flush=True)
    return {"config": name, "mode": mode, "checkpointing": checkpointing, "pytorch": torch_res,
            "sightline": ours, "speed_ratio": ratio}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model")
    ap.add_argument("--batch-file")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--configs", default="small,20m")
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--memory-seq", type=int, default=0)
    ap.add_argument("--candle-threads", type=int, default=0,
                    help="CANDLE_NUM_THREADS for sightline (0: candle's default, all cores)")
    ap.add_argument("--json", help="also write all results to this file")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release/examples/step_timing"
    if not binary.exists():
        sys.exit(f"{binary} missing: cargo build --release -p sightline-train --example step_timing")
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.configs.split(","):
        _, _, _, _, _, batch, seq = CONFIGS[name]
        for mode in args.modes.split(","):
            results.append(compare(name, mode, batch, seq, args.steps, args.threads, args.attn,
                                   False, binary, args.candle_threads))
    if args.memory_seq:
        name = args.configs.split(",")[-1]
        for ck in (False, True):
            results.append(compare(name, "full", 1, args.memory_seq, max(1, args.steps - 1),
                                   args.threads, args.attn, ck, binary, args.candle_threads))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
