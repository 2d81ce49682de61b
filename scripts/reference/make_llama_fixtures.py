#!/usr/bin/env python3
"""Golden fixtures for sightline's LLaMA core (tokenizer, forward pass, lm-eval scoring, greedy
generation), written by the reference stack pinned in requirements.txt.

Run from the repository root:

    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_llama_fixtures.py

It writes tests/fixtures/llama/:
  tokenization.json       ids of tricky strings from SentencePiece itself and from the HF fast
                          tokenizer that transformers' converter builds from the same model
  <model>/                tiny random LlamaForCausalLM checkpoints (HF save_pretrained) with that
                          tokenizer: MHA+tied (model.safetensors), GQA+untied (sharded
                          safetensors), llama3 rope scaling (pytorch_model.bin)
  <model>/golden.json     requests, their token split (lm-eval _encode_pair), log-likelihoods and
                          greedy flags from lm-eval HFLM(add_bos_token=False), logits at chosen
                          positions, greedy generations from model.generate

The tokenizer is llama2.c's tok512 (data/models/stories260k/tok512.bin) rebuilt as a real
SentencePiece BPE model proto, so the reference tokenization is SentencePiece's and
transformers' own conversion, independent of sightline's llama2c converter.
"""
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
import lm_eval  # noqa: E402
import sentencepiece as spm  # noqa: E402
from sentencepiece import sentencepiece_model_pb2 as sp_pb2  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOK_BIN = ROOT / "data/models/stories260k/tok512.bin"
OUT = ROOT / "tests/fixtures/llama"

TRICKY = [
    "", " ", "  ", "hello", " hello", "hello ", "  two  spaces  ", "Hello, world!",
    "\n", "\n\n", "line one\nline two", "Q: What is up?\nA:", "tab\there", " \t \n ",
    "naïve café", "日本語のテキスト", "emoji 🤖🎉 done", "Ünïcödé ßtraße", "\u00a0nbsp\u00a0",
    "zero\u200bwidth", "\x00\x01\x7f", "\x1f unit sep", "Lily's mom said, \"Let's go.\"",
    "1234567890 3.14159", "<s> not special </s>", "a" * 40, "The cat sat on the mat." * 3,
    "    indented code()", "trailing newline\n", "ends with space ",
]

PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955."
)


def read_tok512(path):
    data = path.read_bytes()
    (max_len,) = struct.unpack_from("<i", data, 0)
    at, pieces = 4, []
    for i in range(512):
        score, n = struct.unpack_from("<fi", data, at)
        at += 8
        text = data[at:at + n].decode("utf-8")
        at += n
        if i == 1:
            text = "<s>"
        elif i == 2:
            text = "</s>"
        else:
            text = text.replace(" ", "\u2581")
        pieces.append((text, score))
    assert at == len(data)
    return pieces


def sentencepiece_model(pieces, path):
    """A SentencePiece BPE ModelProto equivalent to the one tok512.bin was exported from
    (llama2.c train_vocab.py settings: byte_fallback, identity normalizer, dummy prefix)."""
    m = sp_pb2.ModelProto()
    m.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(pieces)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (text, score) in enumerate(pieces):
        p = m.pieces.add()
        p.piece, p.score = text, score
        if i == 0:
            p.type = sp_pb2.ModelProto.SentencePiece.UNKNOWN
        elif i in (1, 2):
            p.type = sp_pb2.ModelProto.SentencePiece.CONTROL
        elif text.startswith("<0x") and len(text) == 6:
            p.type = sp_pb2.ModelProto.SentencePiece.BYTE
        else:
            p.type = sp_pb2.ModelProto.SentencePiece.NORMAL
    path.write_bytes(m.SerializeToString())


MODELS = {
    "tiny-mha-tied": dict(
        config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True,
                    rms_norm_eps=1e-5),
        save=dict(safe_serialization=True),
    ),
    "tiny-gqa-untied": dict(
        config=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
                    num_key_value_heads=2, max_position_embeddings=96, tie_word_embeddings=False,
                    rms_norm_eps=1e-6),
        save=dict(safe_serialization=True, max_shard_size="200KB"),
    ),
    "tiny-llama3-bin": dict(
        config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                    rms_norm_eps=1e-5, rope_theta=500000.0,
                    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                      high_freq_factor=4.0, original_max_position_embeddings=32)),
        save=dict(safe_serialization=False),
    ),
}


