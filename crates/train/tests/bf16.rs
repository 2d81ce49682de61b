//! bf16 mixed-precision training (`bf16 = true`): f32 master weights and AdamW moments are what
//! a step updates, the bf16 copy the forward uses is always the master rounded, gradients reach
//! every master through the cast, the losses track an f32 run's within bf16's precision, and a
//! resumed bf16 run is bit-identical to an uninterrupted one, its artefacts saved in bf16 and its
//! resume state in f32.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use sightline_model::lora::LoraSpec;
use sightline_model::param::Param;
use sightline_model::{Llama, LlamaConfig, Trainable, Weights};
use sightline_train::config::TrainConfig;
use sightline_train::finetune::{AccumLoss, Batch, OptimSettings, Trainer};
use sightline_train::run::{run, Event, RunOptions, StepLog};
use sightline_train::schedule::SchedulerType;

/// The repository root (tests run in the crate directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn base_model(trainable: &Trainable, compute: DType) -> Result<Llama> {
    let dir = root().join("tests/fixtures/train/base");
    let cfg_path = dir.join("config.json");
    let cfg = LlamaConfig::from_file(&cfg_path)?;
    let w = Weights::from_dir(&dir, DType::F32, &Device::Cpu)?;
    Ok(Llama::new_trainable_in(
        &cfg, &w, &cfg_path, trainable, compute,
    )?)
}

fn settings() -> OptimSettings {
    OptimSettings {
        learning_rate: 1e-3,
        mm_projector_lr: None,
        weight_decay: 0.01,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_epsilon: 1e-8,
        lr_scheduler_type: SchedulerType::ConstantWithWarmup,
        warmup_steps: 0,
        total_steps: 10,
        max_grad_norm: Some(1.0),
        accum_loss: AccumLoss::Tokens,
    }
}

/// Two rows of 24 pseudo-random tokens of the fixture's 512, the first 4 labels masked.
fn batch() -> Result<Batch> {
    let (b, t) = (2usize, 24usize);
    let mut x = 12345u64;
    let ids: Vec<u32> = (0..b * t)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 512) as u32
        })
        .collect();
    let labels: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| if i % t < 4 { -100 } else { id as i64 })
        .collect();
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), &Device::Cpu)?,
        labels: Tensor::from_vec(labels, (b, t), &Device::Cpu)?,
        image: None,
    })
}

/// The trainer of `trainable` in `compute`; LoRA's B (zeros at init, which would leave A
/// without a gradient in the first step) gets the same small nonzero values in both dtypes.
fn trainer(trainable: &Trainable, compute: DType) -> Result<Trainer> {
    let t = Trainer::new(base_model(trainable, compute)?, None, settings());
    for p in t.trainable() {
        if p.name.contains("lora_B") {
            let n = p.param.tensor().elem_count();
            let v: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
            t.set_param(
                &p.name,
                &Tensor::from_vec(v, p.param.tensor().shape(), &Device::Cpu)?,
            )?;
        }
    }
    Ok(t)
}

fn lora() -> Trainable {
    Trainable::Lora(LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: LoraSpec::paper(0).target_modules,
        seed: 3,
    })
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// ‖a − b‖ / ‖b‖.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

/// Relative L2 distance allowed between a bf16 and an f32 gradient. Measured on the fixture:
/// 2.0e-2 (lm_head) to 4.5e-2 (a LoRA A), the same for every tensor: the bf16 forward's
/// rounding (2⁻⁹ relative per op) spread through two layers and the cancelling sums of a
/// weight gradient. A lost gradient (0 instead of g) would be 1.0, a wrong one far above.
const GRAD_TOL: f64 = 0.08;

