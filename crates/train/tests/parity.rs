//! Training parity with PyTorch (transformers 4.46.3 + peft 0.21.2 + torch AdamW, f32):
//! the per-micro-batch losses of the first 5 optimizer steps and the trainable weights after
//! 3 steps, for a full fine-tune, LoRA, LLaVA stage 1 and stage 2 (full LLM + `mlp2x_gelu`
//! projector at `mm_projector_lr`), on the fixtures written by
//! `scripts/reference/make_train_fixtures.py` (its docstring says what each case exercises).
//! Plus: gradients reach every trainable tensor and only those; saved checkpoints load back
//! through sightline-model and give the trained model's logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use sightline_model::lora::LoraSpec;
use sightline_model::{Llama, Trainable};
use sightline_model::{LlamaConfig, LoadOptions, Weights};
use sightline_train::finetune::{Batch, ImageInput, OptimSettings, Trainer};
use sightline_vision::projector::{Projector, ProjectorKind};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train")
}

struct Fixture {
    golden: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Result<Fixture> {
    let dir = fixtures();
    let golden = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json"))?)?;
    let tensors = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu)?;
    Ok(Fixture { golden, tensors })
}

impl Fixture {
    fn t(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("fixture tensor {name}"))
    }

    fn settings(&self, case: &str) -> Result<OptimSettings> {
        let g = &self.golden[case];
        let f = |k: &str| g[k].as_f64().with_context(|| format!("{case}.{k}"));
        Ok(OptimSettings {
            learning_rate: f("lr")?,
            mm_projector_lr: g["mm_projector_lr"].as_f64(),
            weight_decay: f("weight_decay")?,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            lr_scheduler_type: serde_json::from_value(g["scheduler"].clone())?,
            warmup_steps: f("warmup_steps")? as usize,
            total_steps: f("total_steps")? as usize,
            max_grad_norm: g["max_grad_norm"].as_f64(),
            accum_loss: serde_json::from_value(g["accum_loss"].clone())?,
        })
    }

    fn batch(&self, case: &str, i: usize) -> Result<Batch> {
        let ids = self
            .t(&format!("{case}.batch{i}.input_ids"))?
            .to_dtype(DType::U32)?;
        let labels = self.t(&format!("{case}.batch{i}.labels"))?.clone();
        let image = match self.tensors.get(&format!("{case}.batch{i}.image_pos")) {
            Some(pos) => Some(ImageInput {
                features: self.t(&format!("{case}.batch{i}.features"))?.clone(),
                positions: pos
                    .to_vec1::<i64>()?
                    .into_iter()
                    .map(|p| Some(p as usize))
                    .collect(),
            }),
            None => None,
        };
        Ok(Batch {
            input_ids: ids,
            labels,
            image,
        })
    }
}

fn base_model(trainable: &Trainable) -> Result<Llama> {
    let dir = fixtures().join("base");
    let cfg_path = dir.join("config.json");
    let cfg = LlamaConfig::from_file(&cfg_path)?;
    let w = Weights::from_dir(&dir, DType::F32, &Device::Cpu)?;
    Ok(Llama::new_trainable(&cfg, &w, &cfg_path, trainable)?)
}

fn lora_spec(fx: &Fixture) -> Result<LoraSpec> {
    let g = &fx.golden["lora"];
    Ok(LoraSpec {
        r: g["r"].as_u64().context("r")? as usize,
        alpha: g["alpha"].as_f64().context("alpha")?,
        dropout: 0.0,
        target_modules: LoraSpec::paper(0).target_modules,
        seed: 0,
    })
}

/// Builds the trainer of `case` with the fixture's initial trainable values.
fn trainer(fx: &Fixture, case: &str) -> Result<Trainer> {
    let settings = fx.settings(case)?;
    Ok(match case {
        "full" => Trainer::new(base_model(&Trainable::Full)?, None, settings),
        "lora" => {
            let t = Trainer::new(
                base_model(&Trainable::Lora(lora_spec(fx)?))?,
                None,
                settings,
            );
            for p in t.trainable() {
                t.set_param(&p.name, fx.t(&format!("lora.init.{}", p.name))?)?;
            }
            t
        }
        "stage1" => {
            let proj = Projector::trainable(
                ProjectorKind::Linear,
                &[(
                    fx.t("stage1.init.model.mm_projector.weight")?.clone(),
                    fx.t("stage1.init.model.mm_projector.bias")?.clone(),
                )],
            )?;
            Trainer::new(base_model(&Trainable::Frozen)?, Some(proj), settings)
        }
        "stage2" => {
            let layer = |i: usize| -> Result<(Tensor, Tensor)> {
                Ok((
                    fx.t(&format!("stage2.init.model.mm_projector.{i}.weight"))?
                        .clone(),
                    fx.t(&format!("stage2.init.model.mm_projector.{i}.bias"))?
                        .clone(),
                ))
            };
            let proj =
                Projector::trainable(ProjectorKind::MlpGelu { depth: 2 }, &[layer(0)?, layer(2)?])?;
            Trainer::new(base_model(&Trainable::Full)?, Some(proj), settings)
        }
        _ => anyhow::bail!("unknown case {case}"),
    })
}