def randomize(model, seed):
    """Weights far from init so that every tensor matters: norms around 1, peaked logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                # Tied models read logits off the embedding: keep them from being one-hot.
                scale = 0.25 if model.config.tie_word_embeddings else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g))
            elif "lm_head" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def requests():
    long_ctx = " ".join(["Once upon a time there was a little dog named Max who liked to run."] * 6)
    reqs = [
        ("The cat sat on the", " mat"),
        ("The cat sat on the ", "mat"),               # trailing space moves to the continuation
        ("Question: Is this wrong?\nAnswer:", " no"),
        ("Question: Is this wrong?\nAnswer:", " yes"),
        ("Lily went to the park.\n", "She played."),  # trailing newline moves too
        ("unit separator\x1f", "x"),                 # Python rstrip strips U+001F
        ("", "Once upon a time"),                     # empty context: [eos] prefix
        ("naïve café", " 日本語"),
        ("emoji 🤖", " 🎉 done"),
        (long_ctx, " The end."),                      # longer than max_length: left-truncated
        (long_ctx + " " + long_ctx, " Max ran."),
        ("The cat sat on the", " mat"),               # duplicate
    ]
    # TruthfulQA-shaped: one long shared context, several continuations (shared-prefix path).
    q = PREAMBLE + "\n\nQ: What happens if you eat watermelon seeds?\nA:"
    for a in [" Nothing happens.", " You grow watermelons in your stomach.", " You get sick.",
              " The seeds pass through your digestive system.", " You die."]:
        reqs.append((q, a))
    ctx = "One day, a little girl named Lily"
    for a in [" went", " saw a big", " was", " played with her friends in the park", " ."]:
        reqs.append((ctx, a))
    return reqs


def greedy_requests(model, fast):
    """Requests whose continuation is the model's own greedy output, so is_greedy is True
    (unless re-tokenising the joined string splits it differently, which is kept as a case)."""
    out = []
    for ctx in ["Once upon a time", "The little dog", "Q: What is 2+2?\nA:"]:
        ids = fast.encode(ctx, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=3, do_sample=False, pad_token_id=fast.eos_token_id)
        full = fast.decode(gen[0].tolist(), skip_special_tokens=True)
        if full.startswith(ctx) and len(full) > len(ctx):
            out.append((ctx, full[len(ctx):]))
    return out


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, lm_eval {lm_eval.__version__}",
          file=sys.stderr)
    torch.set_num_threads(2)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    pieces = read_tok512(TOK_BIN)
    tmp = tempfile.mkdtemp()
    if True:
        sp_path = Path(tmp) / "tokenizer.model"
        sentencepiece_model(pieces, sp_path)
        sp = spm.SentencePieceProcessor(model_file=str(sp_path))
        fast = LlamaTokenizerFast(vocab_file=str(sp_path), from_slow=True, legacy=True, add_prefix_space=True,
                                  add_bos_token=True, add_eos_token=False,
                                  clean_up_tokenization_spaces=False)
        tok_dir = Path(tmp) / "tok"
        fast.save_pretrained(tok_dir)
        # add_prefix_space was only needed to build tokenizer.json (transformers' converter reads
        # it); left in the config it makes AutoTokenizer rebuild from tokenizer.model, which real
        # LLaMA checkpoints' configs do not ask for.
        tc = json.loads((tok_dir / "tokenizer_config.json").read_text())
        tc.pop("add_prefix_space", None)
        (tok_dir / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))

    tokenization = []
    for s in TRICKY:
        tokenization.append(dict(text=s, sentencepiece=sp.encode(s),
                                 fast=fast.encode(s, add_special_tokens=False)))
    (OUT / "tokenization.json").write_text(json.dumps(dict(
        source="tok512.bin rebuilt as a SentencePiece BPE proto; fast = transformers LlamaTokenizerFast(from_slow=True, legacy=True)",
        versions=dict(transformers=transformers.__version__, sentencepiece=spm.__version__),
        strings=tokenization), ensure_ascii=False, indent=1))

    eos = fast.eos_token_id
    for seed, (name, spec) in enumerate(MODELS.items()):
        d = OUT / name
        cfg = LlamaConfig(vocab_size=512, bos_token_id=1, eos_token_id=2, torch_dtype="float32", **spec["config"])
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
        randomize(model, seed)
        model.save_pretrained(d, **spec["save"])
        for f in tok_dir.iterdir():
            if f.name != "tokenizer.model":   # sightline reads tokenizer.json only
                shutil.copy(f, d / f.name)

        lm = HFLM(pretrained=str(d), backend="causal", device="cpu", dtype="float32", batch_size=4,
                  add_bos_token=False, prefix_token_id=eos)
        reqs = requests() + greedy_requests(model, fast)
        insts = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
        lls = lm.loglikelihood(insts)
        encoded = []
        for c, x in reqs:
            if c == "":
                encoded.append(([eos], lm.tok_encode(x)))
            else:
                ce, xe = lm._encode_pair(c, x)
                encoded.append((ce, xe))

        probes = [fast.encode("Once upon a time, Lily saw a big red ball.", add_special_tokens=True),
                  fast.encode(PREAMBLE, add_special_tokens=False)[: cfg.max_position_embeddings]]
        logits = []
        with torch.no_grad():
            for ids in probes:
                out = model(torch.tensor([ids])).logits[0]
                positions = sorted({0, len(ids) // 2, len(ids) - 1})
                logits.append(dict(ids=ids, positions=positions,
                                   rows=[[float(v) for v in out[p]] for p in positions]))

        gens = []
        for prompt in ["Once upon a time", "Q: What is the capital of France?\nA:", ""]:
            ids = fast(prompt, add_special_tokens=True)["input_ids"]
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=24, do_sample=False, pad_token_id=eos)
            new = out[0, len(ids):].tolist()
            gens.append(dict(prompt=prompt, prompt_ids=ids, tokens=new,
                             text=fast.decode(new, skip_special_tokens=True)))

        golden = dict(
            reference=dict(torch=torch.__version__, transformers=transformers.__version__,
                           lm_eval=lm_eval.__version__,
                           scorer="lm_eval HFLM(add_bos_token=False, prefix_token_id=eos, batch_size=4, dtype=float32)"),
            max_length=lm.max_length,
            requests=[dict(context=c, continuation=x) for c, x in reqs],
            encoded=[dict(context=c, continuation=x) for c, x in encoded],
            results=[dict(logprob=float(ll), is_greedy=bool(g)) for ll, g in lls],
            logits=logits,
            generations=gens,
        )
        (d / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1))
        with open(d / "requests.jsonl", "w") as f:
            for c, x in reqs:
                f.write(json.dumps(dict(context=c, continuation=x), ensure_ascii=False) + "\n")
        print(f"{name}: {len(reqs)} requests, max_length {lm.max_length}", file=sys.stderr)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