/// After one bf16 step (full fine-tune and LoRA): every trainable tensor is an f32 master that
/// changed, its AdamW moments are f32, nonzero and exactly torch's first update from the clipped
/// f32 gradient, the bf16 value the forward uses equals the
/// master cast to bf16 bit for bit, frozen weights are stored in bf16, and the f32 gradient
/// that reached each master through the bf16 cast is within bf16 precision of the f32 run's.
#[test]
fn a_bf16_step_updates_the_f32_masters_and_moments() -> Result<()> {
    for (case, trainable) in [("full", Trainable::Full), ("lora", lora())] {
        let mut t16 = trainer(&trainable, DType::BF16)?;
        let mut t32 = trainer(&trainable, DType::F32)?;
        assert_eq!(t16.model.dtype(), DType::BF16);
        for p in t16.model.base_params() {
            let want = if p.param.var().is_some() {
                DType::F32
            } else {
                DType::BF16
            };
            assert_eq!(p.param.tensor().dtype(), want, "{case}: {}", p.name);
        }
        let before: Vec<Vec<f32>> = t16
            .trainable()
            .iter()
            .map(|p| values(p.param.tensor()))
            .collect::<Result<_>>()?;
        let b = batch()?;
        let (l16, _) = t16.accumulate(std::slice::from_ref(&b))?;
        let (l32, _) = t32.accumulate(std::slice::from_ref(&b))?;
        let dl = (l16[0] - l32[0]).abs();
        ensure!(
            dl < LOSS_TOL * l32[0],
            "{case}: loss {} vs f32 {}",
            l16[0],
            l32[0]
        );
        let mut worst = 0f64;
        for ((p, g16), g32) in t16
            .trainable()
            .iter()
            .zip(t16.gradients())
            .zip(t32.gradients())
        {
            ensure!(
                g16.iter().any(|&g| g != 0.0),
                "{case}: no gradient reached {}",
                p.name
            );
            let r = rel_l2(g16, g32);
            worst = worst.max(r);
            ensure!(
                r < GRAD_TOL,
                "{case}: {} gradient {r:.3e} from the f32 run's",
                p.name
            );
        }
        eprintln!(
            "{case}: loss bf16 {} f32 {} (Δ {dl:.2e}); worst gradient rel. L2 {worst:.2e}",
            l16[0], l32[0]
        );
        let grads = t16.gradients().to_vec();
        let (_, norm) = t16.apply()?;
        // clip_grad_norm_ (max 1) then AdamW's first update from zero moments, in f32:
        // exp_avg = 0.1·g, exp_avg_sq = 0.001·g², g the clipped f32 gradient.
        let coef = (1.0 / (norm + 1e-6)).min(1.0) as f32;
        for ((p, old), ((m, v), g)) in t16
            .trainable()
            .iter()
            .zip(&before)
            .zip(t16.optimizer_moments().into_iter().zip(&grads))
        {
            for ((&m, &v), &g) in m.iter().zip(v).zip(g) {
                let g = if coef < 1.0 { g * coef } else { g };
                assert_eq!(m, g * (1.0f64 - 0.9) as f32, "{case}: {} exp_avg", p.name);
                let want = (1.0f64 - 0.999) as f32 * g * g;
                ensure!(
                    (v - want).abs() <= 1e-6 * want,
                    "{case}: {} exp_avg_sq {v} vs {want}",
                    p.name
                );
            }
            let master = p.param.tensor();
            assert_eq!(master.dtype(), DType::F32, "{case}: {}", p.name);
            assert!(matches!(p.param, Param::Mixed { .. }), "{case}: {}", p.name);
            ensure!(values(master)? != *old, "{case}: {} did not change", p.name);
            ensure!(
                m.iter().any(|&x| x != 0.0),
                "{case}: {} exp_avg is zero",
                p.name
            );
            ensure!(
                v.iter().any(|&x| x != 0.0),
                "{case}: {} exp_avg_sq is zero",
                p.name
            );
            assert_eq!(
                (m.len(), v.len()),
                (master.elem_count(), master.elem_count())
            );
            let used = p.param.value()?;
            assert_eq!(used.dtype(), DType::BF16, "{case}: {}", p.name);
            assert_eq!(
                values(&used)?,
                values(&master.to_dtype(DType::BF16)?)?,
                "{case}: {}: the bf16 copy is not the master rounded",
                p.name
            );
        }
    }
    Ok(())
}

