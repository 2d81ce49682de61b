//! The logged loss (issue 13 item 6): under `accum_loss = "tokens"` a step's loss, what
//! `train_log.jsonl` records, equals the loss transformers 4.46.3's own `Trainer` logs for the
//! same run: the `full` fixture case (tiny LLaMA, accumulation 2) trained by the real
//! `transformers.Trainer` in `scripts/reference/make_trainer_log_fixtures.py`
//! (`tests/fixtures/train/trainer_log.json`). Under `"mean"` the logged loss stays the mean of
//! the micro-batch mean losses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use sightline_model::{Llama, LlamaConfig, Trainable, Weights};
use sightline_train::finetune::{group_loss, AccumLoss, Batch, OptimSettings, Trainer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train")
}

fn json(name: &str) -> Result<serde_json::Value> {
    let p = fixtures().join(name);
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The `full` case's trainer, settings and micro-batches, as `tests/parity.rs` builds them.
fn full_case() -> Result<(Trainer, Vec<Batch>, usize)> {
    let golden = json("golden.json")?;
    let g = &golden["full"];
    let f = |k: &str| g[k].as_f64().with_context(|| format!("full.{k}"));
    let settings = OptimSettings {
        learning_rate: f("lr")?,
        mm_projector_lr: None,
        weight_decay: f("weight_decay")?,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        lr_scheduler_type: serde_json::from_value(g["scheduler"].clone())?,
        warmup_steps: f("warmup_steps")? as usize,
        total_steps: f("total_steps")? as usize,
        max_grad_norm: g["max_grad_norm"].as_f64(),
        accum_loss: serde_json::from_value(g["accum_loss"].clone())?,
    };
    assert_eq!(settings.accum_loss, AccumLoss::Tokens);
    let dir = fixtures().join("base");
    let cfg_path = dir.join("config.json");
    let cfg = LlamaConfig::from_file(&cfg_path)?;
    let w = Weights::from_dir(&dir, DType::F32, &Device::Cpu)?;
    let model = Llama::new_trainable(&cfg, &w, &cfg_path, &Trainable::Full)?;
    let tensors =
        candle_core::safetensors::load(fixtures().join("golden.safetensors"), &Device::Cpu)?;
    let t = |name: String| -> Result<Tensor> {
        tensors
            .get(&name)
            .cloned()
            .with_context(|| format!("fixture tensor {name}"))
    };
    let n = (0..)
        .take_while(|i| tensors.contains_key(&format!("full.batch{i}.input_ids")))
        .count();
    let batches = (0..n)
        .map(|i| {
            Ok(Batch {
                input_ids: t(format!("full.batch{i}.input_ids"))?.to_dtype(DType::U32)?,
                labels: t(format!("full.batch{i}.labels"))?,
                image: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let accum = g["accum"].as_u64().context("full.accum")? as usize;
    Ok((Trainer::new(model, None, settings), batches, accum))
}

#[test]
fn tokens_rule_logs_what_hf_trainer_logs() -> Result<()> {
    let reference = json("trainer_log.json")?;
    let steps = reference["steps"].as_array().context("steps")?;
    assert_eq!(reference["versions"]["transformers"], "4.46.3");
    let (mut tr, batches, accum) = full_case()?;
    assert_eq!(
        reference["gradient_accumulation_steps"].as_u64(),
        Some(accum as u64)
    );
    let mut worst = 0.0f64;
    for (i, want) in steps.iter().enumerate() {
        let report = tr.train_step(&batches[i * accum..(i + 1) * accum])?;
        let got = report.loss.context("a step with targets logs a loss")?;
        let tr_loss = want["tr_loss"].as_f64().context("tr_loss")?;
        let logged = want["logged"].as_f64().context("logged")?;
        let rel = (got - tr_loss).abs() / tr_loss.abs();
        worst = worst.max(rel);
        assert!(
            rel < 1e-6,
            "step {}: logged loss {got} vs Trainer's tr_loss {tr_loss} (rel {rel:.2e})",
            i + 1
        );
        // What log_history shows: the same number rounded to 4 decimals.
        assert!(
            (got - logged).abs() <= 5e-5 + 1e-9,
            "step {}: {got} vs Trainer's logged {logged}",
            i + 1
        );
        // The old rule (the plain mean of the micro-batch means) is not what the Trainer logs
        // on this fixture, so the test tells the two apart.
        let mean = report.losses.iter().sum::<f64>() / report.losses.len() as f64;
        assert!(
            (mean - tr_loss).abs() / tr_loss > 1e-3,
            "step {}: the fixture cannot tell the rules apart",
            i + 1
        );
        let norm = want["grad_norm"].as_f64().context("grad_norm")?;
        assert!(
            (report.grad_norm - norm).abs() / norm < 1e-4,
            "step {}: grad norm {} vs Trainer's {norm}",
            i + 1,
            report.grad_norm
        );
    }
    eprintln!(
        "{} steps: logged loss equals Trainer's tr_loss, worst rel diff {worst:.2e}",
        steps.len()
    );
    Ok(())
}

#[test]
fn mean_rule_keeps_the_mean_of_micro_batch_means() {
    let losses = [3.0, f64::NAN, 5.0];
    let targets = [10, 0, 30];
    assert_eq!(
        group_loss(AccumLoss::Mean, &losses, &targets, 45),
        Some(4.0)
    );
    // tokens: (3·10 + 5·30) / 45, the label count of the group (before the shift).
    assert_eq!(
        group_loss(AccumLoss::Tokens, &losses, &targets, 45),
        Some(180.0 / 45.0)
    );
    assert_eq!(group_loss(AccumLoss::Tokens, &[f64::NAN], &[0], 3), None);
    assert_eq!(group_loss(AccumLoss::Mean, &[f64::NAN], &[0], 3), None);
}
