//! Tokens/s and peak memory of the training step (forward + backward + clip + AdamW, f32) for
//! `bench/train_step_vs_torch.py`, which runs PyTorch on the same checkpoint and batch and
//! compares. Not a test: timings are printed, never asserted.
//!
//! ```sh
//! cargo run --release -p sightline-train --example step_timing -- \
//!     --model DIR [--batch-file F] [--batch 4] [--seq 256] [--steps 3] [--mode full|lora] \
//!     [--checkpointing]
//! ```
//!
//! `--model` is an HF LLaMA checkpoint directory (config.json + safetensors); `--batch-file` a
//! safetensors file with `input_ids` `[batch, seq]` (i64), used as the labels too (the bench
//! writes it so that both sides see the same tokens); without it the ids are drawn at random.
//! The last line of output is one JSON object: seconds per step, tokens/s, the losses, and the
//! process's peak resident memory (`VmHWM`).
//!
//! The global allocator is mimalloc, as in the `sightline` binary: candle allocates fresh
//! tensors per op and the system allocator's page faults cost a third of a step; freed memory is
//! kept for reuse as `sightline train` keeps it (`sightline_train::alloc`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use sightline_model::lora::LoraSpec;
use sightline_model::{Llama, Trainable};
use sightline_model::{LlamaConfig, Weights};
use sightline_train::finetune::{AccumLoss, Batch, OptimSettings, Trainer};
use sightline_train::schedule::SchedulerType;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    model: PathBuf,
    batch_file: Option<PathBuf>,
    batch: usize,
    seq: usize,
    steps: usize,
    mode: String,
    checkpointing: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        model: PathBuf::new(),
        batch_file: None,
        batch: 4,
        seq: 256,
        steps: 3,
        mode: "full".into(),
        checkpointing: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--checkpointing" {
            a.checkpointing = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag} {value}"))
        };
        match flag.as_str() {
            "--model" => a.model = value.clone().into(),
            "--batch-file" => a.batch_file = Some(value.clone().into()),
            "--batch" => a.batch = num()?,
            "--seq" => a.seq = num()?,
            "--steps" => a.steps = num()?,
            "--mode" => a.mode = value.clone(),
            other => bail!("unknown flag {other}"),
        }
    }
    if a.model.as_os_str().is_empty() {
        bail!("--model DIR is required");
    }
    Ok(a)
}

/// Peak resident set of this process in KiB (`VmHWM` of /proc/self/status; 0 elsewhere).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    sightline_kernels::park_idle_candle_workers();
    sightline_train::alloc::keep_freed_memory();
    let a = parse()?;
    let dev = Device::Cpu;
    let cfg_path = a.model.join("config.json");
    let cfg = LlamaConfig::from_file(&cfg_path)?;
    let w = Weights::from_dir(&a.model, DType::F32, &dev)?;
    let trainable = match a.mode.as_str() {
        "full" => Trainable::Full,
        "lora" => Trainable::Lora(LoraSpec {
            dropout: 0.0,
            ..LoraSpec::paper(0)
        }),
        other => bail!("mode `{other}`: expected full or lora"),
    };
    let model = Llama::new_trainable(&cfg, &w, &cfg_path, &trainable)?;
    drop(w);
    let settings = OptimSettings {
        learning_rate: 1e-4,
        mm_projector_lr: None,
        weight_decay: 0.0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        lr_scheduler_type: SchedulerType::ConstantWithWarmup,
        warmup_steps: 0,
        total_steps: a.steps + 1,
        max_grad_norm: Some(1.0),
        accum_loss: AccumLoss::Mean,
    };
    let mut tr = Trainer::new(model, None, settings);
    tr.set_gradient_checkpointing(a.checkpointing);
    let ids = match &a.batch_file {
        Some(f) => {
            let t = candle_core::safetensors::load(f, &dev)?;
            t.get("input_ids")
                .context("batch file has no input_ids")?
                .clone()
        }
        None => Tensor::rand(0f32, cfg.vocab_size as f32, (a.batch, a.seq), &dev)?
            .to_dtype(DType::I64)?,
    };
    let (b, t) = ids.dims2()?;
    let group = [Batch {
        input_ids: ids.to_dtype(DType::U32)?,
        labels: ids.to_dtype(DType::I64)?,
        image: None,
    }];
    let mut losses = vec![tr.train_step(&group)?.losses[0]]; // warm-up, not timed
    let start = Instant::now();
    for _ in 0..a.steps {
        losses.push(tr.train_step(&group)?.losses[0]);
    }
    let secs = start.elapsed().as_secs_f64() / a.steps as f64;
    let tokens_per_s = (b * t) as f64 / secs;
    eprintln!(
        "sightline mode {} batch {b} seq {t} checkpointing {}: {secs:.3} s/step, {tokens_per_s:.0} tokens/s",
        a.mode, a.checkpointing
    );
    println!(
        "{}",
        serde_json::json!({
            "system": "sightline",
            "mode": a.mode,
            "checkpointing": a.checkpointing,
            "batch": b,
            "seq": t,
            "steps": a.steps,
            "secs_per_step": secs,
            "tokens_per_s": tokens_per_s,
            "losses": losses,
            "peak_rss_kib": peak_rss_kib(),
        })
    );
    Ok(())
}