/// A run file with `extra` settings on top of `toml` (relative to the repository root), its
/// paths made absolute.
fn config(toml: &str, out: &Path, extra: &[String]) -> Result<TrainConfig> {
    let r = root();
    let s = |p: &str| format!("{:?}", r.join(p).display().to_string());
    let mut o = vec![
        format!("model_name_or_path={}", s("tests/fixtures/train/base")),
        format!("output_dir={:?}", out.display().to_string()),
    ];
    if toml.contains("stage") {
        o.push(format!(
            "vision_tower={}",
            s("tests/fixtures/llava/tiny-clip")
        ));
        o.push(format!(
            "image_folder={}",
            s("data/unicorn/sketchy-vqa/images")
        ));
        let data = if toml.contains("stage1") {
            "sketch_captions"
        } else {
            "sketch_instruct"
        };
        o.push(format!(
            "data_path={}",
            s(&format!("data/training/sketch/{data}.json"))
        ));
        o.push("pretrain_mm_mlp_adapter=\"\"".into());
    } else {
        let data = "data/training/sketch/sketch_instruct_text.json";
        o.push(format!("data_path={}", s(data)));
    }
    o.extend(extra.iter().cloned());
    Ok(TrainConfig::from_toml(&r.join(toml), &o)?)
}

fn losses(out: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(out.join("train_log.jsonl"))?;
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn go(cfg: &TrainConfig, resume: bool, stop_after: Option<usize>) -> Result<()> {
    let opts = RunOptions {
        device: Device::Cpu,
        resume,
        stop_after,
    };
    run(cfg, &opts, &mut |_e: Event| {})?;
    Ok(())
}

/// The cases: (name, run file, extra settings).
fn cases() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "text full",
            "configs/text-only.toml",
            v(&["learning_rate=1e-3"]),
        ),
        (
            "text lora",
            "configs/text-only.toml",
            v(&["lora_enable=true", "lora_r=4", "learning_rate=1e-2"]),
        ),
        (
            "stage 1",
            "configs/stage1-projector.toml",
            v(&["learning_rate=1e-2"]),
        ),
        (
            "stage 2 full",
            "configs/stage2-full.toml",
            v(&["learning_rate=1e-3", "gradient_accumulation_steps=1"]),
        ),
        (
            "stage 2 lora",
            "configs/stage2-lora.toml",
            v(&[
                "lora_r=4",
                "learning_rate=1e-2",
                "gradient_accumulation_steps=1",
            ]),
        ),
    ]
}

/// Relative difference allowed between a bf16 and an f32 loss. Measured on the fixtures: 1.7e-4
/// (stage 1) to 2.6e-3 (stage 2 LoRA, 4 steps at lr 1e-2), and 5.9e-4 for the first loss of the
/// step test; bf16 rounds to 2⁻⁹ relative per op, and the runs' updates drift apart over steps.
const LOSS_TOL: f64 = 1e-2;

/// The first 4 losses of a bf16 run track the f32 run's, relatively within [`LOSS_TOL`], for
/// text-only full and LoRA, stage 1 (projector + embeddings) and stage 2 full and LoRA.
#[test]
fn bf16_losses_track_the_f32_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, toml, extra) in cases() {
        let mut logs = Vec::new();
        for bf16 in [false, true] {
            let out = dir
                .path()
                .join(format!("{}-{bf16}", name.replace(' ', "-")));
            let mut e = extra.clone();
            e.extend(["max_steps=4".to_string(), format!("bf16={bf16}")]);
            go(&config(toml, &out, &e)?, false, None)?;
            logs.push(losses(&out)?);
        }
        let (a, b) = (&logs[0], &logs[1]);
        assert_eq!(a.len(), 4, "{name}");
        let mut worst = 0f64;
        for (x, y) in a.iter().zip(b) {
            let (lx, ly) = (x.loss.context("f32 loss")?, y.loss.context("bf16 loss")?);
            let r = (lx - ly).abs() / lx.abs();
            worst = worst.max(r);
            ensure!(
                r < LOSS_TOL,
                "{name} step {}: f32 {lx} bf16 {ly} ({r:.2e})",
                x.step
            );
            assert_eq!(x.tokens, y.tokens);
        }
        eprintln!("{name}: worst relative loss difference bf16 vs f32 {worst:.2e}");
    }
    Ok(())
}

