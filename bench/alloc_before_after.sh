#!/bin/bash
# Keeping freed memory in training (crates/train/src/alloc.rs), before/after on real pretrained
# models: the same build with MIMALLOC_PURGE_DELAY=1000 (mimalloc 3.3's default: before) and
# without it (after), alternated. SmolLM2-135M-Instruct f32 step through the step_timing example
# (bench/smollm2.py and decoder_before_after.py --model smollm2 make the model and batch), and
# stories260K (bench/bf16_loss_curve.py makes it) through `sightline train` in f32 and bf16.
# Needs: cargo build --release -p sightline -p sightline-train --example step_timing
cd "$(dirname "$0")/.."
S=target/release/examples/step_timing
for round in 1 2; do
 for mode in full lora; do
  for when in before after; do
   envs=""; [ $when = before ] && envs="MIMALLOC_PURGE_DELAY=1000"
   r=$(env $envs $S --model bench/out/smollm2-135m --batch-file bench/out/train-batch-smollm2-4x128.safetensors --batch 4 --seq 128 --steps 3 --mode $mode 2>/dev/null | tail -1)
   echo "smollm2 f32 $mode $when round $round: $r" | python3 -c "
import sys,json; l=sys.stdin.read(); h,j=l.split(': ',1); d=json.loads(j)
print(h, {k:d[k] for k in d if k in ('seconds_per_step','tokens_per_s','peak_rss_kib')})"
  done
 done
done
for round in 1 2; do
 for dtype in false true; do
  for when in before after; do
   out=bench/out/alloc-$when-$dtype; rm -rf $out
   envs=""; [ $when = before ] && envs="MIMALLOC_PURGE_DELAY=1000"
   env $envs target/release/sightline --threads 2 train --config configs/text-only.toml model_name_or_path=bench/out/bf16-loss-curve/stories260k output_dir=$out max_steps=100 learning_rate=1e-3 per_device_train_batch_size=4 gradient_accumulation_steps=1 num_train_epochs=1000 bf16=$dtype save_steps=1000000 >/dev/null 2>&1 || echo FAIL
   python3 -c "
import json
rows=[json.loads(l) for l in open('$out/train_log.jsonl')][1:]
s=sum(r['seconds'] for r in rows)
print('stories260k bf16=$dtype $when round $round: %.4f s/step' % (s/len(rows)))"
  done
 done
done
