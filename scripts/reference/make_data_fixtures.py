#!/usr/bin/env python3
"""Golden fixtures for sightline-data (crates/data): LLaVA's training-sample preprocessing and
label masking, the text-only / Alpaca / Orca conversions and the seeded sampler, written
independently of the Rust code from spec/llava-training.md (T2, T4, T6, T12) and the code it
describes (UCSC-VLAA/Sight-Beyond-Text @ 47f96a32 `llava/train/train.py`, `llava/mm_utils.py`,
`llava/conversation.py`; haotian-liu/LLaVA @ 8959d5c `llava/data/alpaca-converter.py`).

Run from the repository root:

    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_data_fixtures.py

It writes tests/fixtures/data/:
  golden.json              per case: template, mm_use_im_start_end, the record, the prompt string
                           and LLaVA's (input_ids, labels) -- or the error LLaVA raises. Cases:
                           each template (v0, v1, llava_llama_2, plain) x {with image, text-only}
                           x {1 round, 3 rounds} on the real samples in data/training/, plus a
                           tokenization-mismatch sample, a leading gpt turn and
                           mm_use_im_start_end=False
  alpaca_converted.json    data/training/alpaca/alpaca_small_100.json through the LLaVA
                           alpaca-converter (Stanford-Alpaca prompt, id = 1-based counter)
  orca_converted.json      data/training/orca/... as spec T12.3 maps it
  pretrain_stripped.json   data/training/llava/blip_laion_cc_sbu_100.json without images (T12.1)
  sample.json              the seeded sampler (ChaCha20 partial Fisher-Yates, see
                           crates/random/src/chacha.rs) re-implemented here from the ChaCha20
                           definition, so "same seed, same sample on any machine" is checked
                           against an implementation that shares no code with the Rust one

Tokenizer: the fast tokenizer.json of tests/fixtures/llava/tiny-llava-orig (llama2.c's tok512
SentencePiece BPE with <im_patch>, <im_start>, <im_end> added) through transformers 4.46.3's
LlamaTokenizerFast, model_max_length 2048. LLaVA itself ran transformers 4.31's *slow* tokenizer,
which strips the spaces around added tokens (spec T5); sightline uses tokenizer.json, so this
fast tokenizer is the parity reference.
"""
import copy
import json
import os
import struct
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import transformers  # noqa: E402
from transformers import LlamaTokenizerFast  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/data"
TOKENIZER = ROOT / "tests/fixtures/llava/tiny-llava-orig"
DATA = ROOT / "data/training"

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
MODEL_MAX_LENGTH = 2048

# ---------------------------------------------------------------- templates (conversation.py)
S0 = ("A chat between a curious human and an artificial intelligence assistant. "
      "The assistant gives helpful, detailed, and polite answers to the human's questions.")
S1 = ("A chat between a curious user and an artificial intelligence assistant. "
      "The assistant gives helpful, detailed, and polite answers to the user's questions.")
S2 = ("You are a helpful language and vision assistant. You are able to understand the visual "
      "content that the user provides, and assist the user with a variety of tasks using "
      "natural language.")

TEMPLATES = {
    # name: (style, system, roles, sep, sep2)
    "v0": ("SINGLE", S0, ("Human", "Assistant"), "###", None),
    "v1": ("TWO", S1, ("USER", "ASSISTANT"), " ", "</s>"),
    "llava_llama_2": ("LLAMA_2", S2, ("USER", "ASSISTANT"), "<s>", "</s>"),
    "plain": ("PLAIN", "", ("", ""), "\n", None),
}


