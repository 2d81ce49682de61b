#!/usr/bin/env python3
"""Goldens for the multimodal evaluation harness (tests/fixtures/mm_eval/golden.json).

- `prompts`: the prompt Sight-Beyond-Text @47f96a32 builds (spec/multimodal-eval.md E1.5:
  `conv_templates["v0"]`, its canned exchange, demo pairs, `"<image>\\n" + query`,
  `get_prompt()`), and the `greedy` protocol's variant with lmms-eval's short-answer hint,
  for a few bundled POPE and sketchy questions and one demo pair.
- `pope_greedy`: transformers 4.46.3 `LlavaForConditionalGeneration.generate` (greedy, at
  most 16 new tokens, stop at `###`) on tests/fixtures/mm_eval/tiny-llava-hf-2k for the first
  6 records of each POPE split after lm-eval's `random.Random(42).shuffle`, every image being
  data/llava/examples/extreme_ironing.jpg: what `sightline eval --tasks pope --limit 6
  --protocol greedy` must answer (text before `###`, stripped).

Run from the repository root: /work/venv/ref/bin/python scripts/reference/make_mm_eval_fixtures.py
"""

import json
import os
import random

import torch
from PIL import Image
from transformers import (AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration,
                          StoppingCriteria, StoppingCriteriaList)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests/fixtures/mm_eval/tiny-llava-hf-2k")
PHOTO = os.path.join(ROOT, "data/llava/examples/extreme_ironing.jpg")
OUT = os.path.join(ROOT, "tests/fixtures/mm_eval/golden.json")

# LLaVA conversation.py (SBT @47f96a32): conv_vicuna_v0, SeparatorStyle.SINGLE, sep "###".
S0 = ("A chat between a curious human and an artificial intelligence assistant. "
      "The assistant gives helpful, detailed, and polite answers to the human's questions.")
Q_R = "What are the key differences between renewable and non-renewable energy sources?"
A_R = (
    "Renewable energy sources are those that can be replenished naturally in a relatively "
    "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
    "Non-renewable energy sources, on the other hand, are finite and will eventually be "
    "depleted, such as coal, oil, and natural gas. Here are some key differences between "
    "renewable and non-renewable energy sources:\n"
    "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
    "energy sources are finite and will eventually run out.\n"
    "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
    "than non-renewable sources, which can lead to air and water pollution, greenhouse gas "
    "emissions, and other negative effects.\n"
    "3. Cost: Renewable energy sources can be more expensive to initially set up, but they "
    "typically have lower operational costs than non-renewable sources.\n"
    "4. Reliability: Renewable energy sources are often more reliable and can be used in more "
    "remote locations than non-renewable sources.\n"
    "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to "
    "different situations and needs, while non-renewable sources are more rigid and "
    "inflexible.\n"
    "6. Sustainability: Renewable energy sources are more sustainable over the long term, "
    "while non-renewable sources are not, and their depletion can lead to economic and social "
    "instability.\n")
GREEDY_SUFFIX = "\nAnswer the question using a single word or phrase."


def get_prompt(messages):
    """Conversation.get_prompt() for SeparatorStyle.SINGLE."""
    ret = S0 + "###"
    for role, message in messages:
        if message:
            ret += role + ": " + message + "###"
        else:
            ret += role + ":"
    return ret


def sbt_prompt(query, demos=()):
    """get_model_output.py: canned v0 exchange, demos, then the image query."""
    messages = [("Human", Q_R), ("Assistant", A_R)]
    for q, a in demos:
        messages += [("Human", q), ("Assistant", a)]
    messages += [("Human", "<image>\n" + query), ("Assistant", None)]
    return get_prompt(messages)


def pope_records(split):
    with open(os.path.join(ROOT, f"data/pope/coco_pope_{split}.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def first_after_shuffle(n, k):
    order = list(range(n))
    random.Random(42).shuffle(order)
    return order[:k]


def main():
    sketchy = json.load(open(os.path.join(ROOT, "data/unicorn/sketchy-vqa/sketchy-vqa.json")))
    questions = [pope_records("random")[0]["text"].strip(), sketchy[0]["question"],
                 "  Is there a\ttab and a unicode é? "]
    prompts = []
    for q in questions:
        prompts.append({"question": q, "demos": [], "sbt": sbt_prompt(q),
                        "greedy": sbt_prompt(q + GREEDY_SUFFIX)})
    demos = [["What is in the sky?", "A blimp."]]
    prompts.append({"question": questions[0], "demos": demos,
                    "sbt": sbt_prompt(questions[0], demos),
                    "greedy": sbt_prompt(questions[0] + GREEDY_SUFFIX, demos)})

    model = LlavaForConditionalGeneration.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(MODEL)
    proc = CLIPImageProcessor.from_pretrained(MODEL)
    pixels = proc(Image.open(PHOTO).convert("RGB"), return_tensors="pt")["pixel_values"]
    image_id = model.config.image_token_index
    vc = model.config.vision_config
    n_rows = (vc.image_size // vc.patch_size) ** 2

    class StopAt(StoppingCriteria):
        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            return "###" in tok.decode(input_ids[0, self.start:], skip_special_tokens=True)

    pope = {}
    for split in ["random", "popular", "adversarial"]:
        recs = pope_records(split)
        out = []
        for i in first_after_shuffle(len(recs), 6):
            prompt = sbt_prompt(recs[i]["text"].strip() + GREEDY_SUFFIX)
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            pos = (ids[0] == image_id).nonzero()[0].item()
            ids = torch.cat([ids[:, :pos], torch.full((1, n_rows), image_id), ids[:, pos + 1:]], 1)
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     pixel_values=pixels, do_sample=False, max_new_tokens=16,
                                     stopping_criteria=StoppingCriteriaList([StopAt(ids.shape[1])]),
                                     pad_token_id=tok.eos_token_id)
            text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            out.append({"record": i, "answer": text.split("###")[0].strip()})
        pope[f"pope_{split}"] = out

    golden = {"source": "scripts/reference/make_mm_eval_fixtures.py, transformers 4.46.3",
              "prompts": prompts, "pope_greedy": pope}
    with open(OUT, "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
