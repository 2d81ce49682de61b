//! Run settings with HF `TrainingArguments` and LLaVA `ModelArguments`/`TrainingArguments`
//! field names, so a TOML config reads like the paper's shell scripts. Unknown keys are an
//! error (`deny_unknown_fields`); defaults are HF's (transformers 4.46.3) or LLaVA's where
//! HF has none, cited per field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::finetune::{AccumLoss, OptimSettings};
use crate::schedule::{warmup_steps, SchedulerType};
use sightline_model::lora::LoraSpec;
use sightline_model::Trainable;

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// LLaVA `model_name_or_path`: the base LLM, an HF LLaMA directory or Hub id
    /// (`org/name[@revision]`, see `sightline_model::hub`).
    pub model_name_or_path: String,
    /// LLaVA `data_path`: LLaVA-format JSON array or JSONL of conversation records.
    pub data_path: String,
    /// LLaVA `image_folder`: where records' `image` paths resolve (default: the data file's
    /// directory).
    pub image_folder: Option<String>,
    /// LLaVA `vision_tower`: a CLIP directory or Hub id. Absent = a text-only run (no tower is
    /// loaded, records with images are refused).
    pub vision_tower: Option<String>,
    /// HF `output_dir`: final artefacts and `checkpoint-N/` directories go here.
    pub output_dir: String,
    /// LLaVA `mm_projector_type`: `linear` (the paper's) or `mlp2x_gelu` (LLaVA-1.5).
    pub mm_projector_type: String,
    /// LLaVA `mm_vision_select_feature`: `patch` drops CLS (LLaVA's default), `cls_patch` keeps it.
    pub mm_vision_select_feature: String,
    /// LLaVA `mm_use_im_patch_token` (default True in SBT): adds `<im_patch>` to the vocabulary.
    pub mm_use_im_patch_token: bool,
    /// Where LLaVA would silently train on nothing (tokenization mismatch, spec T6.2), stop
    /// with a token-level diff (false, the default) or skip the sample and count it (true).
    pub skip_mismatched_samples: bool,
    /// HF default 5e-5.
    pub learning_rate: f64,
    /// HF default 8.
    pub per_device_train_batch_size: usize,
    /// HF default 1.
    pub gradient_accumulation_steps: usize,
    /// HF default 3.0.
    pub num_train_epochs: f64,
    /// HF default -1 (use epochs).
    pub max_steps: i64,
    /// HF default 0.0.
    pub warmup_ratio: f64,
    /// HF default 0.
    pub warmup_steps: usize,
    /// HF default linear.
    pub lr_scheduler_type: SchedulerType,
    /// HF default 0.0.
    pub weight_decay: f64,
    /// HF defaults 0.9 / 0.999 / 1e-8.
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// HF default 1.0; 0 disables clipping (the paper's DeepSpeed runs did not clip, T10.5).
    pub max_grad_norm: f64,
    /// LLaVA default 512.
    pub model_max_length: usize,
    /// HF default 500.
    pub save_steps: usize,
    /// HF default None (keep all).
    pub save_total_limit: Option<usize>,
    /// HF default 42.
    pub seed: u64,
    /// HF default false. bf16 mixed precision: f32 master weights and AdamW moments, forward
    /// and backward in bf16, gradients and loss in f32 (see [`TrainConfig::compute_dtype`]).
    pub bf16: bool,
    /// HF default false.
    pub gradient_checkpointing: bool,
    /// LLaVA: train only the projector (stage 1).
    pub tune_mm_mlp_adapter: bool,
    /// LLaVA: a stage-1 `mm_projector` file to start stage 2 from.
    pub pretrain_mm_mlp_adapter: Option<String>,
    /// LLaVA-1.5: the projector's own learning rate.
    pub mm_projector_lr: Option<f64>,
    /// LLaVA default -1.
    pub mm_vision_select_layer: i64,
    /// LLaVA default false.
    pub mm_use_im_start_end: bool,
    /// LLaVA conversation template (default "v0").
    pub version: String,
    /// LLaVA LoRA settings (defaults of LLaVA's train.py: r 64, alpha 16, dropout 0.05).
    pub lora_enable: bool,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    /// How accumulated micro-batch losses combine (not an HF field; see [`AccumLoss`]).
    pub accum_loss: AccumLoss,
    /// Not an HF field: let records' `image` paths leave `image_folder` (absolute paths, `..`,
    /// symlinks out of it). Off, such a record stops the run before the first step, named;
    /// `sightline train --allow-outside-paths` sets it.
    pub allow_outside_paths: bool,
    /// DeepSpeed's ZeRO stage, of which stage 1 is built: 1 shards the AdamW moments over the
    /// data-parallel ranks ([`crate::zero`]); 0 (default) keeps them whole on every rank. Same
    /// losses and weights either way; on one rank there is nothing to shard.
    pub zero_stage: u8,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model_name_or_path: String::new(),
            data_path: String::new(),
            image_folder: None,
            vision_tower: None,
            output_dir: String::new(),
            mm_projector_type: "linear".into(),
            mm_vision_select_feature: "patch".into(),
            mm_use_im_patch_token: true,
            skip_mismatched_samples: false,
            learning_rate: 5e-5,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            num_train_epochs: 3.0,
            max_steps: -1,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            lr_scheduler_type: SchedulerType::Linear,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            model_max_length: 512,
            save_steps: 500,
            save_total_limit: None,
            seed: 42,
            bf16: false,
            gradient_checkpointing: false,
            tune_mm_mlp_adapter: false,
            pretrain_mm_mlp_adapter: None,
            mm_projector_lr: None,
            mm_vision_select_layer: -1,
            mm_use_im_start_end: false,
            version: "v0".into(),
            lora_enable: false,
            lora_r: 64,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            accum_loss: AccumLoss::Tokens,
            allow_outside_paths: false,
            zero_stage: 0,
        }
    }
}

