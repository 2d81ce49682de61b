#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the real files in data/
and tests/fixtures/, cut small: a few records of each data file, the headers of safetensors
files, the pickles inside .bin archives. Standard library only.

The committed corpora (fuzz/corpus/<target>/) are these seeds plus what the campaign found,
minimised with `cargo fuzz cmin`; see FUZZING.md. The request-cache and results seeds come
from a two-document `sightline eval` of the built-in model, run with $SIGHTLINE (default
target/debug/sightline). Run from anywhere:
    python3 fuzz/make_seeds.py
"""

import json
import os
import shutil
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = ROOT / "fuzz" / "seeds"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def read(p):
    return (ROOT / p).read_bytes() if not isinstance(p, Path) else p.read_bytes()


def first_records(path, n):
    """The first n records of a JSON array or JSON Lines file, in its own layout."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.dumps(json.loads(text)[:n], indent=1, ensure_ascii=False)
    return "\n".join(text.splitlines()[:n]) + "\n"


def safetensors(tensors, metadata=None):
    """A safetensors file of (name, dtype, shape, bytes) tensors."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def seeds_model():
    f32 = lambda xs: struct.pack(f"<{len(xs)}f", *xs)
    put("safetensors", "two_f32.safetensors", safetensors(
        [("model.embed_tokens.weight", "F32", [2, 3], f32(range(6))),
         ("model.norm.weight", "F32", [3], f32([1, 1, 1]))], {"format": "pt"}))
    put("safetensors", "bf16_f16_i64.safetensors", safetensors(
        [("a", "BF16", [2, 2], b"\x80\x3f" * 4), ("b", "F16", [4], b"\x00\x3c" * 4),
         ("c", "I64", [1], struct.pack("<q", 7)), ("d", "U8", [0], b"")]))
    put("safetensors", "lora_adapter.safetensors",
        read(FIX / "lora/tiny-gqa-untied-lora-pattern/adapter_model.safetensors"))
    big = read(FIX / "llama/tiny-mha-tied/model.safetensors")
    n = struct.unpack("<Q", big[:8])[0]
    put("safetensors", "header_only_truncated.safetensors", big[: 8 + n + 64])

    idx = FIX / "llama/tiny-gqa-untied/model.safetensors.index.json"
    put("shard_index", "tiny_gqa.index.json", read(idx))
    put("shard_index", "climbs.index.json", json.dumps(
        {"metadata": {"total_size": 8}, "weight_map": {"a": "../x.safetensors", "b": "model.safetensors"}}))

    nul = b"\0"
    pre = read(FIX / "llava/tiny-llava-hf/preprocessor_config.json")
    clip = read(FIX / "llava/tiny-clip/config.json")
    put("model_config", "llama_gqa.json", read(FIX / "llama/tiny-gqa-untied/config.json"))
    put("model_config", "llama3_rope.json", read(FIX / "llama/tiny-llama3-bin/config.json"))
    put("model_config", "llava_hf.json", read(FIX / "llava/tiny-llava-hf/config.json") + nul + pre)
    put("model_config", "llava_orig.json", read(FIX / "llava/tiny-llava-orig/config.json") + nul + pre + nul + clip)
    put("model_config", "stage1.json", read(FIX / "llava/tiny-stage1/config.json") + nul
        + read(FIX / "image/configs/clip-336/preprocessor_config.json") + nul
        + read(FIX / "clip/clip-gelu/config.json"))
    put("model_config", "clip_quickgelu.json", b"{}" + nul + b"{}" + nul + read(FIX / "clip/vision-quickgelu/config.json"))

    for name in ["llama/tiny-gqa-untied", "llava/tiny-llava-hf", "llava/tiny-llava-orig"]:
        d = FIX / name
        put("tokenizer", name.split("/")[1] + ".json",
            read(d / "tokenizer.json") + nul + read(d / "tokenizer_config.json"))
    put("tokenizer", "no_config.json", read(FIX / "llama/tiny-gqa-untied/tokenizer.json"))

    bins = {
        "rslora_adapter": FIX / "lora/tiny-gqa-untied-rslora-r2/adapter_model.bin",
        "mm_projector": FIX / "llava/tiny-stage1/mm_projector.bin",
        "llama3": FIX / "llama/tiny-llama3-bin/pytorch_model.bin",
        "clip_tanh": FIX / "clip/vision-tanh-bin/pytorch_model.bin",
    }
    for name, path in bins.items():
        with zipfile.ZipFile(path) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            put("pickle", name + ".pkl", z.read(pkl))
    put("pickle_zip", "rslora_adapter.bin", read(bins["rslora_adapter"]))
    # A small archive as torch.save lays it out, from the adapter's own pickle and storages.
    with zipfile.ZipFile(bins["rslora_adapter"]) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        small = OUT / "pickle_zip" / "restored.bin"
        with zipfile.ZipFile(small, "w", zipfile.ZIP_STORED) as w:
            for n in names:
                w.writestr(n, z.read(n))
    for name in ["tiny-gqa-untied-lora-pattern", "tiny-gqa-untied-lora-r4", "tiny-gqa-untied-rslora-r2"]:
        put("peft_config", name + ".json", read(FIX / "lora" / name / "adapter_config.json"))


def seeds_vision():
    for p in sorted((FIX / "image/inputs").iterdir()):
        if p.is_file():
            put("image", p.name, read(p))
    for p in sorted((FIX / "image/inputs/jpeg").iterdir()):
        put("jpeg", p.name, read(p))
    put("jpeg", "grey.jpg", read(FIX / "image/inputs/grey.jpg"))


def seeds_data():
    tr = ROOT / "data/training"
    put("llava_records", "sample.json", read(FIX / "data/sample.json"))
    put("llava_records", "blip_pretrain.json", first_records(tr / "llava/blip_laion_cc_sbu_100.json", 3))
    put("llava_records", "sketch_instruct.json", first_records(tr / "sketch/sketch_instruct.json", 3))
    put("llava_records", "sketch_text.json", first_records(tr / "sketch/sketch_instruct_text.json", 3))
    put("llava_records", "coco_qa.jsonl", first_records(tr / "llava/coco2014_val_gpt4_qa_30x3.jsonl", 3))
    put("llava_records", "climbing_image.jsonl", json.dumps(
        {"id": "climb", "image": "../../../../etc/passwd",
         "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A file."}]}) + "\n")

    put("sources", "alpaca.json", first_records(tr / "alpaca/alpaca_small_100.json", 3))
    put("sources", "orca.jsonl", first_records(tr / "orca/orca_dpo_pairs_validation_30.jsonl", 2))
    put("sources", "llava_qa.jsonl", first_records(tr / "llava/coco2014_val_gpt4_qa_30x3.jsonl", 3))
    put("sources", "sharegpt.json", json.dumps([
        {"id": "s1", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye"}]},
        {"id": 2, "messages": [
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ], indent=1))


def seeds_eval():
    csvs = [
        "ethics/commonsense/cm_test.csv", "ethics/deontology/deontology_test.csv",
        "ethics/justice/justice_test.csv", "ethics/utilitarianism/util_test.csv",
        "ethics/virtue/virtue_test.csv", "truthfulqa/v0/TruthfulQA.csv",
    ]
    for i, rel in enumerate(csvs):
        lines = (ROOT / "data" / rel).read_bytes().split(b"\n")[:6]
        put("task_csv", Path(rel).stem + ".csv", bytes([i]) + b"\n".join(lines) + b"\n")

    # A real request log and results folder: a two-document evaluation of the built-in model.
    gen = Path(tempfile.mkdtemp())
    exe = os.environ.get("SIGHTLINE", str(ROOT / "target/debug/sightline"))
    subprocess.run([exe, "eval", "--tasks", "truthfulqa_mc1,ethics_cm", "--limit", "2",
                    "--cache", gen / "cache", "--output", gen / "out", "--log-samples"],
                   check=True, capture_output=True)
    cache = (gen / "cache/requests.jsonl").read_text().splitlines()
    put("request_cache", "loglik.jsonl", "\n".join(cache[:4]) + "\n")
    put("request_cache", "torn_and_text.jsonl",
        cache[0] + "\n" + json.dumps({"key": "k", "response": " a story"}) + "\n" + cache[1][:40])

    nul = b"\0"
    samples = (gen / "out/samples_truthfulqa_mc1.jsonl").read_bytes().split(b"\n")[:2]
    log = b"\n".join(json.dumps({"step": s, "epoch": 0.5 * s, "loss": 2.0 / s, "lr": 2e-5,
                                 "grad_norm": 1.5}).encode() for s in range(1, 4)) + b"\n"
    put("results_folder", "sightline.bin",
        (gen / "out/results.json").read_bytes() + nul + b"\n".join(samples) + b"\n" + nul + log)
    lm = FIX / "report/lm-eval/stories260k/results_2026-12-06T10-20-10.851056.json"
    put("results_folder", "lm_eval_results.bin", read(lm))
    put("results_folder", "train_log_only.bin", b"" + nul + b"" + nul + log)
    shutil.rmtree(gen)

    for p in sorted((ROOT / "configs").glob("*.toml")):
        put("run_toml", p.name, read(p))
    for p in [ROOT / "studies/toy.toml", ROOT / "studies/sight-beyond-text.toml", FIX / "study/tiny.toml"]:
        put("study_toml", p.name, read(p))


def seeds_serve():
    cases = json.loads(read(FIX / "serve/openai_client.json"))["cases"]
    for c in cases:
        if c["request"] is None:
            continue
        path = {"/completions": "/v1/completions", "/chat/completions": "/v1/chat/completions"}.get(c["path"], c["path"])
        put("serve", c["name"] + ".req", path + "\n" + json.dumps(c["request"]))
    put("serve", "tokenize.req", "/tokenize\n" + json.dumps({"prompt": "Once upon a time", "add_special_tokens": True}))
    put("serve", "token_ids.req", "/v1/completions\n" + json.dumps(
        {"model": "tiny", "prompt": [[1, 403, 407], [1, 9]], "max_tokens": 0, "echo": True, "logprobs": 1}))
    put("serve", "chat_stream.req", "/v1/chat/completions\n" + json.dumps(
        {"model": "tiny", "messages": [{"role": "system", "content": "Tell a story."},
                                        {"role": "user", "content": "A cat"}],
         "max_tokens": 8, "stream": True, "temperature": 0.7, "top_p": 0.9, "seed": 3}))


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    seeds_model()
    seeds_vision()
    seeds_data()
    seeds_eval()
    seeds_serve()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{sum(1 for p in OUT.rglob('*') if p.is_file())} seeds, {total} bytes in {OUT}")
