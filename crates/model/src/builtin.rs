//! Models compiled into the binary, so every command has a default that works offline on a
//! fresh machine: `builtin:stories260k` (llama2.c's 260K-parameter TinyStories model, MIT).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::llama2c;

const STORIES260K_BIN: &[u8] = include_bytes!("../../../data/models/stories260k/stories260K.bin");
const STORIES260K_TOK: &[u8] = include_bytes!("../../../data/models/stories260k/tok512.bin");

/// Names accepted after `builtin:`.
pub const BUILTIN_MODELS: &[&str] = &["stories260k"];

/// An HF-layout model held in memory: `config.json`, tensors, `tokenizer.json`,
/// `tokenizer_config.json`.
pub struct BuiltinModel {
    pub config_json: String,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer_json: Vec<u8>,
    pub tokenizer_config_json: Vec<u8>,
    /// A pseudo path naming the model in messages.
    pub origin: PathBuf,
}

/// Converts the named built-in model (a few milliseconds for stories260k).
pub fn builtin(name: &str) -> Result<BuiltinModel> {
    match name.to_ascii_lowercase().as_str() {
        "stories260k" => {
            let origin = PathBuf::from("builtin:stories260k");
            let conv = llama2c::convert_checkpoint(STORIES260K_BIN, &origin)?;
            let tok = llama2c::convert_tokenizer(STORIES260K_TOK, conv.header.vocab_size, &origin)?;
            let tensors = conv
                .tensors
                .into_iter()
                .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
                .collect::<Result<HashMap<_, _>>>()?;
            Ok(BuiltinModel {
                config_json: conv.config.to_string(),
                tensors,
                tokenizer_json: tok.to_string().into_bytes(),
                tokenizer_config_json: llama2c::tokenizer_config(conv.header.seq_len)
                    .to_string()
                    .into_bytes(),
                origin,
            })
        }
        other => Err(Error::Unsupported(format!(
            "unknown built-in model `builtin:{other}` (available: {})",
            BUILTIN_MODELS
                .iter()
                .map(|m| format!("builtin:{m}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Writes the named built-in model as an HF directory at `out` (config.json,
/// model.safetensors, tokenizer.json, tokenizer_config.json), e.g. as the base model of a
/// training run. `max_position_embeddings` raises the declared context (config and tokenizer
/// `model_max_length`): LLaMA's rotary positions have no learned table, so the weights are
/// unchanged and every sequence that fitted before scores the same; longer ones (LLaVA's `v0`
/// image prompt is ~1,100 tokens on stories260k's 512-piece vocabulary) become possible.
pub fn write_dir(name: &str, out: &Path, max_position_embeddings: Option<usize>) -> Result<()> {
    let b = builtin(name)?;
    let mut config: serde_json::Value = serde_json::from_str(&b.config_json)
        .map_err(|e| Error::format(&b.origin, e.to_string()))?;
    let mut tok_config: serde_json::Value = serde_json::from_slice(&b.tokenizer_config_json)
        .map_err(|e| Error::format(&b.origin, e.to_string()))?;
    let tokenizer: serde_json::Value = serde_json::from_slice(&b.tokenizer_json)
        .map_err(|e| Error::format(&b.origin, e.to_string()))?;
    if let Some(n) = max_position_embeddings {
        config["max_position_embeddings"] = n.into();
        tok_config["model_max_length"] = n.into();
    }
    let files = [
        ("config.json", config),
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", tok_config),
    ];
    llama2c::write_hf_dir(out, &files, &b.tensors)
}
