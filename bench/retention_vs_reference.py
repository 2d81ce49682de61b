#!/usr/bin/env python3
"""MMLU (the paper's script) and MathQA (4-shot, the 0.3 harness) end to end: sightline vs the
reference implementations, on the same model, documents and machine, in one run. Prints wall
times, the ratio (reference seconds / sightline seconds) and both runs' accuracies.

    cargo build --release        # target/release/sightline (this script never builds it)
    .venv-ref/bin/python bench/retention_vs_reference.py LM_EVAL_030_WHEEL [--docs 12] [--threads 2] \
        [--model random|smollm2] [--dtype f32|bf16]

Model: --model random (default) is the random 134M LLaMA of bench/score_vs_transformers.py
(bench/out/llama-134m, 2,048 positions, a 32,000-token LLaMA tokenizer), built there if missing;
--model smollm2 the real pretrained SmolLM2-135M-Instruct of bench/smollm2.py. --dtype sets both
sides' compute dtype (transformers `torch_dtype`, HFLM `dtype`, sightline `--dtype`). Besides wall
times the table gives CPU seconds (this process's for the reference, the child's for sightline),
which move less than wall time when other jobs share the machine.

References (as in scripts/reference/make_retention_fixtures.py, whose helpers this imports):
- MMLU: the logic of the paper's llava/eval/mmlu/evaluate_mmlu.py on transformers 4.46.3 --
  pandas read_csv, k reduced while the prompt is over 2,048 tokens, `model.generate(**inputs,
  max_new_tokens=2)` one question at a time -- with the model directory's fast tokenizer (the
  script's slow LlamaTokenizer needs a tokenizer.model this directory does not have), and the
  model's BOS (config.json `bos_token_id`) put first where that tokenizer does not add it, as the
  script's LlamaTokenizer does and sightline does. Timed: model load + the question loop.
- MathQA: PyPI lm_eval 0.3.0's MathQA task and `evaluate` loop (num_fewshot 4, seed-42 shuffle
  and draws) answered by lm_eval 0.4.9.1 HFLM(add_bos_token=False, batch 8). The few-shot pool is
  tests/fixtures/retention/mathqa_train_sample.json (64 real MathQA dev records standing in for
  the unavailable train split). Timed: HFLM construction (model load) + `evaluate`.
Documents: the first --docs of the seed-42 shuffle for both (sightline --limit, the harness's
limit, and the same shuffle for MMLU's 14,042 questions). The shuffle spreads MMLU's questions
over subjects, so the first MMLU row has almost no shared 5-shot prefix; the second row takes
the first --docs of one subject's shuffled questions (--subject; sightline reads them from a
--data-dir whose other subjects' test files are empty), which is what a full run looks like. sightline: the whole
`sightline --threads T eval ...` process.
"""
import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out"
HFLM_DTYPES = {"f32": "float32", "bf16": "bfloat16"}
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "scripts/reference"))
from decoder_before_after import run_timed  # noqa: E402


def torch_dtypes():
    import torch
    return {"f32": torch.float32, "bf16": torch.bfloat16}


