//! Whole runs through `sightline_train::run`: resuming gives the losses of an uninterrupted
//! run exactly, `save_total_limit` keeps the newest checkpoints, and bad settings fail before
//! the first step with a message naming the setting.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use sightline_train::config::TrainConfig;
use sightline_train::run::{run, Event, RunOptions, StepLog};

/// The repository root (tests run in the crate directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config(out: &Path, extra: &[&str]) -> Result<TrainConfig> {
    let r = root();
    let mut o = vec![
        format!(
            "model_name_or_path={:?}",
            r.join("tests/fixtures/train/base").display().to_string()
        ),
        format!(
            "data_path={:?}",
            r.join("data/training/sketch/sketch_instruct_text.json")
                .display()
                .to_string()
        ),
        format!("output_dir={:?}", out.display().to_string()),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    Ok(TrainConfig::from_toml(
        &r.join("configs/text-only.toml"),
        &o,
    )?)
}

fn losses(out: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(out.join("train_log.jsonl"))?;
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn go(cfg: &TrainConfig, resume: bool, stop_after: Option<usize>) -> Result<()> {
    run(
        cfg,
        &RunOptions {
            device: Device::Cpu,
            resume,
            stop_after,
        },
        &mut |_e: Event| {},
    )?;
    Ok(())
}

/// LoRA with dropout (so the dropout stream must be restored too), several epochs (so the
/// epoch order must be), accumulation and a schedule: an interrupted and resumed run logs the
/// same losses, learning rates and gradient norms, bit for bit, and saves the same adapter.
#[test]
fn resume_gives_identical_losses() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let extra = [
        "lora_enable=true",
        "lora_r=4",
        "lora_alpha=8",
        "lora_dropout=0.1",
        "learning_rate=1e-2",
        "num_train_epochs=3",
        "per_device_train_batch_size=4",
        "gradient_accumulation_steps=2",
        "save_steps=2",
        "save_total_limit=2",
    ];
    let a = dir.path().join("a");
    go(&config(&a, &extra)?, false, None)?;
    let b = dir.path().join("b");
    let cfg_b = config(&b, &extra)?;
    go(&cfg_b, false, Some(5))?;
    assert_eq!(losses(&b)?.len(), 5);
    go(&cfg_b, true, None)?;
    let (la, lb) = (losses(&a)?, losses(&b)?);
    // HF's arithmetic: 7 micro-batches // 2 = 3 steps per epoch × 3 epochs = 9 steps, while
    // the loop steps 4 times per epoch (the 7th micro-batch alone), so the run ends in epoch 3.
    assert_eq!(la.len(), 9);
    assert!((la[8].epoch - 2.25).abs() < 1e-12, "{}", la[8].epoch);
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(
            (x.step, x.loss, x.lr, x.grad_norm, x.tokens),
            (y.step, y.loss, y.lr, y.grad_norm, y.tokens),
            "step {}",
            x.step
        );
    }
    let wa = std::fs::read(a.join("adapter_model.safetensors"))?;
    let wb = std::fs::read(b.join("adapter_model.safetensors"))?;
    assert!(wa == wb, "the final adapters differ");
    // save_total_limit = 2: only the two newest checkpoints remain.
    let mut cps: Vec<String> = std::fs::read_dir(&a)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    cps.sort();
    assert_eq!(cps, ["checkpoint-6", "checkpoint-8"]);
    Ok(())
}

/// A full fine-tune resumed from its checkpoint ends with the same weights.
#[test]
fn full_finetune_resumes_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let extra = ["max_steps=4", "save_steps=2", "learning_rate=1e-3"];
    let a = dir.path().join("a");
    go(&config(&a, &extra)?, false, None)?;
    let b = dir.path().join("b");
    let cfg_b = config(&b, &extra)?;
    go(&cfg_b, false, Some(3))?;
    go(&cfg_b, true, None)?;
    let wa = std::fs::read(a.join("model.safetensors"))?;
    let wb = std::fs::read(b.join("model.safetensors"))?;
    assert!(wa == wb, "the final weights differ");
    Ok(())
}

#[test]
fn refuses_to_reuse_an_output_dir_and_bad_settings() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("keep.txt"), "mine")?;
    let err = go(&config(&out, &["max_steps=1"])?, false, None)
        .err()
        .context("a non-empty output_dir must be refused")?;
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt"))?, "mine");

    let err = config(&out, &["learning_rat=1"])
        .err()
        .context("unknown key")?;
    assert!(err.to_string().contains("learning_rat"), "{err}");
    let err = config(&out, &["mm_projector_type=\"mlp3x\""])
        .err()
        .context("bad projector")?;
    assert!(err.to_string().contains("mlp3x"), "{err}");
    let err = go(&config(&dir.path().join("r2"), &[])?, true, None)
        .err()
        .context("resume without checkpoints")?;
    assert!(err.to_string().contains("checkpoint"), "{err}");
    Ok(())
}

/// `gradient_checkpointing = true` through the run config: the same losses and gradient norms
/// as without (the recomputation is exact), on a multimodal LoRA run with dropout.
#[test]
fn gradient_checkpointing_from_the_config_changes_no_number() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let r = root();
    let s = |p: &str| format!("{:?}", r.join(p).display().to_string());
    let extra = |out: &Path, ckpt: bool| -> Vec<String> {
        vec![
            format!("model_name_or_path={}", s("tests/fixtures/train/base")),
            format!("vision_tower={}", s("tests/fixtures/llava/tiny-clip")),
            format!(
                "data_path={}",
                s("data/training/sketch/sketch_instruct.json")
            ),
            format!("image_folder={}", s("data/unicorn/sketchy-vqa/images")),
            format!("output_dir={:?}", out.display().to_string()),
            "max_steps=2".into(),
            "lora_enable=true".into(),
            "lora_r=4".into(),
            "lora_dropout=0.2".into(),
            "learning_rate=1e-2".into(),
            format!("gradient_checkpointing={ckpt}"),
            "pretrain_mm_mlp_adapter=\"\"".into(),
        ]
    };
    let mut logs = Vec::new();
    for ckpt in [false, true] {
        let out = dir.path().join(format!("run-{ckpt}"));
        let cfg = TrainConfig::from_toml(&r.join("configs/stage2-lora.toml"), &extra(&out, ckpt))?;
        go(&cfg, false, None)?;
        logs.push(losses(&out)?);
    }
    assert_eq!(logs[0].len(), 2);
    for (a, b) in logs[0].iter().zip(&logs[1]) {
        assert_eq!(
            (a.loss, a.grad_norm),
            (b.loss, b.grad_norm),
            "step {}",
            a.step
        );
    }
    Ok(())
}
