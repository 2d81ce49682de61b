#!/usr/bin/env python3
"""Golden fixtures for sightline-train: the first losses and the weights after 3 optimizer steps
of PyTorch training runs on a tiny random LlamaForCausalLM, with HF Trainer 4.46.3's arithmetic.

Run from the repository root (the venv of scripts/reference/requirements.txt, peft included):

    HF_HUB_OFFLINE=1 /work/venv/ref/bin/python scripts/reference/make_train_fixtures.py

What is reproduced, and from where (transformers 4.46.3, peft 0.21.2, torch AdamW, f32, CPU):
  * parameter groups: `Trainer.get_decay_parameter_names` (no decay for names containing "bias"
    nor for parameters of ALL_LAYERNORM_LAYERS, which modeling_llama extends with LlamaRMSNorm);
    only requires_grad parameters enter the optimizer (`Trainer.create_optimizer`)
  * torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8), HF's `adamw_torch`
  * warmup steps: `TrainingArguments.get_warmup_steps` = ceil(warmup_ratio * total_steps)
  * schedules: `get_cosine_schedule_with_warmup` / `get_linear_schedule_with_warmup`
  * the loop order of `Trainer._inner_training_loop`: backward over the accumulated micro-batches,
    `clip_grad_norm_(max_grad_norm)`, `optimizer.step()`, `lr_scheduler.step()`, `zero_grad()`
  * loss across gradient accumulation, two rules:
      - "tokens" (4.46.3 for LlamaForCausalLM, whose forward takes **loss_kwargs): each micro-batch
        loss is sum(CE) / num_items_in_batch, where num_items_in_batch counts labels != -100 over
        all micro-batches of the optimizer step *before the shift* (`get_batch_samples`), and the
        gradients are summed; nothing is divided by gradient_accumulation_steps.
      - "mean" (the LLaVA class, whose forward has no **loss_kwargs, as the paper's HF 4.31 did):
        each micro-batch mean CE is divided by gradient_accumulation_steps.
        (4.46.3 itself forgets that division for such models, a bug fixed in 4.47; the paper's
        numbers come from the divided form, spec T10.4.)

The loop is written out here instead of running `Trainer` so the batches and their order are
fixed and visible; every number that decides the update is computed by the functions above.

It writes tests/fixtures/train/:
  base/            the tiny model (save_pretrained, model.safetensors) + the tokenizer files of
                   tests/fixtures/llama/tiny-gqa-untied (same 512-token vocabulary)
  golden.json      per case: hyper-parameters, the per-micro-batch mean losses of the first 5
                   optimizer steps, learning rates used, versions
  golden.safetensors  the batches (input_ids, labels as i64), stage-1 image features, the initial
                   LoRA adapter and projector, and the trainable weights after 3 optimizer steps

Cases:
  full    every parameter trains; grad accumulation 2 ("tokens"), cosine, clipping 1.0, wd 0.1
  lora    r 4, alpha 8, dropout 0 (dropout > 0 draws from torch's RNG, which Rust cannot replay),
          all seven linear projections; B is seeded random instead of zero so A's gradients are
          not zero at step 1; linear schedule; accumulation 1; no clipping
  stage2  full LLM + mlp2x_gelu projector with its own lr (mm_projector_lr), images spliced in
  stage1  frozen LLM + trainable Linear projector (24 -> 32, bias) on fixed random "CLIP"
          features, spliced in place of a marker token; accumulation 2 ("mean"), cosine, clip 0.5
"""
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed.tensor  # noqa: E402,F401  (peft 0.21 needs the submodule imported)
import transformers  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig, LlamaForCausalLM, TrainingArguments,
    get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup,
)
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS  # noqa: E402
from transformers.trainer_pt_utils import get_parameter_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOK_SRC = ROOT / "tests/fixtures/llama/tiny-gqa-untied"
OUT = ROOT / "tests/fixtures/train"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB, SEQ, BATCH = 512, 12, 2
CLIP_DIM, N_IMG = 24, 3

