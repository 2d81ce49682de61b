#!/usr/bin/env python3
"""POPE slice: `sightline eval` vs a Python reference pipeline on the same tiny LLaVA.

Both sides answer the same POPE questions (the first N of `pope_random` after sightline's
seed-42 shuffle, read back from sightline's samples log) with the same v0 prompt (the
`greedy` protocol), the same image and greedy decoding (at most 16 new tokens, stop at `###`):

- sightline: one `sightline eval --tasks pope_random --protocol greedy` process (model load
  included), batched generation with a KV cache;
- reference: transformers' `LlavaForConditionalGeneration.generate` one prompt at a time (as
  Sight-Beyond-Text's harness asserts batch size 1), `LlavaProcessor` for pixels and tokens,
  model load included.

Images: every POPE image name links to `data/llava/examples/extreme_ironing.jpg` (COCO is not
bundled), so the vision work is real but the answers are meaningless: the tiny model is random.
The script also reports how many answers (text before `###`) agree between the two sides.

Run from the repository root with the reference venv:

    cargo build --release -p sightline
    /work/venv/ref/bin/python bench/pope_vs_reference.py --limit 100 \
        --sightline target/release/sightline

Needs torch, transformers 4.46.3, pillow (scripts/reference/requirements.txt).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests/fixtures/mm_eval/tiny-llava-hf-2k")
PHOTO = os.path.join(ROOT, "data/llava/examples/extreme_ironing.jpg")
POPE = os.path.join(ROOT, "data/pope/coco_pope_random.json")
MAX_NEW_TOKENS = 16  # sightline's greedy protocol


def image_root(tmp):
    d = os.path.join(tmp, "coco")
    os.makedirs(d)
    with open(POPE) as f:
        for line in f:
            name = json.loads(line)["image"]
            dest = os.path.join(d, name)
            if not os.path.exists(dest):
                os.symlink(PHOTO, dest)
    return d


def run_sightline(binary, images, out, limit, batch_size, threads):
    cmd = [binary, "eval", "--model", MODEL, "--tasks", "pope_random",
           "--image-root", images, "--limit", str(limit), "--protocol", "greedy",
           "--batch-size", str(batch_size), "--output", out, "--log-samples", "--overwrite"]
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    with open(os.path.join(out, "samples_pope_random.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    return elapsed, samples


def run_reference(samples, images, threads):
    import torch
    from PIL import Image
    from transformers import (AutoTokenizer, CLIPImageProcessor,
                              LlavaForConditionalGeneration, StoppingCriteria,
                              StoppingCriteriaList)

    class StopAt(StoppingCriteria):
        """Stops once the new text contains `###` (SBT's keyword check)."""

        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            return "###" in tok.decode(input_ids[0, self.start:], skip_special_tokens=True)

    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    model = LlavaForConditionalGeneration.from_pretrained(MODEL, torch_dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(MODEL)
    proc = CLIPImageProcessor.from_pretrained(MODEL)
    image_id = model.config.image_token_index
    n_rows = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    outs = []
    with torch.no_grad():
        for s in samples:
            prompt = s["arguments"][0]["context"]
            img = Image.open(os.path.join(images, s["doc"]["image"])).convert("RGB")
            pixels = proc(img, return_tensors="pt")["pixel_values"]
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            # One <image> token becomes the image's feature rows (what LlavaProcessor does
            # when it knows patch_size; the fixture's processor files predate that).
            pos = (ids[0] == image_id).nonzero()[0].item()
            ids = torch.cat([ids[:, :pos], torch.full((1, n_rows), image_id), ids[:, pos + 1:]], 1)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values=pixels, do_sample=False,
                                 max_new_tokens=MAX_NEW_TOKENS,
                                 stopping_criteria=StoppingCriteriaList([StopAt(ids.shape[1])]),
                                 pad_token_id=tok.eos_token_id)
            outs.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return time.perf_counter() - t, outs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="both sides; 0 = library default")
    ap.add_argument("--sightline", default=os.path.join(ROOT, "target/release/sightline"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = image_root(tmp)
        t_rs, samples = run_sightline(a.sightline, images, os.path.join(tmp, "out"),
                                      a.limit, a.batch_size, a.threads)
        t_py, outs = run_reference(samples, images, a.threads)
    cut = lambda s: s.split("###")[0].strip()
    agree = sum(cut(s["resps"][0]) == cut(o) for s, o in zip(samples, outs))
    print(f"questions: {len(samples)} (pope_random, greedy protocol, tiny-llava-hf-2k)")
    print(f"sightline ({os.path.relpath(a.sightline, ROOT)}, batch {a.batch_size}): {t_rs:.2f} s")
    print(f"python reference (transformers, batch 1): {t_py:.2f} s")
    print(f"ratio reference / sightline: {t_py / t_rs:.2f}x")
    print(f"answers agreeing (text before ###): {agree}/{len(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
