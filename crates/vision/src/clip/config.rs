//! `CLIPVisionConfig`: the fields that change the vision tower's computation, with
//! transformers 4.46.3's defaults, validated with the file and field named.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// `hidden_act` values this tower computes (the ACT2FN names that CLIP checkpoints use).
pub const SUPPORTED_ACTIVATIONS: &[&str] = &[
    "quick_gelu",
    "gelu",
    "gelu_python",
    "gelu_new",
    "gelu_pytorch_tanh",
];

/// The fields of a `CLIPVisionConfig` that change the computation, with transformers 4.46.3's
/// defaults for absent ones (llava-hf configs list only the fields that differ from them).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    /// HF default 768.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// HF default 3072.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// HF default 12.
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// HF default 12.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// HF default 3.
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    /// HF default 224.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// HF default 32.
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// HF default 1e-5.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// HF default `quick_gelu` (OpenAI CLIP); see [`SUPPORTED_ACTIVATIONS`].
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// `clip_vision_model` when present.
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_hidden_size() -> usize {
    768
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    12
}
fn default_num_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    32
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_hidden_act() -> String {
    "quick_gelu".to_string()
}

/// The MLP nonlinearity, resolved from `hidden_act` once at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU, `0.5 x (1 + erf(x/√2))` (`gelu`, `gelu_python`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" | "gelu_python" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            _ => None,
        }
    }

    /// Half-precision inputs are evaluated in f32 and rounded once, as PyTorch's kernels do
    /// (candle's bf16/f16 tanh-GELU would round every intermediate step).
    pub(crate) fn forward(self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let y = match self {
            Self::QuickGelu => (&x * candle_nn::ops::sigmoid(&x.affine(1.702, 0.0)?)?)?,
            Self::Gelu => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
        };
        Ok(y.to_dtype(dtype)?)
    }
}

