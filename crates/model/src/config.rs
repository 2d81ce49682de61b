//! `config.json` of a Hugging Face `LlamaForCausalLM` checkpoint, parsed at the boundary.
//!
//! Field names and defaults mirror `transformers.LlamaConfig` (v4.46,
//! `models/llama/configuration_llama.py`); unknown fields are tolerated because real
//! checkpoints carry many (`pretraining_tp`, `use_cache`, ...). Every shape field has HF's
//! default because `save_pretrained` omits fields equal to the default in nested configs
//! (llava-hf's `text_config` often lists only `vocab_size` and `rms_norm_eps`).
//!
//! LLaVA checkpoints carry a LLaMA decoder too; [`CheckpointLayout`] tells the layouts apart
//! by `config.json` alone (never by the directory's name) and says where the decoder's
//! config and tensors are.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Architectures this crate can run as a plain decoder.
pub const LLAMA_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "LLaMAForCausalLM"];

/// Original LLaVA (haotian-liu/LLaVA) classes: a LLaMA config plus `mm_*` keys, decoder tensors
/// under `model.`/`lm_head`, the projector under `model.mm_projector.`.
pub const LLAVA_ORIGINAL_ARCHITECTURES: &[&str] =
    &["LlavaLlamaForCausalLM", "LlavaLlama70bForCausalLM"];

/// transformers' own LLaVA class: nested `text_config`/`vision_config`, decoder tensors under
/// `language_model.`.
pub const LLAVA_HF_ARCHITECTURES: &[&str] = &["LlavaForConditionalGeneration"];

/// How a checkpoint directory is laid out, read from its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// `LlamaForCausalLM`.
    Llama,
    /// Original LLaVA (`LlavaLlamaForCausalLM`, `model_type` `llava`/`llava70b`, `mm_*` keys).
    LlavaOriginal,
    /// llava-hf (`LlavaForConditionalGeneration`, `text_config` + `vision_config`).
    LlavaHf,
}

impl CheckpointLayout {
    /// Classifies a parsed `config.json` by `architectures`, then `model_type` and the keys
    /// each layout must have; `path` names the file in errors.
    pub fn detect(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let archs: Vec<&str> = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let has = |list: &[&str]| archs.iter().any(|a| list.contains(a));
        if has(LLAVA_HF_ARCHITECTURES) {
            return Ok(Self::LlavaHf);
        }
        if has(LLAVA_ORIGINAL_ARCHITECTURES) {
            return Ok(Self::LlavaOriginal);
        }
        if has(LLAMA_ARCHITECTURES) {
            return Ok(Self::Llama);
        }
        if let Some(bad) = archs.first() {
            return Err(Error::format(
                path,
                format!(
                    "unknown architectures entry `{bad}` (supported: {}, {}, {})",
                    LLAMA_ARCHITECTURES.join(", "),
                    LLAVA_ORIGINAL_ARCHITECTURES.join(", "),
                    LLAVA_HF_ARCHITECTURES.join(", ")
                ),
            ));
        }
        // No `architectures`: fall back on model_type and the layout's own keys.
        match v.get("model_type").and_then(|m| m.as_str()) {
            None | Some("llama") => Ok(Self::Llama),
            Some("llava") if v.get("text_config").is_some() || v.get("vision_config").is_some() => {
                Ok(Self::LlavaHf)
            }
            Some("llava") | Some("llava70b") => Ok(Self::LlavaOriginal),
            Some(other) => Err(Error::format(
                path,
                format!("model_type `{other}` is not supported (expected `llama` or `llava`)"),
            )),
        }
    }

    /// Whether the checkpoint has a vision tower and projector.
    pub fn is_multimodal(self) -> bool {
        self != Self::Llama
    }

    /// The key prefix of the decoder's tensors (`model.*`, `lm_head.weight` below it).
    pub fn decoder_prefix(self) -> &'static str {
        match self {
            Self::LlavaHf => "language_model",
            Self::Llama | Self::LlavaOriginal => "",
        }
    }
}

/// Reads `config.json` once: its layout, the decoder's config and the raw JSON (for the
/// multimodal keys).
pub fn read_checkpoint_config(
    path: &Path,
) -> Result<(CheckpointLayout, LlamaConfig, serde_json::Value)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    let layout = CheckpointLayout::detect(&v, path)?;
    let cfg = LlamaConfig::decoder_of(&v, layout, path)?;
    Ok((layout, cfg, v))
}