def mmlu_reference(model_dir, n, dtype, subject=None):
    import numpy as np
    import pandas as pd
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    data = ROOT / "data/mmlu"
    t0, c0 = time.perf_counter(), time.process_time()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch_dtypes()[dtype])
    model.eval()
    bos = model.config.bos_token_id

    def encode(prompt):
        ids = tok(prompt).input_ids
        return ids if ids[:1] == [bos] else [bos] + ids
    choices = ["A", "B", "C", "D"]

    def format_example(df, idx, include_answer=True):
        prompt = df.iloc[idx, 0]
        for j in range(4):
            prompt += "\n{}. {}".format(choices[j], df.iloc[idx, j + 1])
        prompt += "\nAnswer:"
        if include_answer:
            prompt += " {}\n\n".format(df.iloc[idx, 5])
        return prompt

    def gen_prompt(dev, subject, k):
        p = "The following are multiple choice questions (with answers) about {}.\n\n".format(
            "".join(" " + e for e in subject.split("_")))
        for i in range(k):
            p += format_example(dev, i)
        return p

    subjects = sorted(f.split("_test.csv")[0] for f in os.listdir(data / "test") if "_test.csv" in f)
    if subject:
        subjects = [subject]
    items = []
    for s in subjects:
        dev = pd.read_csv(data / "dev" / f"{s}_dev.csv", header=None)[:5]
        test = pd.read_csv(data / "test" / f"{s}_test.csv", header=None)
        items += [(s, dev, test, i) for i in range(test.shape[0])]
    order = list(range(len(items)))
    random.Random(42).shuffle(order)
    cors = []
    for j in order[:n]:
        s, dev, test, i = items[j]
        k = 5
        end = format_example(test, i, include_answer=False)
        prompt = gen_prompt(dev, s, k) + end
        while not len(encode(prompt)) <= 2048 and k > 0:
            k -= 1
            prompt = gen_prompt(dev, s, k) + end
        ids = torch.tensor([encode(prompt)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
        pred = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        cors.append(pred.strip().startswith(test.iloc[i, 5]))
    return time.perf_counter() - t0, time.process_time() - c0, float(np.mean(cors))


def mathqa_reference(model_dir, wheel, n, batch_size, dtype):
    import make_retention_fixtures as ref
    from lm_eval.models.huggingface import HFLM
    ref.LIMIT = n
    mods = ref.load_lm_eval03(wheel)
    tasks, _ = ref.make_tasks(mods)
    task = tasks["mathqa"][0]
    t0, c0 = time.perf_counter(), time.process_time()
    lm = HFLM(pretrained=str(model_dir), backend="causal", device="cpu", dtype=HFLM_DTYPES[dtype],
              batch_size=batch_size, add_bos_token=False, prefix_token_id=2)
    res = mods[0].evaluate(lm=ref.Adapter(lm, lm), task_dict={"mathqa": task}, num_fewshot=4, limit=n)
    return time.perf_counter() - t0, time.process_time() - c0, res["results"]["mathqa"]


def one_subject_data(subject):
    """A --data-dir whose MMLU holds one subject's questions (the others' test files empty)."""
    d = OUT / f"mmlu_only_{subject}"
    for part in ["dev", "test"]:
        (d / "mmlu" / part).mkdir(parents=True, exist_ok=True)
        for f in (ROOT / "data/mmlu" / part).iterdir():
            keep = part == "dev" or f.name == f"{subject}_test.csv"
            (d / "mmlu" / part / f.name).write_bytes(f.read_bytes() if keep else b"")
    return d


def sightline(model_dir, threads, batch_size, dtype, args, name):
    out = OUT / f"retention_{name}"
    cmd = [str(ROOT / "target/release/sightline"), "--threads", str(threads), "eval", "--model", str(model_dir),
           "--dtype", dtype, "--batch-size", str(batch_size), "--output", str(out), "--overwrite", *args]
    dt, cpu = run_timed(cmd)
    return dt, cpu, json.loads((out / "results.json").read_text())["results"], cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", help="lm_eval-0.3.0-py3-none-any.whl (pip download --no-deps lm_eval==0.3.0)")
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--subject", default="high_school_psychology",
                    help="MMLU subject of the second MMLU row (questions sharing one 5-shot prefix)")
    ap.add_argument("--model", default="random", choices=["random", "smollm2"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch
    import transformers
    import lm_eval
    from score_vs_transformers import build_model
    from smollm2 import smollm2_dir
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if a.model == "smollm2":
        model_dir, model_name = smollm2_dir(), "SmolLM2-135M-Instruct (real weights)"
    else:
        model_dir, model_name = OUT / "llama-134m", "random LLaMA 134M"
        build_model(model_dir)
    train = ROOT / "tests/fixtures/retention/mathqa_train_sample.json"

    rows = []
    sl = lambda args, name: sightline(model_dir, a.threads, a.batch_size, a.dtype, args, name)  # noqa: E731
    t_ref, c_ref, acc_ref = mmlu_reference(model_dir, a.docs, a.dtype)
    t_sl, c_sl, res, cmd = sl(["--tasks", "mmlu", "--limit", str(a.docs)], "mmlu")
    rows.append(("mmlu", t_ref, c_ref, t_sl, c_sl, {"acc": acc_ref}, {"acc": res["mmlu"]["acc,none"]}, cmd))
    t_ref, c_ref, acc_ref = mmlu_reference(model_dir, a.docs, a.dtype, a.subject)
    t_sl, c_sl, res, cmd = sl(["--tasks", "mmlu", "--limit", str(a.docs), "--data-dir",
                               str(one_subject_data(a.subject))], "mmlu_subject")
    rows.append((f"mmlu ({a.subject} only)", t_ref, c_ref, t_sl, c_sl, {"acc": acc_ref},
                 {"acc": res["mmlu"]["acc,none"]}, cmd))
    t_ref, c_ref, r_ref = mathqa_reference(model_dir, a.wheel, a.docs, a.batch_size, a.dtype)
    t_sl, c_sl, res, cmd = sl(["--tasks", "mathqa", "--mathqa-train", str(train), "--limit", str(a.docs)], "mathqa")
    rows.append(("mathqa", t_ref, c_ref, t_sl, c_sl, {m: r_ref[m] for m in ["acc", "acc_norm"]},
                 {m: res["mathqa"][m + ",none"] for m in ["acc", "acc_norm"]}, cmd))

    print(f"model: {model_name} {a.dtype} ({model_dir.relative_to(ROOT)}) | {a.docs} documents per task "
          f"(the first of the seed-42 shuffle, the same for both) | batch {a.batch_size} | {a.threads} threads")
    print(f"stack: torch {torch.__version__}, transformers {transformers.__version__}, lm_eval {lm_eval.__version__} "
          f"(scoring) + lm_eval 0.3.0 (MathQA task code)")
    print(f"load average at the end: {os.getloadavg()}")
    print("| task | reference s (CPU s) | sightline s (CPU s) | ratio | ratio by CPU s | reference | sightline |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    for name, tr, cr, ts, cs, mr, ms, _ in rows:
        fmt = lambda m: ", ".join(f"{k} {v:.6f}" for k, v in m.items())  # noqa: E731
        print(f"| {name} | {tr:.2f} ({cr:.1f}) | {ts:.2f} ({cs:.1f}) | **{tr / ts:.2f}** | {cr / cs:.2f} "
              f"| {fmt(mr)} | {fmt(ms)} |")
    for name, *_, cmd in rows:
        print(f"sightline {name}: " + " ".join(cmd).replace(str(ROOT) + "/", ""))


if __name__ == "__main__":
    main()