def get_prompt(template, messages):
    """Conversation.get_prompt() for the TWO and LLAMA_2 styles (no image tuples)."""
    style, system, roles, sep, sep2 = TEMPLATES[template]
    if style == "TWO":
        seps = [sep, sep2]
        ret = system + seps[0]
        for i, (role, message) in enumerate(messages):
            if message:
                ret += role + ": " + message + seps[i % 2]
            else:
                ret += role + ":"
        return ret
    if style == "LLAMA_2":
        wrap_sys = lambda msg: f"<<SYS>>\n{msg}\n<</SYS>>\n\n"  # noqa: E731
        wrap_inst = lambda msg: f"[INST] {msg} [/INST]"  # noqa: E731
        ret = ""
        for i, (role, message) in enumerate(messages):
            if i == 0:
                assert message, "first message should not be none"
                assert role == roles[0], "first message should come from user"
            if message:
                if i == 0:
                    message = wrap_sys(system) + message
                if i % 2 == 0:
                    message = wrap_inst(message)
                    ret += sep + message
                else:
                    ret += " " + message + " " + sep2
            else:
                ret += ""
        return ret.lstrip(sep)
    raise ValueError(style)


# ---------------------------------------------------------------- mm_utils.py
def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


# ---------------------------------------------------------------- train.py
def preprocess_multimodal(source, mm_use_im_start_end):
    for sentence in source:
        if DEFAULT_IMAGE_TOKEN in sentence["value"]:
            sentence["value"] = sentence["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            sentence["value"] = DEFAULT_IMAGE_TOKEN + "\n" + sentence["value"]
            sentence["value"] = sentence["value"].strip()
        replace_token = DEFAULT_IMAGE_TOKEN
        if mm_use_im_start_end:
            replace_token = DEFAULT_IM_START_TOKEN + replace_token + DEFAULT_IM_END_TOKEN
        sentence["value"] = sentence["value"].replace(DEFAULT_IMAGE_TOKEN, replace_token)
    return source


def tokenize_truncated(text, tokenizer):
    return tokenizer(text, max_length=tokenizer.model_max_length, truncation=True).input_ids


def count_not_pad(ids, tokenizer):
    return sum(1 for t in ids if t != tokenizer.pad_token_id)


def preprocess_v0(source, tokenizer, has_image):
    """The speaker/signal path (`_add_speaker_and_signal`, `_tokenize_fn`, `_mask_targets`)."""
    _, system, roles, _, _ = TEMPLATES["v0"]
    header = f"{system}\n\n"
    conversation = header
    for sentence in source:
        from_str = sentence["from"]
        if from_str.lower() == "human":
            from_str = roles[0]
        elif from_str.lower() == "gpt":
            from_str = roles[1]
        else:
            from_str = "unknown"
        sentence["value"] = "### " + from_str + ": " + sentence["value"] + "\n"
        conversation += sentence["value"]
    conversation += "### "
    if has_image:
        input_ids = tokenizer_image_token(conversation, tokenizer)
        lens = [len(tokenizer_image_token(s, tokenizer)) for s in [header] + [s["value"] for s in source]]
    else:
        input_ids = tokenize_truncated(conversation, tokenizer)
        lens = [count_not_pad(tokenize_truncated(s, tokenizer), tokenizer)
                for s in [header] + [s["value"] for s in source]]
    target = list(input_ids)
    speakers = [sentence["from"] for sentence in source]
    # _mask_targets
    cur_idx = lens[0]
    n = len(target)
    for i in range(min(cur_idx, n)):
        target[i] = IGNORE_INDEX
    for tokenized_len, speaker in zip(lens[1:], speakers):
        if speaker == "human":
            for i in range(cur_idx + 2, min(cur_idx + tokenized_len, n)):
                target[i] = IGNORE_INDEX
        cur_idx += tokenized_len
    return conversation, input_ids, target


def preprocess_rounds(template, source, tokenizer, has_image):
    """preprocess_v1 and preprocess_llama_2 (identical but for the separator)."""
    style, _, conv_roles, sep_, sep2 = TEMPLATES[template]
    roles = {"human": conv_roles[0], "gpt": conv_roles[1]}
    if roles[source[0]["from"]] != conv_roles[0]:
        source = source[1:]
    messages = []
    for j, sentence in enumerate(source):
        role = roles[sentence["from"]]
        assert role == conv_roles[j % 2], "turns do not alternate"
        messages.append((role, sentence["value"]))
    conversation = get_prompt(template, messages)

    if has_image:
        input_ids = tokenizer_image_token(conversation, tokenizer)
    else:
        input_ids = tokenize_truncated(conversation, tokenizer)
    target = list(input_ids)

    sep = sep_ + conv_roles[1] + ": " if style == "TWO" else "[/INST] "
    total_len = count_not_pad(target, tokenizer)
    rounds = conversation.split(sep2)
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * cur_len
    for rou in rounds:
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        if has_image:
            round_len = len(tokenizer_image_token(rou, tokenizer))
            instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
        else:
            round_len = len(tokenizer(rou).input_ids)
            instruction_len = len(tokenizer(parts[0]).input_ids) - 2
        for i in range(cur_len, min(cur_len + instruction_len, len(target))):
            target[i] = IGNORE_INDEX
        cur_len += round_len
    for i in range(cur_len, len(target)):
        target[i] = IGNORE_INDEX
    mismatch = False
    if cur_len < tokenizer.model_max_length:
        if cur_len != total_len:
            target = [IGNORE_INDEX] * len(target)
            mismatch = True
    return conversation, input_ids, target, mismatch


def preprocess_plain(source, tokenizer):
    assert len(source) == 2, "plain needs exactly 2 turns"
    assert DEFAULT_IMAGE_TOKEN in source[0]["value"], "plain needs <image> in the first turn"
    source[0]["value"] = DEFAULT_IMAGE_TOKEN
    conversation = source[0]["value"] + source[1]["value"] + TEMPLATES["plain"][3]
    input_ids = tokenizer_image_token(conversation, tokenizer)
    target = list(input_ids)
    tokenized_len = len(tokenizer_image_token(source[0]["value"], tokenizer))
    for i in range(min(tokenized_len, len(target))):
        target[i] = IGNORE_INDEX
    return conversation, input_ids, target


def get_item(record, template, tokenizer, mm_use_im_start_end):
    """LazySupervisedDataset.__getitem__ without the image tensor."""
    has_image = "image" in record
    source = copy.deepcopy(record["conversations"])
    if has_image:
        source = preprocess_multimodal(source, mm_use_im_start_end)
    style = TEMPLATES[template][0]
    mismatch = False
    if style == "PLAIN":
        prompt, ids, labels = preprocess_plain(source, tokenizer)
    elif style == "SINGLE":
        prompt, ids, labels = preprocess_v0(source, tokenizer, has_image)
    else:
        prompt, ids, labels, mismatch = preprocess_rounds(template, source, tokenizer, has_image)
    return prompt, ids, labels, mismatch


def load_tokenizer(template):
    tok = LlamaTokenizerFast.from_pretrained(str(TOKENIZER))
    tok.model_max_length = MODEL_MAX_LENGTH
    if template == "v0":
        # train.py: `--version v0` adds [PAD] when the tokenizer has none.
        tok.add_special_tokens({"pad_token": "[PAD]"})
    else:
        tok.pad_token = tok.unk_token
    return tok


# ---------------------------------------------------------------- data conversions (T12)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def convert_alpaca(data):
    out = []
    for cnt, example in enumerate(data, start=1):
        if example.get("input", "") != "":
            s = ALPACA_PROMPT_INPUT.format_map(example)
        else:
            s = ALPACA_PROMPT_NO_INPUT.format_map(example)
        out.append({"id": str(cnt), "conversations": [
            {"from": "human", "value": s}, {"from": "gpt", "value": example["output"]}]})
    return out


def convert_orca(lines):
    """OpenAI DPO layout: system + user messages, preferred_output = the answer (T12.3)."""
    out = []
    for cnt, line in enumerate(lines, start=1):
        r = json.loads(line)
        msgs = r["input"]["messages"]
        system = "".join(m["content"] for m in msgs if m["role"] == "system")
        question = [m["content"] for m in msgs if m["role"] == "user"]
        assert len(question) == 1
        answer = [m["content"] for m in r["preferred_output"] if m["role"] == "assistant"]
        assert len(answer) == 1
        human = (system + "\n\n" + question[0]) if system else question[0]
        out.append({"id": str(cnt), "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": answer[0]}]})
    return out


