#!/usr/bin/env python3
"""Golden fixtures for sightline's CLIP vision tower (`sightline_vision::clip`), written by the
reference stack pinned in requirements.txt (transformers 4.46.3 `CLIPVisionModel` / `CLIPModel`).

Run from the repository root:

    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_clip_fixtures.py

It writes tests/fixtures/clip/<tower>/, one directory per tiny random tower:
  config.json, model.safetensors    HF save_pretrained output (pytorch_model.bin for the `bin` one)
  golden.safetensors                `pixel_values` [2, C, S, S] (f32, the inputs) and
                                    `hidden_states.<i>` [2, 1 + patches, hidden] for every i in
                                    0..=num_hidden_layers: transformers' `output_hidden_states=True`
                                    after reloading the saved checkpoint with from_pretrained
  golden.json                       what the tower exercises, its select-layer -> index map, the
                                    library versions

Towers (all f32, batch 2, every parameter re-drawn far from HF's init so that a bug in any tensor
— LayerNorm affine, class/position embedding, a bias — moves the outputs well beyond 1e-4):
  vision-quickgelu   CLIPVisionModel, quick_gelu, 30 px / patch 6 (5x5 grid), 3 layers, 4 heads
                     of dim 6 (a scale that is not a power of two)
  clip-gelu          full CLIPModel (text tower, projections and logit_scale present, to be
                     ignored), exact gelu, 28 px / patch 7 (4x4 grid), 3 layers
  vision-tanh-bin    CLIPVisionModel saved as pytorch_model.bin with the legacy
                     `vision_model.embeddings.position_ids` buffer added back (as in older
                     checkpoints such as openai/clip-vit-large-patch14), gelu_pytorch_tanh,
                     23 px / patch 7: the conv drops the last 2 pixel rows/columns (3x3 grid)
"""
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/clip"

TOWERS = {
    "vision-quickgelu": dict(
        kind="vision",
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                    image_size=30, patch_size=6, hidden_act="quick_gelu"),
        save=dict(safe_serialization=True),
        seed=11,
    ),
    "clip-gelu": dict(
        kind="clip",
        vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                    image_size=28, patch_size=7, hidden_act="gelu", layer_norm_eps=1e-6),
        text=dict(vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                  num_attention_heads=2, max_position_embeddings=8),
        projection_dim=8,
        save=dict(safe_serialization=True),
        seed=22,
    ),
    "vision-tanh-bin": dict(
        kind="vision",
        vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                    image_size=23, patch_size=7, hidden_act="gelu_pytorch_tanh"),
        save=dict(safe_serialization=False),
        seed=33,
    ),
}

BATCH = 2


def randomize(model, seed):
    """Every parameter re-drawn so that each one matters: LayerNorm gains around 1 with real
    spread, non-zero LayerNorm and linear biases, class/position embeddings of unit scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.3 * r if name.endswith("weight") else 0.3 * r)
            elif "class_embedding" in name or "position_embedding" in name:
                p.copy_(r)
            elif name.endswith("bias"):
                p.copy_(0.2 * r)
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(r / fan_in ** 0.5)
            else:
                p.copy_(r)


def build(spec):
    if spec["kind"] == "vision":
        cfg = CLIPVisionConfig(**spec["vision"])
        model = CLIPVisionModel(cfg)
    else:
        cfg = CLIPConfig(text_config=spec["text"], vision_config=spec["vision"],
                         projection_dim=spec["projection_dim"])
        model = CLIPModel(cfg)
    randomize(model, spec["seed"])
    return model.eval()


def vision_hidden_states(model, pixels):
    tower = model.vision_model
    with torch.no_grad():
        out = tower(pixel_values=pixels, output_hidden_states=True)
    return [h.contiguous() for h in out.hidden_states]


def add_legacy_position_ids(path, model):
    """Older transformers saved the `position_ids` buffer; real .bin checkpoints carry it."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    n = model.config.vision_config.num_positions if hasattr(model.config, "vision_config") else \
        (model.config.image_size // model.config.patch_size) ** 2 + 1
    sd["vision_model.embeddings.position_ids"] = torch.arange(n).expand((1, -1)).contiguous()
    torch.save(sd, path)


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", file=sys.stderr)
    torch.set_num_threads(2)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for name, spec in TOWERS.items():
        torch.manual_seed(spec["seed"])
        model = build(spec)
        d = OUT / name
        model.save_pretrained(d, **spec["save"])
        if not spec["save"]["safe_serialization"]:
            add_legacy_position_ids(d / "pytorch_model.bin", model)

        v = spec["vision"]
        g = torch.Generator().manual_seed(spec["seed"] + 1000)
        # Roughly what CLIPImageProcessor emits (normalised pixels in about [-1.8, 2.1]).
        pixels = torch.randn((BATCH, 3, v["image_size"], v["image_size"]), generator=g)

        # Goldens come from the checkpoint as transformers reloads it from disk.
        cls = CLIPVisionModel if spec["kind"] == "vision" else CLIPModel
        reloaded = cls.from_pretrained(d).eval()
        states = vision_hidden_states(reloaded, pixels)
        before = vision_hidden_states(model, pixels)
        assert all(torch.equal(a, b) for a, b in zip(states, before)), "reload changed the outputs"
        # Eager and SDPA attention agree; the goldens are from the default (SDPA) path.
        eager = cls.from_pretrained(d, attn_implementation="eager").eval()
        for a, b in zip(states, vision_hidden_states(eager, pixels)):
            assert (a - b).abs().max() < 1e-5
        L = v["num_hidden_layers"]
        assert len(states) == L + 1
        tensors = {"pixel_values": pixels.contiguous()}
        for i, h in enumerate(states):
            tensors[f"hidden_states.{i}"] = h
        save_file(tensors, d / "golden.safetensors")

        grid = v["image_size"] // v["patch_size"]
        (d / "golden.json").write_text(json.dumps(dict(
            model_class=cls.__name__,
            weights="model.safetensors" if spec["save"]["safe_serialization"] else "pytorch_model.bin",
            hidden_act=v["hidden_act"],
            batch=BATCH,
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            num_patches=grid * grid,
            hidden_size=v["hidden_size"],
            num_hidden_layers=L,
            # mm_vision_select_layer -> index into hidden_states (Python negative indexing).
            select_layers={str(s): (s if s >= 0 else L + 1 + s) for s in (-2, -1, 0, 1)},
            torch=torch.__version__,
            transformers=transformers.__version__,
        ), indent=1) + "\n")
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {len(states)} hidden states of {tuple(states[0].shape)}, {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