CASES = {
    "full": dict(lr=1e-2, weight_decay=0.1, warmup_ratio=0.2, total_steps=10, accum=2,
                 max_grad_norm=1.0, scheduler="cosine", accum_loss="tokens"),
    "lora": dict(lr=2e-2, weight_decay=0.1, warmup_ratio=0.1, total_steps=8, accum=1,
                 max_grad_norm=None, scheduler="linear", accum_loss="tokens",
                 r=4, alpha=8, dropout=0.0),
    "stage1": dict(lr=2e-2, weight_decay=0.05, warmup_ratio=0.2, total_steps=10, accum=2,
                   max_grad_norm=0.5, scheduler="cosine", accum_loss="mean"),
    "stage2": dict(lr=1e-2, mm_projector_lr=3e-3, weight_decay=0.1, warmup_ratio=0.2, total_steps=10,
                   accum=2, max_grad_norm=1.0, scheduler="cosine", accum_loss="tokens"),
}
STEPS = 5          # optimizer steps whose losses are recorded
SNAPSHOT = 3       # weights are recorded after this many optimizer steps


def tiny_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      initializer_range=0.2)  # larger than HF's 0.02: logits far from uniform
    model = LlamaForCausalLM(cfg).float()
    # Non-trivial norm weights, so a missing RMSNorm gradient or decay rule shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))
    return model


def batches(case_seed, n, image=False):
    """n micro-batches of BATCH rows x SEQ tokens; labels are -100 on a prompt prefix of each
    row (length varies), and row 0 of every batch keeps its first label so the "tokens" rule's
    count-before-shift shows. With `image`, a marker position per row (its label is -100)."""
    g = torch.Generator().manual_seed(case_seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
        labels = ids.clone()
        pos = []
        for r in range(BATCH):
            prompt = int(torch.randint(1, 5, (1,), generator=g))
            if r != 0 or image:
                labels[r, :prompt] = -100
            if r == 1:
                labels[r, -2:] = -100   # right padding
            if image:
                p = 1 + r   # the marker sits inside the prompt
                labels[r, p] = -100
                ids[r, p] = 0   # placeholder id; its embedding is replaced
                pos.append(p)
        out.append(dict(input_ids=ids, labels=labels, image_pos=pos))
    return out


def decay_names(model):
    """Trainer.get_decay_parameter_names (4.46.3), verbatim."""
    names = get_parameter_names(model, ALL_LAYERNORM_LAYERS)
    return [n for n in names if "bias" not in n]


def param_groups(named, decay, wd):
    return [
        {"params": [p for n, p in named if n in decay and p.requires_grad], "weight_decay": wd},
        {"params": [p for n, p in named if n not in decay and p.requires_grad], "weight_decay": 0.0},
    ]


def make_sched(opt, spec):
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, warmup_ratio=spec["warmup_ratio"], report_to=[])
        warmup = args.get_warmup_steps(spec["total_steps"])
    fn = {"cosine": get_cosine_schedule_with_warmup, "linear": get_linear_schedule_with_warmup}
    return fn[spec["scheduler"]](opt, warmup, spec["total_steps"]), warmup


def causal_lm_loss(model, micro, spec, n_items, embeds=None, labels=None):
    """Returns (loss to backward, mean CE for the log)."""
    labels = micro["labels"] if labels is None else labels
    kw = dict(inputs_embeds=embeds) if embeds is not None else dict(input_ids=micro["input_ids"])
    n_shifted = int((labels[:, 1:] != -100).sum())
    if spec["accum_loss"] == "tokens":
        out = model(labels=labels, num_items_in_batch=n_items, **kw)
        return out.loss, float(out.loss.detach()) * n_items / n_shifted
    out = model(labels=labels, **kw)
    return out.loss / spec["accum"], float(out.loss.detach())


