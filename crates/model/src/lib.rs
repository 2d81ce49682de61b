//! `sightline-model`: LLaMA-family decoders on candle that compute what transformers computes.
//!
//! - [`load`] opens a model by spec — an HF directory (`config.json`, safetensors or
//!   `pytorch_model*.bin`, `tokenizer.json`), a Hub id (`org/name[@revision]`, see [`hub`]) or
//!   `builtin:stories260k` — checking every tensor.
//! - [`score`] answers lm-evaluation-harness log-likelihood requests, batched and with
//!   shared-prefix KV caching.
//! - [`generate`] decodes greedily or by sampling with a KV cache.
//! - [`lora`] applies a PEFT LoRA adapter unmerged, as lm-eval's `peft=` does
//!   ([`LoadOptions::adapter`]), and trains fresh ones ([`llama::Trainable::Lora`]).
//! - [`llama::Llama`] is the one decoder: frozen for evaluation, with `Var`s where it trains
//!   ([`param`]); its ops are `sightline_kernels`'.
//!
//! ```no_run
//! use sightline_model::{load, score::{score, Request, ScoreOptions}, LoadOptions};
//! let m = load("builtin:stories260k", &LoadOptions::default())?;
//! let req = Request { context: "Once upon a time".into(), continuation: " there".into() };
//! let out = score(&m.model, &m.tokenizer, &[req], &ScoreOptions::default(), &mut |_, _| {})?;
//! println!("{}", out[0].logprob);
//! # Ok::<(), sightline_model::Error>(())
//! ```

pub mod builtin;
pub mod config;
pub mod device;
pub mod dtype;
pub mod error;
pub mod generate;
pub mod hub;
pub mod llama;
pub mod llama2c;
pub mod lora;
pub mod param;
pub mod pickle;
pub mod score;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

pub use config::{CheckpointLayout, LlamaConfig};
pub use device::open_device;
pub use dtype::{dtype_name, resolve_dtype};
pub use error::{Error, Result};
pub use llama::{Llama, Trainable};
pub use lora::LoraAdapter;
pub use tokenizer::Tokenizer;
pub use weights::Weights;

/// The model every command uses when `--model` is not given.
pub const DEFAULT_MODEL: &str = "builtin:stories260k";

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// A PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors` or
    /// `.bin`) or Hub id to apply unmerged on top of the base model, like lm-eval's `peft=`
    /// argument.
    pub adapter: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            adapter: None,
        }
    }
}

/// A decoder with its tokenizer.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// The spec it was loaded from (for reports).
    pub spec: String,
}

/// Parses `f32`, `bf16`, `f16` (and the torch spellings `float32`, `bfloat16`, `float16`).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(Error::Unsupported(format!(
            "unknown dtype `{other}` (expected f32, bf16 or f16)"
        ))),
    }
}

/// Loads `builtin:<name>`, an HF model directory or a Hub id ([`hub::resolve`]), with
/// `opts.adapter` (a PEFT LoRA adapter) applied unmerged when given.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    if let Some(name) = spec.strip_prefix("builtin:") {
        let b = builtin::builtin(name)?;
        let cfg = LlamaConfig::from_json(&b.config_json, &b.origin)?;
        let weights = Weights::from_tensors(b.tensors, b.origin.clone(), opts.dtype, &opts.device);
        let tokenizer = Tokenizer::from_bytes(
            &b.tokenizer_json,
            Some(&b.tokenizer_config_json),
            b.origin.clone(),
            None,
            None,
        )?;
        return assemble(cfg, &weights, tokenizer, &b.origin, spec, opts);
    }
    let resolved = hub::resolve(spec, hub::Need::Model)?;
    let dir = resolved.path.as_path();
    if !dir.is_dir() {
        return Err(Error::format(
            dir,
            format!(
                "not a model directory (give an HF checkpoint directory or one of: {})",
                builtin::BUILTIN_MODELS
                    .iter()
                    .map(|m| format!("builtin:{m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::format(dir, "no config.json"));
    }
    let (layout, cfg, _) = config::read_checkpoint_config(&config_path)?;
    let tokenizer = Tokenizer::from_dir(
        dir,
        LlamaConfig::token_ids(&cfg.bos_token_id).first().copied(),
        LlamaConfig::token_ids(&cfg.eos_token_id).first().copied(),
    )?;
    let weights = Weights::from_dir(dir, opts.dtype, &opts.device)?;
    // A LLaVA checkpoint loads here as its decoder alone: the text-only evaluations of the
    // paper run the LLM without the vision tower (`sightline-vision` loads the rest).
    let weights = match layout.decoder_prefix() {
        "" => weights,
        prefix => weights.pp(prefix),
    };
    assemble(cfg, &weights, tokenizer, &config_path, spec, opts)
}

/// Builds the decoder (with `opts.adapter`) from checkpoint parts that are already open, after
/// checking that the tokenizer fits the embedding. `config_path` names config.json in errors.
pub fn assemble(
    cfg: LlamaConfig,
    weights: &Weights,
    tokenizer: Tokenizer,
    config_path: &Path,
    spec: &str,
    opts: &LoadOptions,
) -> Result<LoadedModel> {
    let bound = tokenizer.id_bound();
    if bound > cfg.vocab_size {
        return Err(Error::format(
            tokenizer.path.clone(),
            format!(
                "the tokenizer has ids up to {} but the model's embedding has vocab_size {} ({})",
                bound - 1,
                cfg.vocab_size,
                config_path.display()
            ),
        ));
    }
    let adapter = opts
        .adapter
        .as_deref()
        .map(|a| LoraAdapter::from_dir(&hub::resolve_path(a, hub::Need::Adapter)?.path))
        .transpose()?;
    let model = Llama::new_with_adapter(&cfg, weights, config_path, adapter.as_ref())?;
    Ok(LoadedModel {
        model,
        tokenizer,
        spec: spec.to_string(),
    })
}
