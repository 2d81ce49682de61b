//! The CLIP vision tower (HF `CLIPVisionModel`, the `vision_model` half of `CLIPModel`) as
//! LLaVA uses it: pixels in, one entry of `hidden_states` out (spec `llava-model.md` M1, M2).
//!
//! Computes what `transformers.models.clip.modeling_clip` (v4.46.3) computes: a stride-`p`
//! patch convolution without bias, the class token, learned positions, `pre_layrnorm`, then
//! pre-LN encoder layers with bidirectional multi-head attention.
//! Reference: <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/clip/modeling_clip.py>.
//!
//! The tower is frozen in LLaVA, so the forward pass uses candle's fused forward-only softmax
//! and folds the attention scale into the query projection; its LayerNorm is
//! `sightline_kernels::layer_norm` (forward and backward). The config is [`config`].

pub mod config;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sightline_model::Weights;

use crate::error::{Error, Result};
pub use config::{Activation, ClipVisionConfig, SelectFeature, SUPPORTED_ACTIVATIONS};

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
