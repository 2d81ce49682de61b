#!/usr/bin/env python3
"""The loss that transformers 4.46.3's own `Trainer` logs, for sightline's `train_log.jsonl`
(issue 13 item 6).

Run from the repository root with the pinned stack (scripts/reference/requirements.txt), after
make_train_fixtures.py:

    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_trainer_log_fixtures.py

The real `transformers.Trainer` (not a hand loop) trains the `full` case of
tests/fixtures/train/: the tiny model of `base/`, its 10 micro-batches from golden.safetensors in
their order (a sequential sampler, a collator that hands each stored micro-batch over as it is:
`input_ids` and `labels`, no attention mask), per_device_train_batch_size 2,
gradient_accumulation_steps 2, adamw_torch, lr 1e-2, weight decay 0.1, warmup_ratio 0.2, cosine,
max_grad_norm 1.0, max_steps 10 (the fixture's schedule horizon), stopped after 5 optimizer
steps, logging_steps 1, CPU, f32.

What the Trainer logs (transformers 4.46.3 trainer.py):
  * `get_batch_samples`: num_items_in_batch = labels != -100 over the step's micro-batches,
    counted before the shift, because LlamaForCausalLM.forward takes **loss_kwargs
    (`model_accepts_loss_kwargs`);
  * `training_step` returns `loss.detach()` (sum CE / num_items_in_batch; not divided by
    gradient_accumulation_steps, since num_items_in_batch is not None);
  * `_inner_training_loop`: `tr_loss = tr_loss + tr_loss_step` per micro-batch (an f32 tensor);
  * `_maybe_log_save_evaluate`: `logs["loss"] = round(tr_loss.item() / (global_step -
    _globalstep_last_logged), 4)`, i.e. with logging_steps 1 the step's summed micro-batch losses,
    rounded to 4 decimals.

Recorded per step: `logged` (the Trainer's `log_history` loss, rounded), `tr_loss` (the same
number before rounding, taken from the tr_loss handed to `_maybe_log_save_evaluate`), the
micro-batch values `training_step` returned, `grad_norm` and `learning_rate` as logged. The
script checks that the Trainer's weights after 3 steps equal make_train_fixtures.py's hand loop
(`full.after.*`, to 1e-4 relative as the Rust parity tests hold sightline; 3e-5 seen), so
both saw the same batches in the same order.

Writes tests/fixtures/train/trainer_log.json.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.utils.data import Dataset, SequentialSampler  # noqa: E402
from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests/fixtures/train"
OUT = FIX / "trainer_log.json"
STEPS = 5
SNAPSHOT = 3


class MicroBatches(Dataset):
    """Each item is one stored micro-batch; the collator unwraps it (batch size 1 of batches)."""

    def __init__(self, tensors, n):
        self.items = [dict(input_ids=tensors[f"full.batch{i}.input_ids"],
                           labels=tensors[f"full.batch{i}.labels"]) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(items):
    assert len(items) == 1
    return {k: v.clone() for k, v in items[0].items()}


class Recording(Trainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.micro, self.tr_loss = [], []

    def _get_train_sampler(self):
        return SequentialSampler(self.train_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        out = super().training_step(model, inputs, num_items_in_batch)
        self.micro.append(dict(step=self.state.global_step + 1, loss=float(out),
                               num_items_in_batch=int(num_items_in_batch)))
        return out

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval):
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            self.tr_loss.append(dict(step=self.state.global_step, tr_loss=tr_loss.item(),
                                     steps_since_log=self.state.global_step - self._globalstep_last_logged))
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval)


class StopAfter(TrainerCallback):
    def __init__(self, trainer_ref):
        self.ref, self.snapshot = trainer_ref, None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == SNAPSHOT:
            self.snapshot = {n: p.detach().clone() for n, p in kw["model"].named_parameters()}
        if state.global_step >= STEPS:
            control.should_training_stop = True
        return control


def main():
    torch.set_num_threads(2)
    golden = json.loads((FIX / "golden.json").read_text())
    spec = golden["full"]
    assert spec["accum_loss"] == "tokens" and spec["accum"] == 2
    tensors = load_file(FIX / "golden.safetensors")
    model = LlamaForCausalLM.from_pretrained(FIX / "base", torch_dtype=torch.float32)
    data = MicroBatches(tensors, STEPS * spec["accum"])
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=1, gradient_accumulation_steps=spec["accum"],
            learning_rate=spec["lr"], weight_decay=spec["weight_decay"], warmup_ratio=spec["warmup_ratio"],
            lr_scheduler_type=spec["scheduler"], max_grad_norm=spec["max_grad_norm"],
            max_steps=spec["total_steps"], logging_steps=1, save_strategy="no", report_to=[],
            optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
            use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = Recording(model=model, args=args, train_dataset=data, data_collator=collate)
        assert trainer.model_accepts_loss_kwargs, "LlamaForCausalLM 4.46.3 takes **loss_kwargs"
        stop = StopAfter(trainer)
        trainer.add_callback(stop)
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert [h["step"] for h in logs] == list(range(1, STEPS + 1)), logs
    assert [t["step"] for t in trainer.tr_loss] == list(range(1, STEPS + 1))
    # The Trainer trained on the hand loop's batches: same weights after SNAPSHOT steps.
    worst = max(float(((p - tensors[f"full.after.{n}"]).abs() / tensors[f"full.after.{n}"].abs().clamp(min=0.1)).max())
                for n, p in stop.snapshot.items())
    print(f"Trainer vs make_train_fixtures.py weights after {SNAPSHOT} steps: worst rel {worst:.2e}", file=sys.stderr)
    assert worst < 1e-4, worst  # the Rust parity tests hold sightline to the same 1e-4
    steps = []
    for h, t in zip(logs, trainer.tr_loss):
        micro = [m for m in trainer.micro if m["step"] == h["step"]]
        assert len(micro) == spec["accum"] and t["steps_since_log"] == 1
        assert round(t["tr_loss"], 4) == h["loss"], (t, h)
        steps.append(dict(step=h["step"], logged=h["loss"], tr_loss=t["tr_loss"],
                          micro_losses=[m["loss"] for m in micro],
                          num_items_in_batch=micro[0]["num_items_in_batch"],
                          grad_norm=h["grad_norm"], learning_rate=h["learning_rate"]))
        print(steps[-1], file=sys.stderr)
    out = dict(versions=dict(torch=torch.__version__, transformers=transformers.__version__),
               script="scripts/reference/make_trainer_log_fixtures.py", case="full",
               logging_steps=1, gradient_accumulation_steps=spec["accum"], steps=steps)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
