#!/usr/bin/env python3
"""Golden fixtures for sightline's LLaVA models, written by the reference stack pinned in
requirements.txt (transformers 4.46.3, torch, PIL).

Run from the repository root (after make_llama_fixtures.py, whose tokenizer it reuses):

    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_llava_fixtures.py

It writes tests/fixtures/llava/:
  tiny-clip/            a tiny random CLIPVisionModel (56 px, patch 14 -> 16 patches) with its
                        preprocessor_config.json: the `--vision-tower` of the original layout
  tiny-llava-hf/        a tiny random transformers LlavaForConditionalGeneration (llava-hf layout)
  tiny-llava-orig/      a tiny original-layout checkpoint (LlavaLlamaForCausalLM config with mm_*
                        keys, model.* + model.mm_projector.{0,2}.* tensors, mlp2x_gelu projector,
                        <im_start>/<im_end>, image_aspect_ratio "pad"), built with LLaVA's key names
  tiny-stage1/          a stage-1 output: mm_projector.bin (linear projector + the grown
                        embed_tokens) and config.json, applied on top of
                        tests/fixtures/llama/tiny-gqa-untied
  golden.json           per case: prompt, image, token ids (-200 = image), pixel-value checksums,
                        logits rows, greedy generations
  pixels.safetensors    the exact pixel_values each case fed the model

The original layout has no class in transformers: its reference is written here from LLaVA's code
(`tokenizer_image_token`, `prepare_inputs_labels_for_multimodal` standard branch, `expand2square`)
on top of transformers' LlamaForCausalLM and CLIPVisionModel, as spec/llava-model.md pins it.
The llava-hf reference is transformers' own LlavaForConditionalGeneration with LlavaProcessor-style
inputs (the <image> token expanded to image_seq_length copies).
"""
import copy
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AddedToken,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizerFast,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/llava"
BASE_LLM = ROOT / "tests/fixtures/llama/tiny-gqa-untied"
IMAGE_TOKEN_INDEX = -200
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
IMAGES = {
    "ironing": "data/llava/examples/extreme_ironing.jpg",
    "waterview": "data/llava/examples/waterview.jpg",
    "dog_sketch": "data/unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png",
}
MAX_NEW = 12