/// max |a - b| / max(|b|, floor): relative, absolute where the reference is near 0.
fn max_rel(a: &Tensor, b: &Tensor, floor: f32) -> Result<f32> {
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    anyhow::ensure!(a.len() == b.len(), "lengths {} vs {}", a.len(), b.len());
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f32::max))
}

fn check_case(case: &str) -> Result<()> {
    let fx = fixture()?;
    let mut tr = trainer(&fx, case)?;
    let g = &fx.golden[case];
    let accum = g["accum"].as_u64().context("accum")? as usize;
    let steps = fx.golden["steps"].as_u64().context("steps")? as usize;
    let snap = fx.golden["snapshot_after"].as_u64().context("snapshot")? as usize;
    let want: Vec<f64> = serde_json::from_value(g["losses"].clone())?;
    let want_lrs: Vec<f64> = serde_json::from_value(g["lrs"].clone())?;
    let mut losses = Vec::new();
    for (step, &want_lr) in want_lrs.iter().enumerate().take(steps) {
        let group = (0..accum)
            .map(|m| fx.batch(case, step * accum + m))
            .collect::<Result<Vec<_>>>()?;
        let r = tr.train_step(&group)?;
        assert!(
            (r.lr - want_lr).abs() <= 1e-12 * want_lr.abs().max(1.0),
            "{case} step {step}: lr {} vs torch {}",
            r.lr,
            want_lr
        );
        losses.extend(r.losses);
        if step + 1 == snap {
            let mut worst = (0.0f32, String::new());
            for p in tr.trainable() {
                let reference = fx.t(&format!("{case}.after.{}", p.name))?;
                let d = max_rel(p.param.tensor(), reference, 0.1)?;
                if d > worst.0 {
                    worst = (d, p.name.clone());
                }
            }
            eprintln!(
                "{case}: weights after {snap} steps, worst rel diff {:.2e} ({})",
                worst.0, worst.1
            );
            // 1e-4 relative, or 1e-5 absolute below |w| = 0.1.
            assert!(
                worst.0 < 1e-4,
                "{case}: {} differs by {:.2e}",
                worst.1,
                worst.0
            );
        }
    }
    for (i, (a, b)) in losses.iter().zip(&want).enumerate() {
        let rel = (a - b).abs() / b.abs();
        assert!(
            rel < 1e-4,
            "{case} loss {i}: {a} vs torch {b} (rel {rel:.2e})"
        );
    }
    assert_eq!(losses.len(), want.len());
    let worst = losses
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0, f64::max);
    eprintln!(
        "{case}: {} losses, worst rel diff {worst:.2e}",
        losses.len()
    );
    Ok(())
}

#[test]
fn full_finetune_matches_pytorch() -> Result<()> {
    check_case("full")
}

#[test]
fn lora_matches_peft() -> Result<()> {
    check_case("lora")
}

#[test]
fn stage1_projector_matches_pytorch() -> Result<()> {
    check_case("stage1")
}

/// Every trainable tensor gets a non-zero gradient from one group; frozen weights have no
/// buffer and no optimizer state (the trainer only knows trainable tensors).
/// Stage 2 with LLaVA-1.5's projector: the full LLM and an `mlp2x_gelu` projector at its own
/// learning rate (`mm_projector_lr`), images spliced in.
#[test]
fn stage2_mlp2x_projector_matches_pytorch() -> Result<()> {
    check_case("stage2")
}

