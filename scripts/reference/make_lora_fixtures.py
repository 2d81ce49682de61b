#!/usr/bin/env python3
"""Golden fixtures for sightline's LoRA adapters (PEFT format, applied unmerged), written by the
reference stack pinned in requirements.txt plus peft (0.21.2 wrote the committed files).

The paper evaluates its LoRA models with lm-eval's `peft=` argument, which wraps the base model
with `PeftModel.from_pretrained` and does not merge; this script computes exactly that.

Run from the repository root, after make_llama_fixtures.py (it reads the base checkpoint
tests/fixtures/llama/tiny-gqa-untied and its requests.jsonl and golden.json, and changes none):

    .venv-ref/bin/pip install peft==0.21.2
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_lora_fixtures.py

It writes tests/fixtures/lora/<adapter>/:
  adapter_config.json, adapter_model.{safetensors,bin}
                  PEFT save_pretrained output; A and B are seeded random (B is zero at init,
                  which would make every parity check vacuous); base_model_name_or_path is
                  rewritten from the absolute temp path to the repository-relative base dir
  golden.json     logits of the PeftModel (reloaded from disk, unmerged) at chosen positions of
                  the base fixture's probe ids, and lm-eval HFLM(peft=...) log-likelihoods and
                  greedy flags for the base fixture's requests.jsonl

Adapters:
  tiny-gqa-untied-lora-r4       r=4, alpha=8, all seven linear projections, adapter_model.safetensors
  tiny-gqa-untied-rslora-r2     use_rslora (alpha/sqrt(r)), r=2, q_proj + v_proj, adapter_model.bin
  tiny-gqa-untied-lora-pattern  rank_pattern / alpha_pattern / layers_to_transform overrides
"""
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
# peft 0.21 tests isinstance(w, torch.distributed.tensor.DTensor) without importing the submodule.
import torch.distributed.tensor  # noqa: E402,F401
import transformers  # noqa: E402
import peft  # noqa: E402
import lm_eval  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASE_REL = "tests/fixtures/llama/tiny-gqa-untied"
BASE = ROOT / BASE_REL
OUT = ROOT / "tests/fixtures/lora"

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

ADAPTERS = {
    "tiny-gqa-untied-lora-r4": dict(
        config=dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR),
        save=dict(safe_serialization=True),
    ),
    "tiny-gqa-untied-rslora-r2": dict(
        config=dict(r=2, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"]),
        save=dict(safe_serialization=False),
    ),
    "tiny-gqa-untied-lora-pattern": dict(
        # Per-module overrides: down_proj gets rank 3 (alpha 4 -> scale 4/3), layer 1's q_proj
        # alpha 16 (scale 8); layer 2 carries no adapter at all.
        config=dict(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"],
                    rank_pattern={"down_proj": 3}, alpha_pattern={"model.layers.1.self_attn.q_proj": 16},
                    layers_to_transform=[0, 1]),
        save=dict(safe_serialization=True),
    ),
}


def randomize_lora(model, seed):
    """A ~ N(0, 1/in) and B ~ N(0, 1/(4r)): the low-rank update moves the logits by about as
    much as the base weights do, so a wrong scale, transpose or missing module shows."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
                n += 1
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) / (4 * p.shape[1]) ** 0.5)
                n += 1
    assert n > 0, "no LoRA parameters found"


def f32(v):
    """Shortest decimal that round-trips the f32 value (keeps the fixtures small)."""
    return float(f"{float(v):.9g}")


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"lm_eval {lm_eval.__version__}", file=sys.stderr)
    torch.set_num_threads(2)
    base_golden = json.loads((BASE / "golden.json").read_text())
    probes = [p["ids"] for p in base_golden["logits"]]
    reqs = [json.loads(line) for line in (BASE / "requests.jsonl").read_text().splitlines() if line.strip()]
    reqs = [(r["context"], r["continuation"]) for r in reqs]
    cfg = json.loads((BASE / "config.json").read_text())
    eos = cfg["eos_token_id"]

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for seed, (name, spec) in enumerate(ADAPTERS.items()):
        d = OUT / name
        base = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32).eval()
        base_logits = []
        with torch.no_grad():
            for ids in probes:
                base_logits.append(base(torch.tensor([ids])).logits[0])
        lcfg = LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **spec["config"])
        model = get_peft_model(base, lcfg).eval()
        randomize_lora(model, 1000 + seed)
        model.save_pretrained(d, **spec["save"])
        # PEFT records the absolute path it was given; the committed file names the fixture.
        ac_path = d / "adapter_config.json"
        ac = json.loads(ac_path.read_text())
        ac["base_model_name_or_path"] = BASE_REL
        # target_modules is a Python set inside PEFT: sort it so reruns write the same bytes.
        if isinstance(ac.get("target_modules"), list):
            ac["target_modules"] = sorted(ac["target_modules"])
        ac_path.write_text(json.dumps(ac, indent=2, sort_keys=True) + "\n")
        (d / "README.md").unlink(missing_ok=True)   # PEFT's model-card template, not needed

        with torch.no_grad():
            live = [model(torch.tensor([ids])).logits[0] for ids in probes]

        # What lm-eval's peft= path computes: a fresh base wrapped from disk, unmerged.
        fresh = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32).eval()
        loaded = PeftModel.from_pretrained(fresh, d).eval()
        logits, effect = [], 0.0
        with torch.no_grad():
            for ids, before, again in zip(probes, base_logits, live):
                out = loaded(torch.tensor([ids])).logits[0]
                assert torch.equal(out, again), f"{name}: reloaded adapter differs from the in-memory one"
                effect = max(effect, float((out - before).abs().max()))
                positions = sorted({0, len(ids) // 2, len(ids) - 1})
                logits.append(dict(ids=ids, positions=positions,
                                   rows=[[f32(v) for v in out[p]] for p in positions]))
        del loaded, fresh, model, base

        lm = HFLM(pretrained=str(BASE), peft=str(d), backend="causal", device="cpu", dtype="float32",
                  batch_size=4, add_bos_token=False, prefix_token_id=eos)
        insts = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
        lls = lm.loglikelihood(insts)

        golden = dict(
            reference=dict(torch=torch.__version__, transformers=transformers.__version__,
                           peft=peft.__version__, lm_eval=lm_eval.__version__,
                           scorer=f"lm_eval HFLM(pretrained={BASE_REL}, peft=<this dir>, add_bos_token=False, "
                                  "prefix_token_id=eos, batch_size=4, dtype=float32)",
                           logits="PeftModel.from_pretrained(LlamaForCausalLM(base, float32), <this dir>), unmerged"),
            base=BASE_REL,
            lora_config={k: ac[k] for k in ("r", "lora_alpha", "use_rslora", "target_modules", "rank_pattern",
                                            "alpha_pattern", "layers_to_transform")},
            max_abs_logit_change_vs_base=effect,
            requests=[dict(context=c, continuation=x) for c, x in reqs],
            results=[dict(logprob=float(ll), is_greedy=bool(g)) for ll, g in lls],
            logits=logits,
        )
        (d / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1))
        print(f"{name}: {len(reqs)} requests, logits moved by up to {effect:.3f} vs the base", file=sys.stderr)
        del lm


if __name__ == "__main__":
    main()