def randomize(model, seed):
    """Every parameter ~ N(0, 0.5) (LayerNorm/RMSNorm weights around 1) so that a wrong
    layer, bias or norm in the Rust port shows up in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.5
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(noise)


def vision_config():
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=56, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=16,
    )


def processor():
    return CLIPImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, do_center_crop=True,
        do_resize=True, do_rescale=True, do_normalize=True, image_mean=MEAN, image_std=STD,
        resample=3, do_convert_rgb=True,
    )


def expand2square(img, background):
    """LLaVA train.py / conversation.py: pad to a square with the mean colour."""
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), background)
        out.paste(img, (0, (w - h) // 2))
        return out
    out = Image.new(img.mode, (h, h), background)
    out.paste(img, ((h - w) // 2, 0))
    return out


def pixels_for(image_key, pad):
    img = Image.open(ROOT / IMAGES[image_key]).convert("RGB")
    if pad:
        img = expand2square(img, tuple(int(x * 255) for x in MEAN))
    return processor()(img, return_tensors="pt")["pixel_values"]


def tokenizer_image_token(tok, prompt):
    """llava/mm_utils.py tokenizer_image_token."""
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    sep = [IMAGE_TOKEN_INDEX] * (offset + 1)
    inter = [e for pair in zip(chunks, [sep] * len(chunks)) for e in pair][:-1]
    for x in inter:
        ids.extend(x[offset:])
    return ids


def base_tokenizer():
    return LlamaTokenizerFast.from_pretrained(BASE_LLM)


def logits_rows(logits, first_after_image=None):
    """Row 0, the first text row after the image and the last two rows (8 significant digits:
    float32 needs no more), keyed by position in the spliced sequence."""
    t = logits.shape[0]
    rows = {0, t - 2, t - 1}
    if first_after_image is not None:
        rows.add(first_after_image)
    return {str(r): [float(f"{float(x):.8g}") for x in logits[r]] for r in sorted(rows) if r >= 0}


V1 = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
      "helpful, detailed, and polite answers to the user's questions.")


def v1_prompt(question, placeholder):
    return f"{V1} USER: {placeholder}\n{question} ASSISTANT:"


# ---------------------------------------------------------------------------------------------


def make_clip(pixel_store):
    d = OUT / "tiny-clip"
    shutil.rmtree(d, ignore_errors=True)
    torch.manual_seed(0)
    tower = CLIPVisionModel(vision_config()).eval()
    randomize(tower, 11)
    tower.save_pretrained(d)
    processor().save_pretrained(d)
    return tower


def make_orig(tower, pixel_store, golden):
    d = OUT / "tiny-llava-orig"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    tok = base_tokenizer()
    # LLaVA train.py order: <im_patch>, then <im_start>/<im_end>, all special.
    tok.add_tokens(["<im_patch>"], special_tokens=True)
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    assert len(tok) == 515
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(1)
    llm = LlamaForCausalLM(cfg).eval()
    randomize(llm, 12)
    proj = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
    randomize(proj, 13)
    state = {k: v.contiguous() for k, v in llm.state_dict().items()}
    for k, v in proj.state_dict().items():
        state[f"model.mm_projector.{k}"] = v.contiguous()
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    c = cfg.to_dict()
    c.update({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
        "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_hidden_size": 32,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu", "mm_use_im_start_end": True,
        "mm_use_im_patch_token": True, "use_mm_proj": True, "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
    })
    (d / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(d)

    cases = [
        ("orig_v1_ironing", "ironing", v1_prompt("What is unusual about this image?",
                                                 "<im_start><image><im_end>")),
        ("orig_raw_sketch", "dog_sketch", "<im_start><image><im_end>\nA sketch of a"),
        ("orig_text_only", None, v1_prompt("Tell me a story.", "").replace(": \n", ": ")),
    ]
    for name, image, prompt in cases:
        ids = tokenizer_image_token(tok, prompt)
        with torch.no_grad():
            if image is not None:
                pv = pixels_for(image, pad=True)
                pixel_store[name] = pv[0].contiguous()
                hs = tower(pv, output_hidden_states=True).hidden_states[-2][:, 1:]
                feats = proj(hs)[0]
                p = ids.index(IMAGE_TOKEN_INDEX)
                emb = llm.get_input_embeddings()
                embeds = torch.cat([emb(torch.tensor(ids[:p])), feats, emb(torch.tensor(ids[p + 1:]))])
            else:
                embeds = llm.get_input_embeddings()(torch.tensor(ids))
            logits = llm(inputs_embeds=embeds[None]).logits[0]
            gen = llm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                               max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=2, pad_token_id=0)[0]
        golden[name] = {
            "model": "tiny-llava-orig", "vision_tower": "tiny-clip", "image": IMAGES.get(image),
            "prompt": prompt, "ids": ids, "seq_len": embeds.shape[0],
            "logits": logits_rows(logits, ids.index(IMAGE_TOKEN_INDEX) + 16 if image else None),
            "greedy": gen.tolist(), "greedy_text": tok.decode(gen, skip_special_tokens=True),
        }
        if image is not None:
            golden[name]["features_head"] = [float(x) for x in feats[0, :8]]


def make_hf(pixel_store, golden):
    d = OUT / "tiny-llava-hf"
    shutil.rmtree(d, ignore_errors=True)
    tok = base_tokenizer()
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == 512, image_id
    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=520, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=513,
    )
    cfg = LlavaConfig(
        vision_config=vision_config().to_dict(), text_config=text.to_dict(),
        image_token_index=image_id, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=16,
    )
    torch.manual_seed(2)
    model = LlavaForConditionalGeneration(cfg).eval()
    randomize(model, 14)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    processor().save_pretrained(d)

    cases = [
        ("hf_raw_ironing", "ironing", "USER: <image>\nWhat is unusual about this image? ASSISTANT:"),
        ("hf_v1_waterview", "waterview", v1_prompt("Describe the scene.", "<image>")),
        ("hf_raw_sketch", "dog_sketch", "<image>\nA sketch of"),
    ]
    for name, image, prompt in cases:
        ids = tok(prompt).input_ids
        pos = ids.index(image_id)
        # LlavaProcessor expands the placeholder to image_seq_length tokens.
        expanded = ids[:pos] + [image_id] * 16 + ids[pos + 1:]
        pv = pixels_for(image, pad=False)
        pixel_store[name] = pv[0].contiguous()
        with torch.no_grad():
            inp = torch.tensor([expanded])
            logits = model(input_ids=inp, pixel_values=pv).logits[0]
            gen = model.generate(input_ids=inp, pixel_values=pv, attention_mask=torch.ones_like(inp),
                                 max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=2,
                                 pad_token_id=513)[0][len(expanded):]
        marked = [IMAGE_TOKEN_INDEX if t == image_id else t for t in ids]
        golden[name] = {
            "model": "tiny-llava-hf", "image": IMAGES[image], "prompt": prompt, "ids": marked,
            "seq_len": len(expanded), "logits": logits_rows(logits, pos + 16), "greedy": gen.tolist(),
            "greedy_text": tok.decode(gen, skip_special_tokens=True),
        }
    # Batched with left padding and an attention mask equals one by one (the property sightline
    # keeps by right padding): recorded for reference only.


def make_stage1(tower, pixel_store, golden):
    """A stage-1 projector on the text LLM tiny-gqa-untied (vocab 512): mm_projector.bin holds the
    linear projector and the grown embed_tokens (515 rows) because mm_use_im_start_end is on.
    The reference decoder: base weights, embed_tokens from the file, lm_head grown to 515 rows whose
    new rows are the mean of the old ones (LLaVA's initialisation of <im_start>/<im_end>; stage 1
    never trains lm_head, and <im_patch>'s random row is not saved anywhere, so sightline uses the
    mean for it too — documented in sightline-vision)."""
    d = OUT / "tiny-stage1"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    base = LlamaForCausalLM.from_pretrained(BASE_LLM).eval()
    tok = base_tokenizer()
    tok.add_tokens(["<im_patch>"], special_tokens=True)
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    hidden = base.config.hidden_size
    g = torch.Generator().manual_seed(15)
    proj = torch.nn.Linear(32, hidden)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(proj.weight.shape, generator=g) * 0.5)
        proj.bias.copy_(torch.randn(proj.bias.shape, generator=g) * 0.5)
        old = base.get_input_embeddings().weight
        new_rows = torch.randn(3, hidden, generator=g) * 0.5
        embed = torch.cat([old + 0.01 * torch.randn(old.shape, generator=g), new_rows])
    torch.save({"model.mm_projector.weight": proj.weight.detach().clone(),
                "model.mm_projector.bias": proj.bias.detach().clone(),
                "model.embed_tokens.weight": embed.detach().clone()}, d / "mm_projector.bin")
    c = json.loads((BASE_LLM / "config.json").read_text())
    c.update({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "vocab_size": 515,
        "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_hidden_size": 32,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": True, "mm_use_im_patch_token": True, "use_mm_proj": True,
        "tune_mm_mlp_adapter": True, "image_aspect_ratio": "square",
    })
    (d / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")

    llm = copy.deepcopy(base)
    llm.resize_token_embeddings(515)
    with torch.no_grad():
        llm.get_input_embeddings().weight.copy_(embed)
        head = base.get_output_embeddings().weight
        llm.get_output_embeddings().weight[:512] = head
        llm.get_output_embeddings().weight[512:] = head.mean(0, keepdim=True)
    name, image = "stage1_sketch", "dog_sketch"
    prompt = "<im_start><image><im_end>\nA sketch of"
    ids = tokenizer_image_token(tok, prompt)
    with torch.no_grad():
        pv = pixels_for(image, pad=False)
        pixel_store[name] = pv[0].contiguous()
        feats = proj(tower(pv, output_hidden_states=True).hidden_states[-2][:, 1:])[0]
        p = ids.index(IMAGE_TOKEN_INDEX)
        emb = llm.get_input_embeddings()
        embeds = torch.cat([emb(torch.tensor(ids[:p])), feats, emb(torch.tensor(ids[p + 1:]))])
        logits = llm(inputs_embeds=embeds[None]).logits[0]
        gen = llm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                           max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=2, pad_token_id=0)[0]
    golden[name] = {
        "model": "../llama/tiny-gqa-untied", "mm_projector": "tiny-stage1/mm_projector.bin",
        "vision_tower": "tiny-clip", "image": IMAGES[image], "prompt": prompt, "ids": ids,
        "seq_len": embeds.shape[0], "logits": logits_rows(logits, p + 16), "greedy": gen.tolist(),
        "greedy_text": tok.decode(gen, skip_special_tokens=True),
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    pixel_store, golden = {}, {}
    tower = make_clip(pixel_store)
    make_orig(tower, pixel_store, golden)
    make_hf(pixel_store, golden)
    make_stage1(tower, pixel_store, golden)
    save_file(pixel_store, OUT / "pixels.safetensors")
    meta = {"transformers": __import__("transformers").__version__, "torch": torch.__version__,
            "pillow": Image.__version__}
    (OUT / "golden.json").write_text(json.dumps({"meta": meta, "cases": golden}, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