def strip_images(record):
    """T12.1: delete `image`; in the first human turn, value.replace("<image>", "").strip()."""
    r = copy.deepcopy(record)
    if "image" in r:
        del r["image"]
        for turn in r["conversations"]:
            if turn["from"] == "human":
                turn["value"] = turn["value"].replace("<image>", "").strip()
                break
    return r


# ---------------------------------------------------------------- sampler (chacha.rs)
def chacha20_block(key_words, counter, stream):
    def rotl(v, c):
        return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))

    def qr(s, a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)  # noqa: E702
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)  # noqa: E702
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)  # noqa: E702
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)  # noqa: E702

    init = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574] + key_words + [
        counter & 0xFFFFFFFF, counter >> 32, stream & 0xFFFFFFFF, stream >> 32]
    s = list(init)
    for _ in range(10):
        qr(s, 0, 4, 8, 12); qr(s, 1, 5, 9, 13); qr(s, 2, 6, 10, 14); qr(s, 3, 7, 11, 15)  # noqa: E702
        qr(s, 0, 5, 10, 15); qr(s, 1, 6, 11, 12); qr(s, 2, 7, 8, 13); qr(s, 3, 4, 9, 14)  # noqa: E702
    return [(a + b) & 0xFFFFFFFF for a, b in zip(s, init)]


