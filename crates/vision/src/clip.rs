//! The CLIP vision tower (HF `CLIPVisionModel`, the `vision_model` half of `CLIPModel`) as
//! LLaVA uses it: pixels in, one entry of `hidden_states` out (spec `llava-model.md` M1, M2).
//!
//! Computes what `transformers.models.clip.modeling_clip` (v4.46.3) computes: a stride-`p`
//! patch convolution without bias, the class token, learned positions, `pre_layrnorm`, then
//! pre-LN encoder layers with bidirectional multi-head attention.
//! Reference: <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/clip/modeling_clip.py>.
//!
//! Inference only: the tower is frozen in LLaVA, so the forward pass uses candle's fused
//! forward-only kernels (softmax) and folds the attention scale into the query projection.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use sightline_model::Weights;

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
    fn forward(self, xs: &Tensor) -> Result<Tensor> {
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

/// `x @ w.T + b` on 2-D activations `[n, in]` with an HF-layout weight `[out, in]`.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(w: &Weights, out_dim: usize, in_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[out_dim, in_dim], "weight")?,
            bias: w.get(&[out_dim], "bias")?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// `nn.LayerNorm` over the last dim, two-pass (mean, then variance of the centred values) in
/// f32 whatever the model dtype ([`sightline_kernels::layer_norm`], forward and backward). Why
/// not `candle_nn::ops::layer_norm`: it takes the variance as `E[x²] − E[x]²` in one pass, which
/// cancels catastrophically on residual streams with a large common offset; PyTorch's kernel
/// (Welford, f32 accumulation) does not.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(w: &Weights, size: usize, eps: f64) -> Result<Self> {
        // Loaded in the model dtype first (that is what a half-precision HF model holds), then
        // widened for the f32 arithmetic.
        Ok(Self {
            weight: w.get(&[size], "weight")?.to_dtype(DType::F32)?,
            bias: w.get(&[size], "bias")?.to_dtype(DType::F32)?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let y = sightline_kernels::layer_norm(&x, &self.weight, &self.bias, self.eps)?;
        Ok(y.to_dtype(dtype)?)
    }
}

/// Bidirectional multi-head self-attention with q/k/v/out biases (`CLIPAttention`).
struct Attention {
    /// q, k and v stacked into one `[3·hidden, hidden]` projection (one matmul instead of
    /// three), with `head_dim^-0.5` folded into the q rows: HF's eager path scales q after the
    /// projection, its SDPA path scales the scores; all agree to rounding.
    qkv: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(w: &Weights, cfg: &ClipVisionConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let q = Linear::new(&w.pp("q_proj"), h, h)?;
        let k = Linear::new(&w.pp("k_proj"), h, h)?;
        let v = Linear::new(&w.pp("v_proj"), h, h)?;
        let scale = (cfg.head_dim() as f64).powf(-0.5);
        let qkv = Linear {
            weight: Tensor::cat(&[(q.weight * scale)?, k.weight, v.weight], 0)?,
            bias: Tensor::cat(&[(q.bias * scale)?, k.bias, v.bias], 0)?,
        };
        Ok(Self {
            qkv,
            out: Linear::new(&w.pp("out_proj"), h, h)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `[b·t, hidden]` → `[b·t, hidden]`.
    fn forward(&self, xs: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let (nh, d) = (self.heads, self.head_dim);
        // [b·t, 3·h] → [3, b, heads, t, d] in one copy.
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, t, 3, nh, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = q.matmul(&k.t()?)?;
        let probs = if scores.dtype() == DType::F32 {
            candle_nn::ops::softmax_last_dim(&scores)?
        } else {
            // Half-precision softmax in f32, as PyTorch's kernels accumulate it.
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                .to_dtype(scores.dtype())?
        };
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, nh * d))?;
        self.out.forward(&ctx)
    }
}

/// `CLIPEncoderLayer`: `h += attn(ln1(h)); h += fc2(act(fc1(ln2(h))))`.
struct EncoderLayer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(w: &Weights, cfg: &ClipVisionConfig, act: Activation) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            ln1: LayerNorm::new(&w.pp("layer_norm1"), h, cfg.layer_norm_eps)?,
            attn: Attention::new(&w.pp("self_attn"), cfg)?,
            ln2: LayerNorm::new(&w.pp("layer_norm2"), h, cfg.layer_norm_eps)?,
            fc1: Linear::new(&w.pp("mlp.fc1"), m, h)?,
            fc2: Linear::new(&w.pp("mlp.fc2"), h, m)?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.ln1.forward(xs)?, b, t)?)?;
        let mlp = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.ln2.forward(&xs)?)?)?,
        )?;
        Ok((xs + mlp)?)
    }
}

/// The frozen CLIP vision tower, truncated after the layer whose output LLaVA selects.
pub struct ClipVisionTower {
    pub config: ClipVisionConfig,
    /// `mm_vision_select_layer` as given.
    pub select_layer: i64,
    /// Its index into `hidden_states` = the number of encoder layers run.
    hidden_index: usize,
    /// The conv weight `[hidden, C, p, p]` flattened to `[hidden, C·p·p]`.
    patch_weight: Tensor,
    /// `class_embedding` `[1, hidden]`.
    class_embedding: Tensor,
    /// `position_embedding.weight` `[1 + patches, hidden]`.
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    dtype: DType,
    device: Device,
    /// The config file, for error messages about inputs that do not fit it.
    config_path: PathBuf,
}

