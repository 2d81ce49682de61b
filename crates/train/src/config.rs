//! Run settings with HF `TrainingArguments` and LLaVA `ModelArguments`/`TrainingArguments`
//! field names, so a TOML config reads like the paper's shell scripts. Unknown keys are an
//! error (`deny_unknown_fields`); defaults are HF's (transformers 4.46.3) or LLaVA's where
//! HF has none, cited per field.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::finetune::{AccumLoss, OptimSettings};
use crate::lora::LoraSpec;
use crate::model::Trainable;
use crate::schedule::{warmup_steps, SchedulerType};

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
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
    /// HF default false.
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
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
        }
    }
}

impl TrainConfig {
    /// Optimizer steps of the run for `num_examples` training rows (HF: `max_steps` if > 0,
    /// else `ceil(epochs · (len(dataloader) // accum))`, at least 1 per epoch).
    pub fn total_steps(&self, num_examples: usize) -> usize {
        if self.max_steps > 0 {
            return self.max_steps as usize;
        }
        let batches = num_examples.div_ceil(self.per_device_train_batch_size.max(1));
        let per_epoch = (batches / self.gradient_accumulation_steps.max(1)).max(1);
        (self.num_train_epochs * per_epoch as f64).ceil() as usize
    }

    /// What trains in the decoder.
    pub fn trainable(&self) -> Result<Trainable> {
        match (self.tune_mm_mlp_adapter, self.lora_enable) {
            (true, true) => Err(Error::Config(
                "tune_mm_mlp_adapter (stage 1) and lora_enable cannot both be set".into(),
            )),
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