class ChaCha20:
    """The ChaCha20 keystream as 64-bit words (low 32-bit word first), key = seed as 8
    little-endian bytes followed by 24 zero bytes, stream 0, counter from 0."""

    def __init__(self, seed):
        key = struct.pack("<Q", seed) + bytes(24)
        self.key = list(struct.unpack("<8I", key))
        self.counter = 0
        self.buf = []

    def next_u64(self):
        if len(self.buf) < 2:
            self.buf += chacha20_block(self.key, self.counter, 0)
            self.counter += 1
        lo, hi = self.buf[0], self.buf[1]
        self.buf = self.buf[2:]
        return lo | (hi << 32)

    def below(self, bound):
        reject = (2**64) % bound
        while True:
            x = self.next_u64()
            if x >= reject:
                return x % bound


def sample_indices(total, n, seed):
    if n >= total:
        return list(range(total))
    rng = ChaCha20(seed)
    idx = list(range(total))
    for i in range(n):
        j = i + rng.below(total - i)
        idx[i], idx[j] = idx[j], idx[i]
    return sorted(idx[:n])


# ---------------------------------------------------------------- records and cases
def qa_records():
    return [json.loads(line) for line in (DATA / "llava/coco2014_val_gpt4_qa_30x3.jsonl").read_text().splitlines()]


def qa_one_round(qa):
    """A conversation-format record from one LLaVA-Bench QA record (`convert llava-qa`)."""
    return {"id": qa["id"], "image": qa["image"], "conversations": [
        {"from": "human", "value": "<image>\n" + qa["instruction"]},
        {"from": "gpt", "value": qa["output"]}]}