#[test]
fn gradients_reach_exactly_the_trainable_tensors() -> Result<()> {
    let fx = fixture()?;
    for case in ["full", "lora", "stage1"] {
        let mut tr = trainer(&fx, case)?;
        let group = vec![fx.batch(case, 0)?];
        tr.accumulate(&group)?;
        for (p, g) in tr.trainable().iter().zip(tr.gradients()) {
            assert!(
                p.param.var().is_some(),
                "{case}: {} is registered but frozen",
                p.name
            );
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{case}: {} got no gradient",
                p.name
            );
        }
        let n_base = tr
            .model
            .base_params()
            .iter()
            .filter(|p| p.param.var().is_some())
            .count();
        let expected = match case {
            "full" => tr.model.base_params().len(),
            _ => 0,
        };
        assert_eq!(n_base, expected, "{case}: trainable base weights");
        let n = tr.trainable().len();
        match case {
            "full" => assert_eq!(n, tr.model.base_params().len()),
            "lora" => assert_eq!(n, 2 * 7 * tr.model.config.num_hidden_layers),
            _ => assert_eq!(n, 2),
        }
    }
    Ok(())
}

fn logits_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Trained full weights and LoRA adapters, saved, load through `sightline_model::load` and give
/// the trained model's logits; the projector file has LLaVA's key names.
#[test]
fn saved_checkpoints_load_back() -> Result<()> {
    let fx = fixture()?;
    let base = fixtures().join("base");
    let tmp = tempfile::tempdir()?;
    let ids = fx.t("full.batch0.input_ids")?.to_dtype(DType::U32)?;
    for case in ["full", "lora", "stage1"] {
        let mut tr = trainer(&fx, case)?;
        for step in 0..3 {
            tr.train_step(&[fx.batch(case, step)?])?;
        }
        let out = tmp.path().join(case);
        let mine = tr.model.forward(&ids, None)?;
        let loaded = match case {
            "full" => {
                sightline_train::checkpoint::save_full(&out, &tr.model, Some(&base))?;
                sightline_model::load(out.to_str().context("path")?, &LoadOptions::default())?
            }
            "lora" => {
                sightline_train::checkpoint::save_lora(
                    &out,
                    &tr.model,
                    "tests/fixtures/train/base",
                )?;
                let opts = LoadOptions {
                    adapter: Some(out.clone()),
                    ..Default::default()
                };
                sightline_model::load(base.to_str().context("path")?, &opts)?
            }
            _ => {
                let proj = tr.projector.as_ref().context("projector")?;
                sightline_train::checkpoint::save_projector(&out, proj)?;
                let file = out.join("mm_projector.safetensors");
                let back = Projector::trainable_from_file(&file, 24, 32, &Device::Cpu)?;
                let d = logits_diff(
                    back.weight().context("weight")?,
                    proj.weight().context("weight")?,
                )?;
                assert_eq!(d, 0.0);
                continue;
            }
        };
        let theirs = loaded.model.forward(&ids, None)?;
        let d = logits_diff(&mine, &theirs)?;
        eprintln!("{case}: saved/loaded logits max diff {d:.2e}");
        assert!(d < 1e-4, "{case}: logits differ by {d}");
    }
    Ok(())
}

/// max |a - b| over buffers, relative to max(|b|, floor).
fn max_rel_vec(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f32::max)
}

/// Accumulates two micro-batches with and without gradient checkpointing and compares the
/// losses and every gradient buffer; then one more group after an optimizer step, which also
/// checks that the LoRA dropout stream is left where the plain path leaves it.
fn checkpointing_matches(case: &str, lora_dropout: Option<f32>) -> Result<()> {
    let fx = fixture()?;
    let build = |on: bool| -> Result<Trainer> {
        let mut tr = match lora_dropout {
            Some(p) => {
                let spec = LoraSpec {
                    dropout: p,
                    ..lora_spec(&fx)?
                };
                Trainer::new(
                    base_model(&Trainable::Lora(spec))?,
                    None,
                    fx.settings(case)?,
                )
            }
            None => trainer(&fx, case)?,
        };
        if lora_dropout.is_some() {
            // B = 0 at init would hide A's gradient and the dropout masks behind zeros.
            for p in tr.trainable().to_vec() {
                if let Some(v) = fx.tensors.get(&format!("lora.after.{}", p.name)) {
                    tr.set_param(&p.name, v)?;
                }
            }
        }
        tr.set_gradient_checkpointing(on);
        Ok(tr)
    };
    let (mut plain, mut ckpt) = (build(false)?, build(true)?);
    assert!(ckpt.gradient_checkpointing() && !plain.gradient_checkpointing());
    for round in 0..2 {
        let group = (0..2)
            .map(|m| fx.batch(case, 2 * round + m))
            .collect::<Result<Vec<_>>>()?;
        let (l1, t1) = plain.accumulate(&group)?;
        let (l2, t2) = ckpt.accumulate(&group)?;
        assert_eq!(t1, t2);
        for (a, b) in l2.iter().zip(&l1) {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{case}: loss {a} vs {b}");
        }
        let mut worst = (0.0f32, String::new());
        for ((p, a), b) in plain
            .trainable()
            .iter()
            .zip(ckpt.gradients())
            .zip(plain.gradients())
        {
            let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            if scale == 0.0 {
                // LoRA A while B is still 0: the gradient is exactly zero either way.
                assert!(a.iter().all(|&x| x == 0.0), "{case}: {} not zero", p.name);
                continue;
            }
            let d = max_rel_vec(a, b, 1e-3 * scale);
            if d > worst.0 {
                worst = (d, p.name.clone());
            }
        }
        eprintln!(
            "{case} (dropout {lora_dropout:?}) round {round}: worst gradient rel diff {:.2e} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= 1e-5,
            "{case}: {} differs by {:.2e}",
            worst.1,
            worst.0
        );
        plain.apply()?;
        ckpt.apply()?;
    }
    Ok(())
}