/// The dtypes of a safetensors file's tensors.
fn dtypes(path: &Path) -> Result<Vec<DType>> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| path.display().to_string())?;
    Ok(t.values().map(Tensor::dtype).collect())
}

/// An interrupted and resumed bf16 run logs the same losses, learning rates and gradient norms
/// as the uninterrupted one, bit for bit, and saves the same bytes (text LoRA with dropout and
/// accumulation; stage 2 full with the projector; stage 1, projector and embeddings; stage 2
/// LoRA with dropout and the projector). Its artefacts are bf16; its checkpoint's
/// resume state holds f32 masters and moments.
#[test]
fn a_resumed_bf16_run_is_bit_identical() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let runs = [
        (
            "configs/text-only.toml",
            v(&[
                "lora_enable=true",
                "lora_r=4",
                "lora_dropout=0.1",
                "learning_rate=1e-2",
                "per_device_train_batch_size=4",
                "gradient_accumulation_steps=2",
                "max_steps=5",
                "save_steps=2",
                "bf16=true",
            ]),
            "adapter_model.safetensors",
        ),
        (
            "configs/stage2-full.toml",
            v(&[
                "learning_rate=1e-3",
                "gradient_accumulation_steps=1",
                "max_steps=4",
                "save_steps=2",
                "bf16=true",
            ]),
            "model.safetensors",
        ),
        (
            "configs/stage1-projector.toml",
            v(&[
                "learning_rate=1e-2",
                "max_steps=4",
                "save_steps=2",
                "bf16=true",
            ]),
            "mm_projector.safetensors",
        ),
        (
            "configs/stage2-lora.toml",
            v(&[
                "lora_r=4",
                "lora_dropout=0.1",
                "learning_rate=1e-2",
                "gradient_accumulation_steps=1",
                "max_steps=4",
                "save_steps=2",
                "bf16=true",
            ]),
            "adapter_model.safetensors",
        ),
    ];
    for (i, (toml, extra, artefact)) in runs.iter().enumerate() {
        let a = dir.path().join(format!("a{i}"));
        go(&config(toml, &a, extra)?, false, None)?;
        let b = dir.path().join(format!("b{i}"));
        let cfg_b = config(toml, &b, extra)?;
        go(&cfg_b, false, Some(3))?;
        let state = b.join("checkpoint-3/trainer_state.safetensors");
        ensure!(
            dtypes(&state)?.iter().all(|&d| d == DType::F32),
            "{toml}: resume state not f32"
        );
        go(&cfg_b, true, None)?;
        let (la, lb) = (losses(&a)?, losses(&b)?);
        assert_eq!(la.len(), lb.len(), "{toml}");
        for (x, y) in la.iter().zip(&lb) {
            assert_eq!(
                (x.step, x.loss, x.lr, x.grad_norm, x.tokens),
                (y.step, y.loss, y.lr, y.grad_norm, y.tokens),
                "{toml} step {}",
                x.step
            );
        }
        let (wa, wb) = (
            std::fs::read(a.join(artefact))?,
            std::fs::read(b.join(artefact))?,
        );
        ensure!(wa == wb, "{toml}: the final {artefact} differ");
        ensure!(
            dtypes(&a.join(artefact))?.iter().all(|&d| d == DType::BF16),
            "{toml}: {artefact} not bf16"
        );
    }
    Ok(())
}

/// Gradient checkpointing in a bf16 run recomputes the same bf16 values: the same losses and
/// gradient norms, bit for bit (stage 2 LoRA with dropout: the dropout stream is rewound too).
#[test]
fn bf16_gradient_checkpointing_changes_no_number() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut logs = Vec::new();
    for ckpt in [false, true] {
        let out = dir.path().join(format!("run-{ckpt}"));
        let extra: Vec<String> = [
            "lora_r=4",
            "lora_dropout=0.2",
            "learning_rate=1e-2",
            "max_steps=2",
            "bf16=true",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("gradient_checkpointing={ckpt}")])
        .collect();
        go(
            &config("configs/stage2-lora.toml", &out, &extra)?,
            false,
            None,
        )?;
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