def qa_three_rounds(qas):
    """The conv, detail and complex QA of one image as one 3-round conversation; the image
    placeholder goes last in the first question (preprocess_multimodal moves it)."""
    assert len({q["image"] for q in qas}) == 1
    turns = []
    for k, q in enumerate(qas):
        value = q["instruction"] + ("\n<image>" if k == 0 else "")
        turns += [{"from": "human", "value": value}, {"from": "gpt", "value": q["output"]}]
    return {"id": qas[0]["id"], "image": qas[0]["image"], "conversations": turns}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    pretrain = json.loads((DATA / "llava/blip_laion_cc_sbu_100.json").read_text())
    alpaca = json.loads((DATA / "alpaca/alpaca_small_100.json").read_text())
    orca_lines = (DATA / "orca/orca_dpo_pairs_validation_30.jsonl").read_text().splitlines()
    qas = qa_records()

    alpaca_conv = convert_alpaca(alpaca)
    orca_conv = convert_orca(orca_lines)
    pretrain_stripped = [strip_images(r) for r in pretrain]

    first_image = pretrain[0]   # "<image>\n..." first
    last_image = pretrain[1]    # "...\n<image>" last
    assert first_image["conversations"][0]["value"].startswith("<image>")
    assert last_image["conversations"][0]["value"].endswith("<image>")
    qa1 = qa_one_round(qas[0])
    qa3 = qa_three_rounds(qas[3:6])
    alpaca_with_input = next(r for r, a in zip(alpaca_conv, alpaca) if a["input"])
    alpaca_no_input = next(r for r, a in zip(alpaca_conv, alpaca) if not a["input"])

    records = {
        "image_1round_first": first_image,
        "image_1round_last": last_image,
        "image_1round_qa": qa1,
        "image_3rounds_qa": qa3,
        "text_1round_stripped": strip_images(last_image),
        "text_1round_alpaca_input": alpaca_with_input,
        "text_1round_alpaca_noinput": alpaca_no_input,
        "text_1round_orca": orca_conv[0],
        "text_3rounds_stripped": strip_images(qa3),
        # A gpt answer that contains the templates' own separators: LLaVA's round split goes
        # wrong and the whole sample is masked (v1, llava_llama_2).
        "text_mismatch": {"id": "mismatch", "conversations": [
            {"from": "human", "value": "Quote a chat log."},
            {"from": "gpt", "value": "USER: hi ASSISTANT: hello [/INST] bye"}]},
        # v1/llama-2 drop a leading gpt turn; v0 keeps it.
        "text_leading_gpt": {"id": "leading", "conversations": [
            {"from": "gpt", "value": "Welcome."},
            {"from": "human", "value": "What is a kite?"},
            {"from": "gpt", "value": "A toy that flies."}]},
    }

    cases = []
    for template in ["v0", "v1", "llava_llama_2", "plain"]:
        tok = load_tokenizer(template)
        for name, record in records.items():
            for mm in ([True, False] if name == "image_1round_qa" else [True]):
                case = {"name": f"{template}/{name}" + ("" if mm else "/no_im_start_end"),
                        "template": template, "mm_use_im_start_end": mm, "record": record,
                        "has_image": "image" in record}
                try:
                    prompt, ids, labels, mismatch = get_item(record, template, tok, mm)
                except (AssertionError, KeyError) as e:
                    case["error"] = f"{type(e).__name__}: {e}"
                else:
                    case.update(prompt=prompt, input_ids=ids, labels=labels, mismatch=mismatch,
                                trained=sum(1 for t in labels if t != IGNORE_INDEX))
                cases.append(case)

    golden = {
        "generated_by": "scripts/reference/make_data_fixtures.py",
        "transformers": transformers.__version__,
        "tokenizer": str(TOKENIZER.relative_to(ROOT)),
        "model_max_length": MODEL_MAX_LENGTH,
        "cases": cases,
    }
    # One case per line: reviewable diffs without a 300 KB indented file.
    head = json.dumps({k: v for k, v in golden.items() if k != "cases"}, ensure_ascii=False)[:-1]
    body = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    (OUT / "golden.json").write_text(f'{head}, "cases": [\n{body}\n]}}\n')
    for name, data in [("alpaca_converted.json", alpaca_conv), ("orca_converted.json", orca_conv),
                       ("pretrain_stripped.json", pretrain_stripped)]:
        (OUT / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")

    samples = [dict(total=t, n=n, seed=s, indices=sample_indices(t, n, s))
               for t, n, s in [(100, 10, 42), (100, 10, 0), (1000, 37, 7), (5, 5, 1), (3, 7, 1),
                               (158000, 20, 2**64 - 1)]]
    (OUT / "sample.json").write_text(json.dumps(samples, indent=1) + "\n")
    n_err = sum(1 for c in cases if "error" in c)
    n_mis = sum(1 for c in cases if c.get("mismatch"))
    print(f"wrote {len(cases)} cases ({n_err} errors, {n_mis} mismatches) to {OUT}")


if __name__ == "__main__":
    main()