/// The fields of a LLaMA `config.json` that change the computation.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    /// HF default 4096.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// HF default 11008.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// HF default 32.
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// HF default 32.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// HF default: equal to `num_attention_heads` (multi-head attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// HF default: `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// HF default 32000.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// HF default 2048.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// HF default 1e-6.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// HF default 10000.0.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// HF default false.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// HF default "silu".
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_hidden_size() -> usize {
    4096
}
fn default_intermediate_size() -> usize {
    11008
}
fn default_num_hidden_layers() -> usize {
    32
}
fn default_num_attention_heads() -> usize {
    32
}
fn default_vocab_size() -> usize {
    32000
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_hidden_act() -> String {
    "silu".to_string()
}

/// RoPE frequency scaling, from `rope_scaling` (`rope_type`, or the older `type` key).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (`_compute_linear_scaling_rope_parameters`).
    Linear { factor: f64 },
    /// LLaMA 3.1's banded rescaling (`_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let cfg: LlamaConfig = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not a valid LLaMA config.json: {e}")))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The decoder config inside a checkpoint config of any [`CheckpointLayout`]: the top level
    /// for LLaMA and original LLaVA (whose `mm_*` keys are ignored here), `text_config` for
    /// llava-hf (absent = all of `LlamaConfig`'s defaults, as transformers does).
    pub fn decoder_of(
        v: &serde_json::Value,
        layout: CheckpointLayout,
        path: &Path,
    ) -> Result<Self> {
        let mut dec = match layout {
            CheckpointLayout::LlavaHf => match v.get("text_config") {
                Some(t) if t.is_object() => t.clone(),
                Some(t) if !t.is_null() => {
                    return Err(Error::format(path, "`text_config` must be an object"))
                }
                _ => serde_json::json!({}),
            },
            _ => v.clone(),
        };
        if let Some(o) = dec.as_object_mut() {
            // The LLaVA class names are not decoder architectures; the layout already said
            // what they are.
            if layout.is_multimodal() {
                o.remove("architectures");
                o.remove("model_type");
            }
        }
        let what = match layout {
            CheckpointLayout::LlavaHf => "text_config",
            _ => "config.json",
        };
        let cfg: LlamaConfig = serde_json::from_value(dec)
            .map_err(|e| Error::format(path, format!("{what} is not a valid LLaMA config: {e}")))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if let Some(archs) = &self.architectures {
            if let Some(bad) = archs
                .iter()
                .find(|a| !LLAMA_ARCHITECTURES.contains(&a.as_str()))
            {
                return Err(Error::format(
                    path,
                    format!(
                        "unknown architectures entry `{bad}` (supported: {})",
                        LLAMA_ARCHITECTURES.join(", ")
                    ),
                ));
            }
        }
        if let Some(mt) = &self.model_type {
            if mt != "llama" {
                return Err(Error::format(
                    path,
                    format!("model_type `{mt}` is not supported (expected `llama`)"),
                ));
            }
        }
        if self.hidden_act != "silu" {
            return Err(Error::format(
                path,
                format!(
                    "hidden_act `{}` is not supported (expected `silu`)",
                    self.hidden_act
                ),
            ));
        }
        let heads = self.num_attention_heads;
        if heads == 0 || self.num_kv_heads() == 0 || !heads.is_multiple_of(self.num_kv_heads()) {
            return Err(Error::format(
                path,
                format!(
                    "num_attention_heads {heads} must be a positive multiple of num_key_value_heads {}",
                    self.num_kv_heads()
                ),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(Error::format(
                path,
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {heads}",
                    self.hidden_size
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::format(
                path,
                format!("head_dim {} must be even for RoPE", self.head_dim()),
            ));
        }
        self.rope_scaling(path)?;
        Ok(())
    }

    /// Key/value heads (GQA when fewer than query heads).
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The parsed `rope_scaling` entry.
    pub fn rope_scaling(&self, path: &Path) -> Result<RopeScaling> {
        let Some(v) = &self.rope_scaling else {
            return Ok(RopeScaling::Default);
        };
        if v.is_null() {
            return Ok(RopeScaling::Default);
        }
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                Error::format(path, "rope_scaling has no `rope_type` (or `type`) string")
            })?;
        let num = |field: &str| -> Result<f64> {
            v.get(field).and_then(|x| x.as_f64()).ok_or_else(|| {
                Error::format(
                    path,
                    format!("rope_scaling `{kind}` needs a number `{field}`"),
                )
            })
        };
        match kind {
            "default" => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }),
            other => Err(Error::format(
                path,
                format!("rope_scaling type `{other}` is not supported (supported: default, linear, llama3)"),
            )),
        }
    }

    /// Token ids listed under `bos_token_id` / `eos_token_id` (an int or a list in HF configs).
    pub fn token_ids(value: &Option<serde_json::Value>) -> Vec<u32> {
        match value {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 512
        })
    }

    #[test]
    fn defaults_follow_transformers() {
        let c = LlamaConfig::from_json(&base().to_string(), Path::new("c.json")).unwrap();
        assert_eq!(c.max_position_embeddings, 2048);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta, 10000.0);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.head_dim(), 8);
        assert_eq!(c.num_kv_heads(), 2);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut v = base();
        v["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        let err = LlamaConfig::from_json(&v.to_string(), Path::new("m/config.json")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("m/config.json") && msg.contains("MistralForCausalLM"),
            "{msg}"
        );
    }

    #[test]
    fn llama3_scaling_parses_and_dynamic_is_refused() {
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = LlamaConfig::from_json(&v.to_string(), Path::new("c")).unwrap();
        assert!(matches!(
            c.rope_scaling(Path::new("c")).unwrap(),
            RopeScaling::Llama3 { .. }
        ));
        v["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2.0});
        assert!(LlamaConfig::from_json(&v.to_string(), Path::new("c")).is_err());
    }
}
