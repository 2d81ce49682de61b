#!/usr/bin/env python3
"""Golden fixtures for sightline's bf16 CPU path, written by PyTorch (requirements.txt pins it).

    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_bf16_fixtures.py

It writes tests/fixtures/bf16/ops.json:
  rms_norm   transformers' LlamaRMSNorm in bf16 (f32 statistic, rounded, times the bf16 weight)
  silu_mul   F.silu(gate) * up in bf16 (the SwiGLU activation of LlamaMLP)
  linear     F.linear(x, w) in bf16 (oneDNN: f32 accumulation, one rounding)
  scoring    the golden requests of tests/fixtures/llama/tiny-gqa-untied scored by transformers
             with the model in f32 and in bf16 (HFLM's rules: log_softmax of the logits in f32,
             continuation tokens summed), so a test can require sightline's bf16 error against
             f32 to be no worse than transformers' own bf16 error.
Tensors are lists of bf16 bit patterns (uint16), shapes beside them.
"""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/bf16"


def bits(t):
    return t.contiguous().view(torch.int16).flatten().to(torch.int32).bitwise_and(0xFFFF).tolist()


def rand(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).to(torch.bfloat16)


def scoring():
    model_dir = ROOT / "tests/fixtures/llama/tiny-gqa-untied"
    golden = json.loads((model_dir / "golden.json").read_text())
    out = {}
    for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype).eval()
        lls = []
        for enc in golden["encoded"]:  # lm-eval's split (an empty context is the EOS prefix)
            whole, n = enc["context"] + enc["continuation"], len(enc["continuation"])
            whole = whole[-(golden["max_length"] + 1):]  # HFLM's left truncation
            n = min(n, len(whole) - 1)
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)[-n:]
            lls.append(logp.gather(1, torch.tensor(whole[-n:])[:, None]).sum().item())
        out[name] = lls
    return {"model": "tests/fixtures/llama/tiny-gqa-untied", "requests": golden["requests"], **out}


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    x, w = rand(7, 96, scale=3.0), (1.0 + rand(96, scale=0.2).float()).to(torch.bfloat16)
    norm = LlamaRMSNorm(96, eps=1e-5)
    norm.weight.data = w.clone()
    norm = norm.to(torch.bfloat16)
    gate, up = rand(5, 200, scale=4.0), rand(5, 200)
    lx, lw = rand(5, 100), rand(37, 100)
    ops = {
        "reference": {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "rms_norm": {"eps": 1e-5, "x": bits(x), "x_shape": list(x.shape), "w": bits(w),
                     "y": bits(norm(x))},
        "silu_mul": {"gate": bits(gate), "up": bits(up), "shape": list(gate.shape),
                     "y": bits(F.silu(gate) * up)},
        "linear": {"x": bits(lx), "x_shape": list(lx.shape), "w": bits(lw), "w_shape": list(lw.shape),
                   "y": bits(F.linear(lx, lw))},
        "scoring": scoring(),
    }
    (OUT / "ops.json").write_text(json.dumps(ops) + "\n")
    print(f"wrote {OUT / 'ops.json'}")


if __name__ == "__main__":
    main()