/// A TOML error in one line: `line L, column C: message`. The `toml` crate's own message
/// quotes the offending line with a caret under it, which for a hostile file is a megabyte
/// on the terminal and always breaks the one-line error rule.
pub fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

impl TrainConfig {
    /// Reads a TOML run file and applies `key=value` overrides (values in TOML syntax; a value
    /// that does not parse as TOML is taken as a string, so `output_dir=runs/a` works).
    /// Unknown keys, in the file or an override, are an error naming them.
    pub fn from_toml(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// [`TrainConfig::from_toml`] on a run file's text; `path` names it in errors.
    pub fn from_toml_str(text: &str, path: &Path, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            Error::Config(format!(
                "{}: not valid TOML: {}",
                path.display(),
                toml_error_line(text, &e)
            ))
        })?;
        for o in overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("override `{o}`: expected key=value")))?;
            let key = key.trim();
            let value = value.trim();
            let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            table.insert(key.to_string(), parsed);
        }
        let mut cfg: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        // TOML has no null: an empty string unsets an optional path (`vision_tower=""`).
        for opt in [
            &mut cfg.image_folder,
            &mut cfg.vision_tower,
            &mut cfg.pretrain_mm_mlp_adapter,
        ] {
            if opt.as_deref() == Some("") {
                *opt = None;
            }
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks what serde cannot: required fields and value ranges.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("{}: {msg}", path.display())));
        for (key, v) in [
            ("model_name_or_path", &self.model_name_or_path),
            ("data_path", &self.data_path),
            ("output_dir", &self.output_dir),
        ] {
            if v.is_empty() {
                return bad(format!("`{key}` is required"));
            }
        }
        if self.per_device_train_batch_size == 0 || self.gradient_accumulation_steps == 0 {
            return bad(
                "per_device_train_batch_size and gradient_accumulation_steps must be >= 1".into(),
            );
        }
        if self.max_steps <= 0 && self.num_train_epochs <= 0.0 {
            return bad("set max_steps > 0 or num_train_epochs > 0".into());
        }
        if self.save_steps == 0 {
            return bad("save_steps must be >= 1".into());
        }
        if self.save_total_limit == Some(0) {
            return bad("save_total_limit must be >= 1 (or absent to keep all)".into());
        }
        if !matches!(self.mm_projector_type.as_str(), "linear" | "mlp2x_gelu") {
            return bad(format!(
                "mm_projector_type `{}` is not supported (expected linear or mlp2x_gelu)",
                self.mm_projector_type
            ));
        }
        if !matches!(
            self.mm_vision_select_feature.as_str(),
            "patch" | "cls_patch"
        ) {
            return bad(format!(
                "mm_vision_select_feature `{}` is not supported (expected patch or cls_patch)",
                self.mm_vision_select_feature
            ));
        }
        if self.tune_mm_mlp_adapter && self.vision_tower.is_none() {
            return bad("tune_mm_mlp_adapter (stage 1) needs a vision_tower".into());
        }
        if self.zero_stage > 1 {
            return bad(format!(
                "zero_stage = {} is not built (stage 2 shards gradients, 3 parameters); \
                 zero_stage = 1 shards the optimizer state",
                self.zero_stage
            ));
        }
        self.trainable().map(|_| ())
    }

    /// Optimizer steps of the run for `num_examples` training rows (HF: `max_steps` if > 0,
    /// else `ceil(epochs · (len(dataloader) // accum))`, at least 1 per epoch).
    pub fn total_steps(&self, num_examples: usize) -> usize {
        self.total_steps_on(num_examples, 1)
    }

    /// [`TrainConfig::total_steps`] for `world_size` data-parallel ranks: the accumulation
    /// group spans `gradient_accumulation_steps × world_size` micro-batches (HF's global
    /// batch), so the count equals one process's with that much accumulation.
    pub fn total_steps_on(&self, num_examples: usize, world_size: usize) -> usize {
        if self.max_steps > 0 {
            return self.max_steps as usize;
        }
        let batches = num_examples.div_ceil(self.per_device_train_batch_size.max(1));
        let group = self.gradient_accumulation_steps.max(1) * world_size.max(1);
        let per_epoch = (batches / group).max(1);
        (self.num_train_epochs * per_epoch as f64).ceil() as usize
    }

    /// The dtype the forward and backward compute in: bf16 under `bf16 = true`, else f32.
    ///
    /// `bf16 = true` is mixed precision as `torch.autocast` users and LLaVA's DeepSpeed runs
    /// have it: trained weights stay f32 masters, cast to bf16 at each use (so the bf16
    /// copy is always the master rounded); AdamW's moments are f32; frozen weights are stored
    /// in bf16; activations are bf16 with RMSNorm statistics and attention softmax in f32;
    /// logits are upcast and the cross-entropy computed in f32; every gradient reaches its
    /// master in f32 and is accumulated, clipped and applied in f32. The saved artefacts are
    /// bf16 (what LLaVA's bf16 runs save), the resume state keeps the f32 masters and moments.
    pub fn compute_dtype(&self) -> candle_core::DType {
        if self.bf16 {
            candle_core::DType::BF16
        } else {
            candle_core::DType::F32
        }
    }

    /// What trains in the decoder.
    pub fn trainable(&self) -> Result<Trainable> {
        match (self.tune_mm_mlp_adapter, self.lora_enable) {
            (true, true) => Err(Error::Config(
                "tune_mm_mlp_adapter (stage 1) and lora_enable cannot both be set".into(),
            )),
            // LLaVA stage 1 re-enables embed_tokens' gradient with <im_start>/<im_end> (M6.6).
            (true, false) if self.mm_use_im_start_end => Ok(Trainable::EmbeddingsOnly),
            (true, false) => Ok(Trainable::Frozen),
            (false, true) => Ok(Trainable::Lora(LoraSpec {
                r: self.lora_r,
                alpha: self.lora_alpha,
                dropout: self.lora_dropout,
                ..LoraSpec::paper(self.seed)
            })),
            (false, false) => Ok(Trainable::Full),
        }
    }

    /// The optimizer settings for a run of `total_steps`.
    pub fn optim_settings(&self, total_steps: usize) -> OptimSettings {
        OptimSettings {
            learning_rate: self.learning_rate,
            mm_projector_lr: self.mm_projector_lr,
            weight_decay: self.weight_decay,
            adam_beta1: self.adam_beta1,
            adam_beta2: self.adam_beta2,
            adam_epsilon: self.adam_epsilon,
            lr_scheduler_type: self.lr_scheduler_type,
            warmup_steps: warmup_steps(self.warmup_steps, self.warmup_ratio, total_steps),
            total_steps,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            accum_loss: self.accum_loss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_are_one_line_with_their_position() {
        let path = Path::new("run.toml");
        let cases = [
            (
                "learning_rate = 1e-4\nmax_steps = = 3\n",
                "line 2, column 13: ",
            ),
            // A nesting bomb: the toml crate quotes the whole line; we do not.
            (&*format!("a = {}", "[".repeat(100_000)), "line 1, column "),
        ];
        for (text, want) in cases {
            let e = TrainConfig::from_toml_str(text, path, &[])
                .expect_err("invalid")
                .to_string();
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(e.starts_with("run.toml: not valid TOML: "), "{e}");
            assert!(e.contains(want), "{e}");
            assert!(e.len() < 200, "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let ok: TrainConfig =
            serde_json::from_str(r#"{"learning_rate": 2e-5, "lora_enable": true}"#).expect("valid");
        assert!(matches!(ok.trainable(), Ok(Trainable::Lora(_))));
        let err = serde_json::from_str::<TrainConfig>(r#"{"learning_rat": 2e-5}"#).unwrap_err();
        assert!(err.to_string().contains("learning_rat"), "{err}");
    }

    #[test]
    fn steps_and_warmup_follow_hf() {
        let c = TrainConfig {
            per_device_train_batch_size: 4,
            gradient_accumulation_steps: 2,
            num_train_epochs: 1.0,
            warmup_ratio: 0.03,
            ..Default::default()
        };
        assert_eq!(c.total_steps(1000), 125);
        assert_eq!(c.optim_settings(125).warmup_steps, 4);
    }
}