impl ClipVisionConfig {
    /// From a JSON value that is either a `CLIPVisionConfig` (`model_type` `clip_vision_model`)
    /// or any config that nests one under `vision_config` (a full `CLIPConfig`, or a llava-hf
    /// `LlavaConfig`); `path` only names the file in errors. A `clip` config without
    /// `vision_config` gets the defaults, as `CLIPConfig(vision_config=None)` does.
    pub fn from_value(v: &serde_json::Value, path: &Path) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::format(path, "a CLIP config must be a JSON object"));
        }
        let empty = serde_json::Value::Object(Default::default());
        let top_type = v.get("model_type").and_then(|t| t.as_str());
        let (inner, prefix) = match v.get("vision_config") {
            Some(vc) if vc.is_null() => (&empty, "vision_config."),
            Some(vc) => (vc, "vision_config."),
            None => match top_type {
                Some("clip") => (&empty, "vision_config."),
                None | Some("clip_vision_model") => (v, ""),
                Some(other) => {
                    return Err(Error::format(
                        path,
                        format!(
                            "model_type `{other}` is not a CLIP vision config (expected \
                             `clip_vision_model`, or a config with a `vision_config` object)"
                        ),
                    ))
                }
            },
        };
        if !inner.is_object() {
            return Err(Error::format(
                path,
                format!("`{}` must be a JSON object", prefix.trim_end_matches('.')),
            ));
        }
        let cfg: ClipVisionConfig = serde_json::from_value(inner.clone()).map_err(|e| {
            Error::format(
                path,
                format!("not a valid CLIP vision config ({prefix}*): {e}"),
            )
        })?;
        cfg.validate(path, prefix)?;
        Ok(cfg)
    }

    /// Reads and validates a `config.json` (see [`ClipVisionConfig::from_value`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_value(&v, path)
    }

    fn validate(&self, path: &Path, prefix: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::format(path, msg));
        if let Some(mt) = &self.model_type {
            if mt != "clip_vision_model" {
                return bad(format!(
                    "{prefix}model_type `{mt}` is not supported (expected `clip_vision_model`)"
                ));
            }
        }
        if self.activation().is_none() {
            return bad(format!(
                "{prefix}hidden_act `{}` is not supported (supported: {})",
                self.hidden_act,
                SUPPORTED_ACTIVATIONS.join(", ")
            ));
        }
        let heads = self.num_attention_heads;
        if heads == 0 || self.hidden_size == 0 || !self.hidden_size.is_multiple_of(heads) {
            return bad(format!(
                "{prefix}hidden_size {} is not a positive multiple of {prefix}num_attention_heads {heads}",
                self.hidden_size
            ));
        }
        if self.intermediate_size == 0 || self.num_channels == 0 {
            return bad(format!(
                "{prefix}intermediate_size and {prefix}num_channels must be positive"
            ));
        }
        // transformers' stride-p conv floors the grid, so an image_size that is not a multiple
        // of patch_size is legal (the last pixel rows/columns are dropped); a grid of 0 is not.
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return bad(format!(
                "{prefix}image_size {} must be at least {prefix}patch_size {} (and both positive)",
                self.image_size, self.patch_size
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return bad(format!(
                "{prefix}layer_norm_eps {} must be a non-negative number",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// The parsed `hidden_act` (always `Some` after validation).
    pub fn activation(&self) -> Option<Activation> {
        Activation::from_name(&self.hidden_act)
    }

    /// Patches per side, `image_size / patch_size` (floored like the stride-p conv).
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// `(image_size / patch_size)²`: 256 for ViT-L/14 at 224 px.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Index into `hidden_states` (length `num_hidden_layers + 1`) for LLaVA's
    /// `mm_vision_select_layer`, with Python's negative indexing; `None` when out of range.
    pub fn hidden_state_index(&self, select_layer: i64) -> Option<usize> {
        let n = self.num_hidden_layers as i64 + 1;
        let i = if select_layer < 0 {
            n + select_layer
        } else {
            select_layer
        };
        (0..n).contains(&i).then_some(i as usize)
    }
}

/// Which features LLaVA takes from the selected hidden state (`mm_vision_select_feature`;
/// llava-hf's `vision_feature_select_strategy` `"default"` = `Patch`, `"full"` = `ClsPatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectFeature {
    /// Drop the CLS token: `[b, num_patches, hidden]`.
    Patch,
    /// Keep it: `[b, 1 + num_patches, hidden]`.
    ClsPatch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ClipVisionConfig> {
        ClipVisionConfig::from_value(&v, Path::new("/m/config.json"))
    }

    #[test]
    fn vision_config_and_defaults() {
        // llava-hf style: only the fields that differ from the defaults.
        let cfg = parse(json!({
            "model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
            "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
            "patch_size": 14, "projection_dim": 768, "vocab_size": 32000
        }))
        .unwrap();
        assert_eq!(cfg.hidden_act, "quick_gelu");
        assert_eq!(cfg.activation(), Some(Activation::QuickGelu));
        assert_eq!(cfg.layer_norm_eps, 1e-5);
        assert_eq!(cfg.num_channels, 3);
        assert_eq!(cfg.num_patches(), 576);
        assert_eq!(cfg.head_dim(), 64);

        let d = parse(json!({})).unwrap();
        assert_eq!(
            (
                d.hidden_size,
                d.intermediate_size,
                d.num_hidden_layers,
                d.num_attention_heads
            ),
            (768, 3072, 12, 12)
        );
        assert_eq!((d.image_size, d.patch_size, d.num_patches()), (224, 32, 49));
    }

    #[test]
    fn full_clip_config_uses_vision_config() {
        // openai/clip-vit-large-patch14's config.json, abridged.
        let cfg = parse(json!({
            "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
            "text_config": {"hidden_size": 768, "hidden_act": "quick_gelu", "model_type": "clip_text_model"},
            "vision_config": {"hidden_size": 1024, "image_size": 224, "intermediate_size": 4096,
                              "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
                              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                              "model_type": "clip_vision_model", "projection_dim": 768}
        }))
        .unwrap();
        assert_eq!((cfg.hidden_size, cfg.num_hidden_layers), (1024, 24));
        assert_eq!(cfg.num_patches(), 256);
        assert_eq!(cfg.hidden_state_index(-2), Some(23));

        // CLIPConfig(vision_config=None) means the defaults.
        let d = parse(json!({"model_type": "clip", "vision_config": null})).unwrap();
        assert_eq!((d.hidden_size, d.patch_size), (768, 32));
        let d = parse(json!({"model_type": "clip"})).unwrap();
        assert_eq!(d.hidden_size, 768);
    }

    #[test]
    fn activations() {
        for (name, act) in [
            ("gelu", Activation::Gelu),
            ("gelu_python", Activation::Gelu),
            ("gelu_new", Activation::GeluTanh),
            ("gelu_pytorch_tanh", Activation::GeluTanh),
        ] {
            let cfg = parse(json!({ "hidden_act": name })).unwrap();
            assert_eq!(cfg.activation(), Some(act));
        }
        let e = parse(json!({"vision_config": {"hidden_act": "relu"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/m/config.json"), "{e}");
        assert!(e.contains("vision_config.hidden_act `relu`"), "{e}");
        let e = parse(json!({ "hidden_act": "swish" }))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_act `swish` is not supported"), "{e}");
    }

    #[test]
    fn invalid_configs() {
        let cases = [
            (
                json!({"hidden_size": 100, "num_attention_heads": 12}),
                "num_attention_heads 12",
            ),
            (json!({"num_attention_heads": 0}), "num_attention_heads 0"),
            (json!({"image_size": 10, "patch_size": 14}), "patch_size 14"),
            (json!({"patch_size": 0}), "patch_size 0"),
            (
                json!({"model_type": "siglip_vision_model"}),
                "siglip_vision_model",
            ),
            (
                json!({"model_type": "llava", "mm_vision_tower": "openai/clip"}),
                "`llava`",
            ),
            (
                json!({"vision_config": {"model_type": "siglip_vision_model"}}),
                "vision_config.model_type",
            ),
            (
                json!({"hidden_size": "big"}),
                "not a valid CLIP vision config",
            ),
            (
                json!({"vision_config": 3}),
                "`vision_config` must be a JSON object",
            ),
            (json!([1, 2]), "JSON object"),
        ];
        for (v, want) in cases {
            let e = parse(v).unwrap_err().to_string();
            assert!(e.starts_with("/m/config.json: "), "{e}");
            assert!(e.contains(want), "`{e}` lacks `{want}`");
        }
        // Not a multiple: the conv floors the grid, as transformers does.
        let cfg = parse(json!({"image_size": 30, "patch_size": 7})).unwrap();
        assert_eq!(cfg.num_patches(), 16);
    }

    #[test]
    fn select_layer_index() {
        let cfg = parse(json!({"num_hidden_layers": 24})).unwrap();
        assert_eq!(cfg.hidden_state_index(-1), Some(24));
        assert_eq!(cfg.hidden_state_index(-2), Some(23));
        assert_eq!(cfg.hidden_state_index(-25), Some(0));
        assert_eq!(cfg.hidden_state_index(-26), None);
        assert_eq!(cfg.hidden_state_index(0), Some(0));
        assert_eq!(cfg.hidden_state_index(24), Some(24));
        assert_eq!(cfg.hidden_state_index(25), None);
    }
}