def run(name, spec, model, trainable_named, micro_batches, forward=None):
    decay = set(decay_names(model))
    opt = torch.optim.AdamW(param_groups(trainable_named, decay, spec["weight_decay"]),
                            lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8)
    sched, warmup = make_sched(opt, spec)
    params = [p for _, p in trainable_named]
    losses, lrs, snapshot = [], [], None
    it = iter(micro_batches)
    for step in range(STEPS):
        group = [next(it) for _ in range(spec["accum"])]
        n_items = int(sum((m["labels"] != -100).sum() for m in group))
        lrs.append(opt.param_groups[0]["lr"])
        for m in group:
            if forward is None:
                loss, mean = causal_lm_loss(model, m, spec, n_items)
            else:
                loss, mean = forward(m, n_items)
            loss.backward()
            losses.append(mean)
        if spec["max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        if step + 1 == SNAPSHOT:
            snapshot = {n: p.detach().clone() for n, p in trainable_named}
    meta = dict(spec, warmup_steps=warmup, losses=losses, lrs=lrs,
                decay=sorted(n for n, _ in trainable_named if n in decay))
    print(f"{name}: warmup {warmup}, losses {[round(x, 5) for x in losses]}", file=sys.stderr)
    return meta, snapshot


def put_batches(tensors, case, micro_batches):
    for i, m in enumerate(micro_batches):
        tensors[f"{case}.batch{i}.input_ids"] = m["input_ids"].to(torch.int64)
        tensors[f"{case}.batch{i}.labels"] = m["labels"].to(torch.int64)
        if m["image_pos"]:
            tensors[f"{case}.batch{i}.image_pos"] = torch.tensor(m["image_pos"], dtype=torch.int64)


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
          file=sys.stderr)
    torch.set_num_threads(2)
    if OUT.exists():
        shutil.rmtree(OUT)
    base_dir = OUT / "base"
    base_dir.mkdir(parents=True)
    tiny_model().save_pretrained(base_dir, safe_serialization=True)
    (base_dir / "generation_config.json").unlink(missing_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(TOK_SRC / f, base_dir / f)

    def fresh():
        return LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).train()

    tensors, golden = {}, {"versions": dict(torch=torch.__version__, transformers=transformers.__version__,
                                             peft=peft.__version__), "steps": STEPS, "snapshot_after": SNAPSHOT}
    n_micro = lambda spec: STEPS * spec["accum"]  # noqa: E731

    # (a) full fine-tune
    spec = CASES["full"]
    model = fresh()
    mbs = batches(1, n_micro(spec))
    meta, snap = run("full", spec, model, list(model.named_parameters()), mbs)
    golden["full"] = meta
    put_batches(tensors, "full", mbs)
    for n, t in snap.items():
        tensors[f"full.after.{n}"] = t

    # (b) LoRA
    spec = CASES["lora"]
    base = fresh()
    lcfg = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"], bias="none",
                      task_type="CAUSAL_LM", target_modules=ALL_LINEAR)
    model = get_peft_model(base, lcfg).train()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    # PEFT's saved key: the adapter name ".default" dropped (get_peft_model_state_dict).
    key = lambda n: n.replace(".default", "")  # noqa: E731
    for n, p in model.named_parameters():
        if p.requires_grad:
            tensors[f"lora.init.{key(n)}"] = p.detach().clone()
    mbs = batches(2, n_micro(spec))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    meta, snap = run("lora", spec, model, trainable, mbs)
    golden["lora"] = meta
    golden["lora"]["decay"] = sorted(key(n) for n in meta["decay"])
    put_batches(tensors, "lora", mbs)
    for n, t in snap.items():
        tensors[f"lora.after.{key(n)}"] = t

    # (c) stage 1: frozen LLM, trainable projector on spliced image features
    spec = CASES["stage1"]
    llm = fresh()
    for p in llm.parameters():
        p.requires_grad_(False)
    torch.manual_seed(3)
    proj = torch.nn.Linear(CLIP_DIM, 32)
    tensors["stage1.init.model.mm_projector.weight"] = proj.weight.detach().clone()
    tensors["stage1.init.model.mm_projector.bias"] = proj.bias.detach().clone()
    mbs = batches(3, n_micro(spec), image=True)
    gf = torch.Generator().manual_seed(4)
    for m in mbs:
        m["features"] = torch.randn(BATCH, N_IMG, CLIP_DIM, generator=gf)

    def splice(m):
        emb = llm.get_input_embeddings()(m["input_ids"])
        feats = proj(m["features"])
        rows, labs = [], []
        for r, p in enumerate(m["image_pos"]):
            rows.append(torch.cat([emb[r, :p], feats[r], emb[r, p + 1:]]))
            labs.append(torch.cat([m["labels"][r, :p], torch.full((N_IMG,), -100), m["labels"][r, p + 1:]]))
        return torch.stack(rows), torch.stack(labs)

    def forward(m, n_items):
        embeds, labels = splice(m)
        return causal_lm_loss(llm, m, spec, n_items, embeds=embeds, labels=labels)

    # LLaVA names the projector model.mm_projector; the decay rule sees it through this module.
    holder = torch.nn.Module()
    holder.model = torch.nn.Module()
    holder.model.mm_projector = proj
    meta, snap = run("stage1", spec, holder, list(holder.named_parameters()), mbs, forward=forward)
    meta["clip_dim"], meta["image_tokens"] = CLIP_DIM, N_IMG
    golden["stage1"] = meta
    put_batches(tensors, "stage1", mbs)
    for i, m in enumerate(mbs):
        tensors[f"stage1.batch{i}.features"] = m["features"]
    for n, t in snap.items():
        tensors[f"stage1.after.{n}"] = t

    # (d) stage 2: LLM (full) + mlp2x_gelu projector with its own learning rate (LLaVA-1.5's
    # `mm_projector_lr`: LLaVATrainer puts the projector in separate groups), images spliced in.
    spec = CASES["stage2"]
    llm = fresh()
    torch.manual_seed(5)
    mlp = torch.nn.Sequential(torch.nn.Linear(CLIP_DIM, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
    for i in (0, 2):
        tensors[f"stage2.init.model.mm_projector.{i}.weight"] = mlp[i].weight.detach().clone()
        tensors[f"stage2.init.model.mm_projector.{i}.bias"] = mlp[i].bias.detach().clone()
    mbs = batches(6, n_micro(spec), image=True)
    gf = torch.Generator().manual_seed(7)
    for m in mbs:
        m["features"] = torch.randn(BATCH, N_IMG, CLIP_DIM, generator=gf)

    def splice2(m):
        emb = llm.get_input_embeddings()(m["input_ids"])
        feats = mlp(m["features"])
        rows, labs = [], []
        for r, p in enumerate(m["image_pos"]):
            rows.append(torch.cat([emb[r, :p], feats[r], emb[r, p + 1:]]))
            labs.append(torch.cat([m["labels"][r, :p], torch.full((N_IMG,), -100), m["labels"][r, p + 1:]]))
        return torch.stack(rows), torch.stack(labs)

    def forward2(m, n_items):
        embeds, labels = splice2(m)
        return causal_lm_loss(llm, m, spec, n_items, embeds=embeds, labels=labels)

    holder = torch.nn.Module()
    holder.model = llm.model
    holder.lm_head = llm.lm_head
    holder.model.mm_projector = mlp
    named = list(holder.named_parameters())
    decay = set(decay_names(holder))
    groups = []
    for is_proj, lr in ((False, spec["lr"]), (True, spec["mm_projector_lr"])):
        sub = [(n, p) for n, p in named if ("mm_projector" in n) == is_proj]
        for g in param_groups(sub, decay, spec["weight_decay"]):
            g["lr"] = lr
            groups.append(g)
    opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8)
    sched, warmup = make_sched(opt, spec)
    losses, lrs, snap = [], [], None
    it = iter(mbs)
    for step in range(STEPS):
        group = [next(it) for _ in range(spec["accum"])]
        n_items = int(sum((m["labels"] != -100).sum() for m in group))
        lrs.append(opt.param_groups[0]["lr"])
        for m in group:
            loss, mean = forward2(m, n_items)
            loss.backward()
            losses.append(mean)
        torch.nn.utils.clip_grad_norm_([p for _, p in named], spec["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        if step + 1 == SNAPSHOT:
            snap = {n: p.detach().clone() for n, p in named}
    print(f"stage2: warmup {warmup}, losses {[round(x, 5) for x in losses]}", file=sys.stderr)
    golden["stage2"] = dict(spec, warmup_steps=warmup, losses=losses, lrs=lrs,
                            clip_dim=CLIP_DIM, image_tokens=N_IMG,
                            decay=sorted(n for n, _ in named if n in decay))
    put_batches(tensors, "stage2", mbs)
    for i, m in enumerate(mbs):
        tensors[f"stage2.batch{i}.features"] = m["features"]
    for n, t in snap.items():
        tensors[f"stage2.after.{n}"] = t

    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "golden.safetensors",
              metadata={"script": "scripts/reference/make_train_fixtures.py"})
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    for f in OUT.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e3:.0f} kB)", file=sys.stderr)


if __name__ == "__main__":
    main()
