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

GPU and bf16 (what scripts/gpu/check.sh runs): `--device cuda` puts both sides on the GPU,
`--bf16` trains in bf16 mixed precision on both (PyTorch: f32 weights and AdamW under
`torch.autocast(dtype=torch.bfloat16)`, as HF Trainer's `bf16=True`; sightline: `bf16 = true`),
`--shape tinyllama-1.1b` is TinyLlama-1.1B's shape (random weights), and `--sightline-bin PATH`
times the `sightline train` command (the CUDA tarball holds no examples) on a generated text
data set whose every row fills `seq` tokens: its steps' `seconds` and `tokens` from
train_log.jsonl, the first step left out as the warm-up. Peak GPU memory: the process's
largest `used_memory` in `nvidia-smi --query-compute-apps`, polled every 100 ms for both sides
(also torch's `max_memory_reserved`); MFU: tokens/s x FLOPs per token / `--peak-tflops`
(FLOPs per token: 6N + 12·L·d·T for a full step, 4N + 8·L·d·T for LoRA, N the decoder's
matmul parameters). `--work DIR` holds the generated model, batch and runs (default bench/out).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_vs_transformers import SHAPES, build_model, dtype_kwarg  # noqa: E402

CONFIGS = {
    # name: (hidden, layers, heads, intermediate, vocab, batch, seq[, kv_heads])
    "small": (256, 4, 4, 688, 8000, 4, 128),
    "20m": (512, 8, 8, 1376, 32000, 4, 256),
    # TinyLlama-1.1B (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json)
    "tinyllama-1.1b": (2048, 22, 32, 5632, 32000, 8, 512, 4),
    # the real pretrained SmolLM2-135M-Instruct (bench/smollm2.py makes it; tied embeddings,
    # GQA 9/3); `sightline train` runs it with `version="v0"` (its tokenizer splits LLaVA v1's
    # `</s>`, so the v1 template's round arithmetic does not hold for it)
    "smollm2": (576, 30, 9, 1536, 49152, 4, 128, 3),
    # plumbing checks on a CPU (scripts/gpu/check.sh's DEVICE=cpu mode)
    "tiny": (64, 2, 4, 172, 512, 2, 256, 2),
}


def model_dir(name):
    if name == "smollm2":
        import smollm2
        return Path(smollm2.smollm2_dir())
    if name in SHAPES:  # the eval bench's model of that shape, shared (one 1.1B build, not two)
        path = OUT / f"llama-{name}"
        build_model(path, name)
        return path
    hs, layers, heads, inter, vocab, _, _, *kv = CONFIGS[name]
    path = OUT / f"train-llama-{name}"
    if (path / "model.safetensors").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=hs, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=(kv or [heads])[0],
                      vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    # `sightline train` reads a tokenizer: the fixtures' 512-token one (ids < every vocab here).
    tok = ROOT / "tests/fixtures/llama/tiny-mha-tied"
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok / f, path / f)
    return path


def matmul_params(name):
    """N: the decoder's matmul parameters (embedding lookup excluded, LM head included)."""
    hs, layers, heads, inter, vocab, _, _, *kv = CONFIGS[name]
    d = hs // heads
    kvh = (kv or [heads])[0]
    per_layer = hs * heads * d * 2 + hs * kvh * d * 2 + 3 * hs * inter
    return layers * per_layer + vocab * hs


def flops_per_token(name, mode, seq):
    """Training FLOPs per token: 6N + 12·L·d·T (full), 4N + 8·L·d·T (LoRA: no weight grads)."""
    hs, layers = CONFIGS[name][0], CONFIGS[name][1]
    n = matmul_params(name)
    if mode == "lora":
        return 4 * n + 8 * layers * hs * seq
    return 6 * n + 12 * layers * hs * seq


class GpuMemory:
    """Largest `used_memory` (MiB) nvidia-smi reports for one process, polled every 100 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, None, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError):
                return
            for line in out.splitlines():
                parts = [x.strip() for x in line.split(",")]
                if len(parts) == 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                    self.peak = max(self.peak or 0, int(parts[1]))
            time.sleep(0.1)

    def done(self):
        self.stop.set()
        self.thread.join(timeout=10)
        return self.peak


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
    dev = torch.device(args.device)
    model = LlamaForCausalLM.from_pretrained(args.model, **dtype_kwarg(torch.float32),
                                             attn_implementation=args.attn).to(dev)
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
    ids = load_file(args.batch_file)["input_ids"].to(dev)
    # HF Trainer's bf16=True: f32 weights and optimizer, the forward under autocast.
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step()]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    sync()
    secs = (time.perf_counter() - start) / args.steps
    b, t = ids.shape
    mem = torch.cuda.max_memory_reserved() / 2**20 if dev.type == "cuda" else None
    print(json.dumps({"system": "pytorch", "mode": args.mode, "checkpointing": args.checkpointing,
                      "batch": b, "seq": t, "steps": args.steps, "secs_per_step": secs,
                      "tokens_per_s": b * t / secs, "losses": losses,
                      "torch_max_memory_reserved_mib": mem}))


def run_child(cmd, env, gpu=False, parse=None):
    """Runs one side; returns its JSON line (or `parse()`'s result) with ru_maxrss (KiB) of the
    child and, with `gpu`, its peak GPU memory added."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    mem = GpuMemory(proc.pid) if gpu else None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed with {proc.returncode}")
    res = parse() if parse else json.loads(out.strip().splitlines()[-1])
    res["gpu_peak_mib"] = mem.done() if mem else None
    res["maxrss_mib"] = usage.ru_maxrss / 1024
    # CPU seconds of the whole process (load, warm-up and timed steps): less sensitive than
    # wall time to other jobs on a shared machine, though spin-waiting counts as CPU too.
    res["cpu_s"] = usage.ru_utime + usage.ru_stime
    return res


def train_data(path, rows, seq):
    """A text-only LLaVA-format data set whose every answer is longer than `seq` tokens (the
    run truncates at model_max_length = seq), so each step runs batch x seq positions, all but
    the template's prompt (~100 tokens under `v0`) trained."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "looked", "at", "stars", "while",
             "rain", "fell", "over", "quiet", "hills"]
    recs = [{"id": str(i), "conversations": [
        {"from": "human", "value": "Tell a story."},
        {"from": "gpt", "value": " ".join(words[(i + j) % len(words)] for j in range(seq * 2))}]}
        for i in range(rows)]
    path.write_text(json.dumps(recs))
    return path


def sightline_train(binary, model, mode, batch, seq, steps, checkpointing, args, env):
    """The `sightline train` side: a run of steps + 1 optimizer steps on `--device`."""
    run_dir = OUT / f"sightline-train-{model.name}-{mode}-{'bf16' if args.bf16 else 'f32'}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    data = train_data(OUT / f"train-text-{seq}.json", batch * (steps + 1), seq)
    over = [f"model_name_or_path={json.dumps(str(model))}", f"data_path={json.dumps(str(data))}",
            f"output_dir={json.dumps(str(run_dir))}", f"per_device_train_batch_size={batch}",
            "gradient_accumulation_steps=1", f"max_steps={steps + 1}", f"model_max_length={seq}",
            "learning_rate=1e-4", "weight_decay=0.0", "max_grad_norm=1.0", "warmup_ratio=0.0",
            'lr_scheduler_type="constant_with_warmup"', 'accum_loss="tokens"', "save_steps=100000",
            f"bf16={'true' if args.bf16 else 'false'}",
            f"gradient_checkpointing={'true' if checkpointing else 'false'}"]
    if mode == "lora":
        over += ["lora_enable=true", "lora_r=64", "lora_alpha=16", "lora_dropout=0.0"]
    if model.name == "smollm2-135m":
        over.append('version="v0"')
    cmd = [str(binary), "train", "--config", str(ROOT / "configs/text-only.toml"),
           "--device", args.device, *over]

    def parse():
        log = [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]
        timed = log[1:] or log
        secs = sum(r["seconds"] for r in timed)
        toks = sum(r["tokens"] for r in timed)
        return {"system": "sightline", "mode": mode, "checkpointing": checkpointing, "batch": batch,
                "seq": seq, "steps": len(timed), "secs_per_step": secs / len(timed),
                "tokens_per_s": toks / secs, "losses": [r["loss"] for r in log],
                "step_seconds": [r["seconds"] for r in log]}
    return run_child(cmd, env, gpu=args.device == "cuda", parse=parse)


def compare(name, mode, batch, seq, steps, threads, attn, checkpointing, binary, candle_threads,
            args):
    model = model_dir(name)
    vocab = CONFIGS[name][4]
    bf = batch_file(name, batch, seq, vocab)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads))
    ck = ["--checkpointing"] if checkpointing else []
    gpu = args.device == "cuda"
    prec = ["--device", args.device] + (["--bf16"] if args.bf16 else [])
    torch_res = run_child([sys.executable, __file__, "--worker", "--model", str(model),
                           "--batch-file", str(bf), "--mode", mode, "--steps", str(steps),
                           "--threads", str(threads), "--attn", attn] + ck + prec, env, gpu=gpu)
    if candle_threads:
        env["CANDLE_NUM_THREADS"] = str(candle_threads)
    if args.sightline_bin:
        ours = sightline_train(args.sightline_bin, model, mode, batch, seq, steps, checkpointing,
                               args, env)
    else:
        ours = run_child([str(binary), "--model", str(model), "--batch-file", str(bf), "--mode",
                          mode, "--steps", str(steps)] + ck, env)
    ratio = ours["tokens_per_s"] / torch_res["tokens_per_s"]
    fpt = flops_per_token(name, mode, seq)
    print(f"{name} {mode} batch {batch} seq {seq} checkpointing {checkpointing} "
          f"{args.device} {'bf16' if args.bf16 else 'f32'}:")
    for r in (torch_res, ours):
        r["mfu"] = r["tokens_per_s"] * fpt / (args.peak_tflops * 1e12)
        gpu_mem = f"  peak GPU {r['gpu_peak_mib']} MiB" if gpu else ""
        print(f"  {r['system']:9s} {r['secs_per_step']:8.3f} s/step {r['tokens_per_s']:8.0f} tokens/s"
              f"  peak RSS {r['maxrss_mib']:7.0f} MiB{gpu_mem}  process CPU {r['cpu_s']:6.1f} s"
              f"  MFU {100 * r['mfu']:.2f}%  first loss {r['losses'][0]}")
    mem_key = "gpu_peak_mib" if gpu else "maxrss_mib"
    mem_ratio = (ours[mem_key] / torch_res[mem_key]) if ours[mem_key] and torch_res[mem_key] else None
    print(f"  ratio sightline/pytorch: speed {ratio:.2f}x, peak {'GPU ' if gpu else ''}memory "
          f"{mem_ratio if mem_ratio is None else round(mem_ratio, 2)}x", flush=True)
    return {"config": name, "mode": mode, "checkpointing": checkpointing, "device": args.device,
            "bf16": args.bf16, "flops_per_token": fpt, "peak_tflops": args.peak_tflops,
            "pytorch": torch_res, "sightline": ours, "speed_ratio": ratio,
            "memory_ratio": mem_ratio}


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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="bf16 mixed precision on both sides")
    ap.add_argument("--sightline-bin", help="time `SIGHTLINE train` instead of the step_timing example")
    ap.add_argument("--peak-tflops", type=float, default=800.0,
                    help="the MFU denominator (H100 bf16 dense, measured: ~800)")
    ap.add_argument("--work", help="where models, batches and runs go (default bench/out)")
    args = ap.parse_args()
    global OUT
    if args.work:
        OUT = Path(args.work).resolve()
    if args.worker:
        return worker(args)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release/examples/step_timing"
    if not args.sightline_bin and not binary.exists():
        sys.exit(f"{binary} missing: cargo build --release -p sightline-train --example step_timing")
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.configs.split(","):
        batch, seq = CONFIGS[name][5], CONFIGS[name][6]
        for mode in args.modes.split(","):
            results.append(compare(name, mode, batch, seq, args.steps, args.threads, args.attn,
                                   False, binary, args.candle_threads, args))
    if args.memory_seq:
        name = args.configs.split(",")[-1]
        for ck in (False, True):
            results.append(compare(name, "full", 1, args.memory_seq, max(1, args.steps - 1),
                                   args.threads, args.attn, ck, binary, args.candle_threads, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
