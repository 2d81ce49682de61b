#!/usr/bin/env python3
"""Write a LLaMA-2-7B-shaped checkpoint with random bf16 weights (never downloaded), sharded the
way HF stores 7B models (`model-0000I-of-0000N.safetensors` + `model.safetensors.index.json`).

    .venv-ref/bin/python bench/llama7b.py [--out bench/out/llama-llama2-7b]

The real shapes of meta-llama/Llama-2-7b-hf: hidden 4096, intermediate 11008, 32 layers, 32 heads
(no GQA), vocab 32000, rms_norm_eps 1e-5, untied lm_head: 6.74 B parameters, 13.5 GB in bf16.
Weights are N(0, 0.02) as transformers' `_init_weights` draws them, norms 1. The tokenizer is the
LLaMA tokenizer of tests/fixtures/llama/tiny-mha-tied (32000 pieces).

It writes one layer at a time (one shard per layer, plus one for the embeddings, final norm and
LM head), so its own peak memory is one layer (~0.8 GB in f32 while drawing), not the model:
`LlamaForCausalLM(config)` would need the whole model in f32 (27 GB) and does not fit the 23 GB
machines this is for. Needs ~13.5 GB of free disk. Used by bench/big_model.py.
"""
import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HIDDEN, INTER, LAYERS, HEADS, VOCAB = 4096, 11008, 32, 32, 32000


def config():
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": VOCAB,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "initializer_range": 0.02, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
        "torch_dtype": "bfloat16", "use_cache": True,
    }


def layer_shapes(i):
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (HIDDEN,),
        p + "post_attention_layernorm.weight": (HIDDEN,),
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "mlp.gate_proj.weight": (INTER, HIDDEN),
        p + "mlp.up_proj.weight": (INTER, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, INTER),
    }


def write(out: Path):
    import torch
    from safetensors.torch import save_file

    if (out / "model.safetensors.index.json").exists():
        print(f"{out}: already written")
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    groups = [{"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
               "lm_head.weight": (VOCAB, HIDDEN)}] + [layer_shapes(i) for i in range(LAYERS)]
    n = len(groups)
    weight_map, total = {}, 0
    for s, shapes in enumerate(groups, 1):
        name = f"model-{s:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for key, shape in shapes.items():
            if len(shape) == 1:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape) * 0.02).to(torch.bfloat16)
            tensors[key] = t
            weight_map[key] = name
            total += t.numel() * 2
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        print(f"{name}: {len(tensors)} tensors", flush=True)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config(), indent=2))
    tok = ROOT / "tests/fixtures/llama/tiny-mha-tied"
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok / f, out / f)
    print(f"{out}: {total / 1e9:.2f} GB of bf16 weights in {n} shards")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench/out/llama-llama2-7b"))
    write(Path(ap.parse_args().out))


if __name__ == "__main__":
    main()
