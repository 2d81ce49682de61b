//! `sightline-train`: the training core for LLaVA's two-stage recipe and text-only tuning.
//!
//! - The model is `sightline_model::Llama` built with [`Llama::new_trainable`]: its trainable
//!   weights are candle `Var`s and frozen ones plain tensors (`Trainable`: full, frozen,
//!   embeddings only, LoRA), LoRA is `sightline_model::lora`, and the ops with a backward are
//!   `sightline_kernels`. This crate has no model code of its own.
//! - LLaVA's projector and the splice of image features are `sightline_vision`'s
//!   (`projector`, `splice`), the ones evaluation uses.
//! - [`loss`]: transformers' shifted cross-entropy; [`optim`]: torch AdamW and
//!   `clip_grad_norm_`; [`schedule`]: HF's warmup + linear/cosine schedules.
//! - [`finetune::Trainer`]: one HF-Trainer optimizer step (accumulate, clip, AdamW, schedule);
//!   [`finetune::Trainer::set_gradient_checkpointing`] recomputes each decoder layer in the
//!   backward instead of keeping its activations (same losses and gradients, bit for bit in
//!   the tests; activation memory of one layer plus each layer's input).
//! - `bf16 = true` ([`config::TrainConfig::compute_dtype`]): bf16 mixed precision, with f32
//!   master weights (`sightline_model::param::Param::Mixed`, cast to bf16 at each use) and
//!   f32 AdamW moments, gradients and loss; the same code on every device.
//! - AdamW updates parameters in place. Speed and memory against PyTorch:
//!   `bench/train_step_vs_torch.py`, figures in BENCHMARKS.md.
//! - [`checkpoint`]: full weights, `mm_projector.safetensors`, PEFT adapters, atomically.
//! - [`config::TrainConfig`]: the run settings with HF-Trainer / LLaVA field names.
//! - [`distributed`]: data-parallel training over a `sightline_collective::Collective` (MPI):
//!   each rank's slice of the global batch, the shared start, world-size-free checkpoints;
//!   [`run::run_on`] is the loop as one rank; [`zero`]: `zero_stage = 1`, the AdamW moments
//!   sharded over the ranks (ZeRO stage 1).
//!
//! Parity: `tests/parity.rs` checks the first losses and the weights after 3 steps against
//! PyTorch (`scripts/reference/make_train_fixtures.py`).
//!
//! ```no_run
//! use std::path::Path;
//! use candle_core::{DType, Device};
//! use sightline_model::{Llama, LlamaConfig, Trainable, Weights};
//! use sightline_train::{finetune::*, schedule::SchedulerType};
//! let dir = Path::new("tests/fixtures/train/base");
//! let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
//! let w = Weights::from_dir(dir, DType::F32, &Device::Cpu)?;
//! let model = Llama::new_trainable(&cfg, &w, &dir.join("config.json"), &Trainable::Full)?;
//! let settings = OptimSettings {
//!     learning_rate: 2e-5, mm_projector_lr: None, weight_decay: 0.0,
//!     adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8,
//!     lr_scheduler_type: SchedulerType::Cosine, warmup_steps: 3, total_steps: 100,
//!     max_grad_norm: None, accum_loss: AccumLoss::Tokens,
//! };
//! let mut trainer = Trainer::new(model, None, settings);
//! # let group: Vec<Batch> = vec![];
//! let report = trainer.train_step(&group)?;
//! # Ok::<(), sightline_train::Error>(())
//! ```

pub mod alloc;
pub mod artifacts;
pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod distributed;
pub mod error;
pub mod finetune;
pub mod loss;
pub mod merge;
pub mod optim;
pub mod param;
pub mod run;
pub mod schedule;
pub mod setup;
mod state;
pub mod zero;

pub use error::{Error, Result};

#[doc(no_inline)]
pub use sightline_model::Llama;