impl ClipVisionTower {
    /// `w` is positioned at the `vision_model` prefix (`weights.pp("vision_model")`, or
    /// `weights.pp("vision_tower.vision_model")` for llava-hf). `select_layer` is LLaVA's
    /// `mm_vision_select_layer`: an index into `hidden_states` (`num_hidden_layers + 1`
    /// entries, negative from the end; -2 = penultimate layer's output). Only the layers that
    /// hidden state needs are read, so later layers may be absent; `post_layernorm` is never
    /// read. `path` names the config in errors.
    pub fn new(
        cfg: &ClipVisionConfig,
        w: &Weights,
        select_layer: i64,
        path: &Path,
    ) -> Result<Self> {
        let n = cfg.num_hidden_layers as i64;
        let hidden_index = cfg.hidden_state_index(select_layer).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "mm_vision_select_layer {select_layer} is out of range for a CLIP tower with \
                     num_hidden_layers {n} (hidden_states has {} entries: use {}..={n})",
                    n + 1,
                    -(n + 1)
                ),
            )
        })?;
        let act = cfg.activation().ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "hidden_act `{}` is not supported (supported: {})",
                    cfg.hidden_act,
                    SUPPORTED_ACTIVATIONS.join(", ")
                ),
            )
        })?;
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let emb = w.pp("embeddings");
        let patch_weight = emb
            .get(&[h, c, p, p], "patch_embedding.weight")?
            .reshape((h, c * p * p))?;
        let class_embedding = emb.get(&[h], "class_embedding")?.reshape((1, h))?;
        let position_embedding =
            emb.get(&[cfg.num_patches() + 1, h], "position_embedding.weight")?;
        let pre_layrnorm = LayerNorm::new(&w.pp("pre_layrnorm"), h, cfg.layer_norm_eps)?;
        let layers = (0..hidden_index)
            .map(|i| EncoderLayer::new(&w.pp(&format!("encoder.layers.{i}")), cfg, act))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: cfg.clone(),
            select_layer,
            hidden_index,
            patch_weight,
            class_embedding,
            position_embedding,
            pre_layrnorm,
            layers,
            dtype: w.dtype,
            device: w.device.clone(),
            config_path: path.to_path_buf(),
        })
    }

    /// Loads a local tower directory: `config.json` (`CLIPVisionModel` or `CLIPModel`) and its
    /// weights (safetensors or `pytorch_model*.bin`, tensors under `vision_model.`). Everything
    /// else in the checkpoint (`text_model.*`, projections, `logit_scale`, the legacy
    /// `position_ids` buffer) is never read.
    pub fn from_dir(dir: &Path, select_layer: i64, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg = ClipVisionConfig::from_file(&config_path)?;
        let weights = Weights::from_dir(dir, dtype, device)?;
        Self::new(
            &cfg,
            &weights.pp("vision_model"),
            select_layer,
            &config_path,
        )
    }

    /// Index into `hidden_states` that [`ClipVisionTower::hidden_state`] returns.
    pub fn hidden_index(&self) -> usize {
        self.hidden_index
    }

    /// The dtype the tower computes in (its weights').
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Pixels `[b, C, S, S]` (any float dtype; cast to the tower's, as HF does) → the selected
    /// hidden state `[b, 1 + num_patches, hidden]` in the tower dtype.
    pub fn hidden_state(&self, pixels: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let (c, s, p, g, h) = (
            cfg.num_channels,
            cfg.image_size,
            cfg.patch_size,
            cfg.grid_size(),
            cfg.hidden_size,
        );
        let b = match pixels.dims() {
            &[b, pc, ph, pw] if b > 0 && pc == c && ph == s && pw == s => b,
            dims => {
                return Err(Error::Request(format!(
                    "pixel values have shape {dims:?}, but the CLIP tower expects \
                     [batch, {c}, {s}, {s}] (num_channels {c}, image_size {s} in {})",
                    self.config_path.display()
                )))
            }
        };
        // The stride-p conv as a matmul: cut the image into patches laid out like the conv
        // weight (channel, row, column) so one GEMM gives every patch embedding; exact, and
        // much faster than candle's CPU conv2d. Patches come out row-major (y outer, x inner),
        // the order of HF's `flatten(2).transpose(1, 2)`.
        let mut px = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        if g * p != s {
            px = px.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?;
        }
        let patches = px
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let patch_embeds = patches
            .matmul(&self.patch_weight.t()?)?
            .reshape((b, g * g, h))?;
        let cls = self.class_embedding.unsqueeze(0)?.broadcast_as((b, 1, h))?;
        let embeddings =
            Tensor::cat(&[cls, patch_embeds], 1)?.broadcast_add(&self.position_embedding)?;
        let t = g * g + 1;
        let mut xs = self
            .pre_layrnorm
            .forward(&embeddings.reshape((b * t, h))?)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, b, t)?;
        }
        Ok(xs.reshape((b, t, h))?)
    }

    /// [`ClipVisionTower::hidden_state`] with LLaVA's feature selection (`Patch` drops the CLS
    /// token), cast back to the dtype of `pixels` as LLaVA's `CLIPVisionTower.forward` does.
    pub fn features(&self, pixels: &Tensor, select: SelectFeature) -> Result<Tensor> {
        let hs = self.hidden_state(pixels)?;
        let hs = match select {
            SelectFeature::Patch => hs.narrow(1, 1, self.config.num_patches())?,
            SelectFeature::ClsPatch => hs,
        };
        Ok(hs.to_dtype(pixels.dtype())?)
    }
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