#[test]
fn checkpointing_full_matches_plain() -> Result<()> {
    checkpointing_matches("full", None)
}

#[test]
fn checkpointing_lora_matches_plain() -> Result<()> {
    checkpointing_matches("lora", None)?;
    checkpointing_matches("lora", Some(0.3))
}

#[test]
fn checkpointing_stage1_matches_plain() -> Result<()> {
    checkpointing_matches("stage1", None)
}

/// With dropout the comparison above is only meaningful if the masks matter: a different
/// dropout stream must change the gradients (so equal gradients mean equal masks).
#[test]
fn lora_dropout_masks_change_gradients() -> Result<()> {
    let fx = fixture()?;
    let grads = |seed: u64| -> Result<Vec<Vec<f32>>> {
        let spec = LoraSpec {
            dropout: 0.3,
            seed,
            ..lora_spec(&fx)?
        };
        let mut tr = Trainer::new(
            base_model(&Trainable::Lora(spec))?,
            None,
            fx.settings("lora")?,
        );
        for p in tr.trainable().to_vec() {
            tr.set_param(&p.name, fx.t(&format!("lora.after.{}", p.name))?)?;
        }
        tr.accumulate(&[fx.batch("lora", 0)?])?;
        Ok(tr.gradients().to_vec())
    };
    let (a, b) = (grads(1)?, grads(2)?);
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| max_rel_vec(x, y, 1e-6))
        .fold(0.0, f32::max);
    assert!(d > 1e-2, "dropout seed changed gradients by only {d:.2e}");
    Ok(())
}

/// Tied `embed_tokens`/`lm_head` (one parameter used at both ends): checkpointing must add the
/// head's share and the embeddings' share, as the plain path does.
#[test]
fn checkpointing_tied_embeddings_matches_plain() -> Result<()> {
    let fx = fixture()?;
    let dir = fixtures().join("base");
    let cfg_path = dir.join("config.json");
    let mut cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)?;
    cfg_json["tie_word_embeddings"] = serde_json::Value::Bool(true);
    let cfg = LlamaConfig::from_json(&cfg_json.to_string(), &cfg_path)?;
    let mut tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    tensors.remove("lm_head.weight");
    let build = |on: bool| -> Result<Trainer> {
        let w = Weights::from_tensors(tensors.clone(), cfg_path.clone(), DType::F32, &Device::Cpu);
        let model = Llama::new_trainable(&cfg, &w, &cfg_path, &Trainable::Full)?;
        let mut tr = Trainer::new(model, None, fx.settings("full")?);
        tr.set_gradient_checkpointing(on);
        Ok(tr)
    };
    let (mut plain, mut ckpt) = (build(false)?, build(true)?);
    assert!(plain.trainable().iter().all(|p| p.name != "lm_head.weight"));
    let group = vec![fx.batch("full", 0)?, fx.batch("full", 1)?];
    let (l1, _) = plain.accumulate(&group)?;
    let (l2, _) = ckpt.accumulate(&group)?;
    assert_eq!(l1, l2);
    for ((p, a), b) in plain
        .trainable()
        .iter()
        .zip(ckpt.gradients())
        .zip(plain.gradients())
    {
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = max_rel_vec(a, b, 1e-3 * scale);
        assert!(d <= 1e-5, "{}: {d:.2e}", p.name);
    }
    Ok(())
}
