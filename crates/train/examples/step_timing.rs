//! Tokens/s of one training step (forward + backward + AdamW) on a random LLaMA, for
//! comparison with PyTorch in `bench/`. Not a test: timings are printed, never asserted.
//!
//! ```sh
//! cargo run --release -p sightline-train --example step_timing -- [hidden layers heads kv_heads vocab batch seq steps mode]
//! # mode: full | lora; defaults: 256 4 8 4 4096 4 128 5 full
//! ```

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use sightline_model::{LlamaConfig, Weights};
use sightline_train::finetune::{AccumLoss, Batch, OptimSettings, Trainer};
use sightline_train::lora::LoraSpec;
use sightline_train::model::{TrainLlama, Trainable};
use sightline_train::schedule::SchedulerType;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| -> Result<usize> {
        args.get(i)
            .map_or(Ok(d), |s| s.parse().context("numeric argument"))
    };
    let (hs, layers, heads, kvh, vocab) = (
        num(0, 256)?,
        num(1, 4)?,
        num(2, 8)?,
        num(3, 4)?,
        num(4, 4096)?,
    );
    let (batch, seq, steps) = (num(5, 4)?, num(6, 128)?, num(7, 5)?);
    let mode = args.get(8).map_or("full", |s| s.as_str());
    let is = hs * 8 / 3;
    let cfg_json = serde_json::json!({
        "hidden_size": hs, "intermediate_size": is, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kvh, "vocab_size": vocab,
        "max_position_embeddings": seq.max(2048),
    });
    let path = std::path::Path::new("random-config.json");
    let cfg = LlamaConfig::from_json(&cfg_json.to_string(), path)?;
    let dev = Device::Cpu;
    let d = cfg.head_dim();
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize]| -> Result<()> {
        let x = if shape.len() == 1 {
            Tensor::ones(shape, DType::F32, &dev)?
        } else {
            Tensor::randn(0f32, 0.02, shape, &dev)?
        };
        t.insert(name, x);
        Ok(())
    };
    put("model.embed_tokens.weight".into(), &[vocab, hs])?;
    put("lm_head.weight".into(), &[vocab, hs])?;
    put("model.norm.weight".into(), &[hs])?;
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        put(format!("{p}.self_attn.q_proj.weight"), &[heads * d, hs])?;
        put(format!("{p}.self_attn.k_proj.weight"), &[kvh * d, hs])?;
        put(format!("{p}.self_attn.v_proj.weight"), &[kvh * d, hs])?;
        put(format!("{p}.self_attn.o_proj.weight"), &[hs, heads * d])?;
        put(format!("{p}.mlp.gate_proj.weight"), &[is, hs])?;
        put(format!("{p}.mlp.up_proj.weight"), &[is, hs])?;
        put(format!("{p}.mlp.down_proj.weight"), &[hs, is])?;
        put(format!("{p}.input_layernorm.weight"), &[hs])?;
        put(format!("{p}.post_attention_layernorm.weight"), &[hs])?;
    }
    let w = Weights::from_tensors(t, path.into(), DType::F32, &dev);
    let trainable = match mode {
        "full" => Trainable::Full,
        "lora" => Trainable::Lora(LoraSpec {
            dropout: 0.0,
            ..LoraSpec::paper(0)
        }),
        other => anyhow::bail!("mode `{other}`: expected full or lora"),
    };
    let model = TrainLlama::new(&cfg, &w, path, &trainable)?;
    let settings = OptimSettings {
        learning_rate: 1e-4,
        mm_projector_lr: None,
        weight_decay: 0.0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        lr_scheduler_type: SchedulerType::ConstantWithWarmup,
        warmup_steps: 0,
        total_steps: steps,
        max_grad_norm: Some(1.0),
        accum_loss: AccumLoss::Tokens,
    };
    let mut tr = Trainer::new(model, None, settings);
    let ids = Tensor::rand(0f32, vocab as f32, (batch, seq), &dev)?.to_dtype(DType::U32)?;
    let labels = ids.to_dtype(DType::I64)?;
    let group = [Batch {
        input_ids: ids,
        labels,
        image: None,
    }];
    tr.train_step(&group)?; // warm-up
    let start = Instant::now();
    for _ in 0..steps {
        tr.train_step(&group)?;
    }
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    println!(
        "mode {mode} hidden {hs} layers {layers} vocab {vocab} batch {batch} seq {seq}: {:.3} s/step, {:.0} tokens/s",
        secs,
        (batch * seq) as f64 / secs
    );
    Ok(())
}
