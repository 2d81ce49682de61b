//! The LLaMA decoder (LLaMA 1/2/3/3.1, Vicuna, OpenLLaMA, TinyLlama: `LlamaForCausalLM`).
//!
//! Computes what `transformers.models.llama.modeling_llama` (v4.46.3) computes: pre-norm
//! blocks of RMSNorm → GQA self-attention with rotate-half RoPE → RMSNorm → SwiGLU MLP.
//! Reference: <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/llama/modeling_llama.py>.
//!
//! This file is the inference path: it uses candle's fused forward-only kernels (RMSNorm,
//! RoPE, softmax), which drop gradients (see `spec/candle-autograd.md`).

use std::collections::HashMap;
use std::f64::consts::PI;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::lora::{self, LoraAdapter, LoraDelta};
use crate::weights::Weights;

/// LoRA updates still to be attached, keyed by module path (`model.layers.0.self_attn.q_proj`).
type Deltas = HashMap<String, LoraDelta>;

/// `x @ w.T (+ b)` on a 2-D activation `[n, in]` with an HF-layout weight `[out, in]`, plus an
/// unmerged LoRA update `scaling · (x·Aᵀ)·Bᵀ` when an adapter targets this layer.
#[derive(Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraDelta>,
}

impl Linear {
    fn new(w: &Weights, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias {
            Some(w.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
        })
    }

    /// [`Linear::new`] for the module at path `name`, taking its LoRA update out of `deltas`.
    fn with_lora(
        w: &Weights,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
        name: String,
        deltas: &mut Deltas,
    ) -> Result<Self> {
        Ok(Self {
            lora: deltas.remove(&name),
            ..Self::new(w, out_dim, in_dim, bias)?
        })
    }

    /// `[n, in] -> [n, out]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.matmul(&self.weight.t()?)?;
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        match &self.lora {
            Some(l) => l.apply(xs, ys),
            None => Ok(ys),
        }
    }
}

#[derive(Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(w: &Weights, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[size], "weight")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &xs.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }
}

/// cos/sin tables `[max_positions, head_dim / 2]` in the model dtype.
#[derive(Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// RoPE inverse frequencies, as `transformers.modeling_rope_utils` (v4.46) computes them.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let scaled: Vec<f64> = match scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

impl Rope {
    fn new(
        cfg: &LlamaConfig,
        scaling: &RopeScaling,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let freqs = inv_freq(cfg.head_dim(), cfg.rope_theta, scaling);
        let n = cfg.max_position_embeddings;
        let half = freqs.len();
        // Angles in f32 as transformers computes them (inv_freq[f32] * position[f32]).
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for &f in &freqs {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
        })
    }

    /// Rotates projections `[b, t, heads, head_dim]` for positions `offset..offset + t` and
    /// returns them head-major, `[b, heads, t, head_dim]`. On CPU/f32 one vectorised pass does
    /// both (candle's rope kernel is scalar and needs the transposed copy first).
    fn apply(&self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        if xs.dtype() == DType::F32 && xs.device().is_cpu() {
            let op = crate::attention::RopeToHeads { offset };
            return Ok(xs
                .contiguous()?
                .apply_op3_no_bwd(&self.cos, &self.sin, &op)?);
        }
        let t = xs.dim(1)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        Ok(candle_nn::rotary_emb::rope(
            &xs.transpose(1, 2)?.contiguous()?,
            &cos,
            &sin,
        )?)
    }
}

/// Per-layer keys and values `[b, kv_heads, seen, head_dim]` of the tokens seen so far.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &LlamaConfig, w: &Weights, layer: usize, deltas: &mut Deltas) -> Result<Self> {
        let (h, kvh, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let hs = cfg.hidden_size;
        let b = cfg.attention_bias;
        let mut linear = |name: &str, out_dim: usize, in_dim: usize| {
            let path = lora::module_name(layer, "self_attn", name);
            Linear::with_lora(&w.pp(name), out_dim, in_dim, b, path, deltas)
        };
        Ok(Self {
            q_proj: linear("q_proj", h * d, hs)?,
            k_proj: linear("k_proj", kvh * d, hs)?,
            v_proj: linear("v_proj", kvh * d, hs)?,
            o_proj: linear("o_proj", hs, h * d)?,
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: d,
        })
    }

    /// `xs: [b*t, hidden]` for `b` sequences of `t` new tokens at positions `offset..`.
    /// Query heads that share a KV head are folded into the row dimension, so GQA needs no
    /// copy of K/V: `q: [b, kv_heads, n_rep*t, d]` against `k: [b, kv_heads, T, d]`.
    fn forward(
        &self,
        xs: &Tensor,
        (b, t): (usize, usize),
        offset: usize,
        rope: &Rope,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self.q_proj.forward(xs)?.reshape((b, t, h, d))?;
        let k = self.k_proj.forward(xs)?.reshape((b, t, kvh, d))?;
        let v = self
            .v_proj
            .forward(xs)?
            .reshape((b, t, kvh, d))?
            .transpose(1, 2)?;
        let q = rope.apply(&q, offset)?;
        let k = rope.apply(&k, offset)?;
        let v = v.contiguous()?;
        let (k, v) = match cache {
            Some(slot) => {
                let kv = match slot.as_ref() {
                    Some((pk, pv)) => {
                        // A prefix cached once (batch 1) serves a batch of continuations.
                        let (pk, pv) = if pk.dim(0)? != b {
                            let shape = (b, kvh, pk.dim(2)?, d);
                            (pk.broadcast_as(shape)?, pv.broadcast_as(shape)?)
                        } else {
                            (pk.clone(), pv.clone())
                        };
                        (
                            Tensor::cat(&[&pk, &k], 2)?.contiguous()?,
                            Tensor::cat(&[&pv, &v], 2)?.contiguous()?,
                        )
                    }
                    None => (k, v),
                };
                *slot = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        let scale = 1.0 / (d as f64).sqrt();
        // The fused kernel wins where per-head gemm calls are too small to pay off (measured:
        // head_dim 8, stories260K, 23 vs 35 ms per 280-token pass) and loses to gemm at LLaMA's
        // head dims (head_dim 64, 134M model: ~1.25 vs ~1.15 s per 450-token pass).
        let ys = if d <= FUSED_ATTENTION_MAX_HEAD_DIM
            && q.dtype() == DType::F32
            && q.device().is_cpu()
        {
            // [b, t, h, d]: the fused kernel writes o_proj's input layout directly.
            let op = crate::attention::CausalAttention {
                scale: scale as f32,
                offset,
            };
            q.apply_op3_no_bwd(&k, &v, &op)?.reshape((b * t, h * d))?
        } else {
            composed_attention(&q, &k, &v, (b, t), offset, scale)?
        };
        self.o_proj.forward(&ys)
    }
}

/// Attention from candle ops (any dtype and device): `q: [b, h, t, d]`, `k, v: [b, kvh, T, d]`
/// → `[b*t, h*d]`. Query heads sharing a KV head are folded into the row dimension, so GQA
/// needs no copy of K/V.
fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (b, t): (usize, usize),
    offset: usize,
    scale: f64,
) -> Result<Tensor> {
    let (_, h, _, d) = q.dims4()?;
    let (_, kvh, total, _) = k.dims4()?;
    let n_rep = h / kvh;
    let q = (q * scale)?.reshape((b, kvh, n_rep * t, d))?;
    let mut att = q.matmul(&k.t()?)?; // [b, kvh, n_rep*t, total]
    if t > 1 {
        att = att.broadcast_add(&causal_mask(
            n_rep,
            t,
            offset,
            total,
            att.dtype(),
            att.device(),
        )?)?;
    }
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let ys = att.matmul(v)?; // [b, kvh, n_rep*t, d]
    Ok(ys
        .reshape((b, h, t, d))?
        .transpose(1, 2)?
        .reshape((b * t, h * d))?)
}

/// Largest head dimension for which [`crate::attention::CausalAttention`] beats candle's gemm.
const FUSED_ATTENTION_MAX_HEAD_DIM: usize = 32;

/// Additive mask `[n_rep*t, total]`: row `r` is query position `offset + r % t`, which may
/// see keys `0..=offset + r % t`.
fn causal_mask(
    n_rep: usize,
    t: usize,
    offset: usize,
    total: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f32; n_rep * t * total];
    for r in 0..n_rep * t {
        let i = offset + r % t;
        for v in &mut m[r * total + i + 1..(r + 1) * total] {
            *v = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(m, (n_rep * t, total), dev)?.to_dtype(dtype)?)
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &LlamaConfig, w: &Weights, layer: usize, deltas: &mut Deltas) -> Result<Self> {
        let (hs, is, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let mut linear = |name: &str, out_dim: usize, in_dim: usize| {
            let path = lora::module_name(layer, "mlp", name);
            Linear::with_lora(&w.pp(name), out_dim, in_dim, b, path, deltas)
        };
        Ok(Self {
            gate_proj: linear("gate_proj", is, hs)?,
            up_proj: linear("up_proj", is, hs)?,
            down_proj: linear("down_proj", hs, is)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &LlamaConfig, w: &Weights, layer: usize, deltas: &mut Deltas) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(
                &w.pp("input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            self_attn: Attention::new(cfg, &w.pp("self_attn"), layer, deltas)?,
            post_attention_layernorm: RmsNorm::new(
                &w.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::new(cfg, &w.pp("mlp"), layer, deltas)?,
        })
    }
}

/// `LlamaForCausalLM`: embeddings, decoder layers, final norm and LM head.
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    pub config: LlamaConfig,
}

impl Llama {
    /// Builds the model from checkpoint weights; every tensor's shape is checked against `cfg`.
    /// `config_path` only names `config.json` in errors.
    pub fn new(cfg: &LlamaConfig, w: &Weights, config_path: &Path) -> Result<Self> {
        Self::new_with_adapter(cfg, w, config_path, None)
    }

    /// [`Llama::new`] with a PEFT LoRA adapter applied unmerged to the linear layers it targets
    /// (see [`crate::lora`]); the adapter is checked against `cfg` before any base weight is read.
    pub fn new_with_adapter(
        cfg: &LlamaConfig,
        w: &Weights,
        config_path: &Path,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Self> {
        let scaling = cfg.rope_scaling(config_path)?;
        let mut deltas = match adapter {
            Some(a) => a.bind(cfg, &w.device)?,
            None => Deltas::new(),
        };
        let (v, hs) = (cfg.vocab_size, cfg.hidden_size);
        let m = w.pp("model");
        let embed_tokens = m.get(&[v, hs], "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, &m.pp(&format!("layers.{i}")), i, &mut deltas))
            .collect::<Result<Vec<_>>>()?;
        // `bind` only returns modules of this architecture, so every update found its layer.
        if let (Some(a), Some(module)) = (adapter, deltas.keys().next()) {
            return Err(Error::format(
                &a.weights_path,
                format!("the update for `{module}` was not applied to any layer"),
            ));
        }
        let norm = RmsNorm::new(&m.pp("norm"), hs, cfg.rms_norm_eps)?;
        // Tied checkpoints usually omit lm_head.weight; transformers then reuses the embedding.
        let lm_head = if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            w.get(&[v, hs], "lm_head.weight")?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg, &scaling, w.dtype, &w.device)?,
            config: cfg.clone(),
        })
    }

    /// The compute device.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The weight dtype.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Runs `ids: [b, t]` (positions `cache.len()..`), returns the final-norm hidden states
    /// `[b, t, hidden]`. With a cache, keys/values of these tokens are appended to it.
    /// Right padding is harmless: causal attention keeps padded positions out of earlier rows.
    pub fn forward_hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_hidden_embeds(&self.embed(ids)?, cache)
    }

    /// Input embeddings of `ids: [b, t]` → `[b, t, hidden]` (`inputs_embeds` in transformers).
    /// Multimodal models splice image features between such rows.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let xs = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?;
        Ok(xs.reshape((b, t, self.config.hidden_size))?)
    }

    /// [`Llama::forward_hidden`] from input embeddings `[b, t, hidden]` (positions
    /// `cache.len()..`), as transformers' `inputs_embeds=` argument.
    pub fn forward_hidden_embeds(
        &self,
        embeds: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, hidden) = embeds.dims3()?;
        if hidden != self.config.hidden_size {
            return Err(Error::Request(format!(
                "input embeddings have width {hidden}, the decoder's hidden_size is {}",
                self.config.hidden_size
            )));
        }
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let max = self.config.max_position_embeddings;
        if offset + t > max {
            return Err(Error::Request(format!(
                "sequence of {} tokens exceeds max_position_embeddings {max}",
                offset + t
            )));
        }
        if let Some(c) = cache.as_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        let mut xs = embeds
            .to_dtype(self.dtype())?
            .reshape((b * t, hidden))?
            .contiguous()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            let h = layer.input_layernorm.forward(&xs)?;
            let h = layer
                .self_attn
                .forward(&h, (b, t), offset, &self.rope, slot)?;
            xs = (xs + h)?;
            let h = layer.post_attention_layernorm.forward(&xs)?;
            xs = (&xs + layer.mlp.forward(&h)?)?;
        }
        let xs = self.norm.forward(&xs)?;
        Ok(xs.reshape((b, t, hidden))?)
    }

    /// LM-head logits in f32 for hidden rows `[n, hidden]` → `[n, vocab]` (transformers
    /// upcasts logits to f32 as well).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let ys = hidden.contiguous()?.matmul(&self.lm_head.t()?)?;
        Ok(ys.to_dtype(DType::F32)?)
    }

    /// Full forward: `ids: [b, t]` → f32 logits `[b, t, vocab]`.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.forward_hidden(ids, cache)?;
        let logits = self.logits(&hidden.reshape((b * t, self.config.hidden_size))?)?;
        Ok(logits.reshape((b, t, ()))?)
    }

    /// Logits of the last position of each row: `[b, t]` → `[b, vocab]`.
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let hidden = self.forward_hidden(ids, cache)?;
        self.logits(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?)
    }
}

/// Log-softmax of one logits row at `target`, and whether `target` is its (first) argmax.
/// Accumulates in f64; torch does it in f32, which differs by ~1e-7 relative.
pub fn logprob_and_greedy(row: &[f32], target: u32) -> (f64, bool) {
    let mut argmax = 0usize;
    let mut max = f32::NEG_INFINITY;
    for (i, &x) in row.iter().enumerate() {
        if x > max {
            max = x;
            argmax = i;
        }
    }
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lp = (row[target as usize] - max) as f64 - sum.ln();
    (lp, argmax == target as usize)
}

/// Index of the (first) largest value.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both attention paths (candle ops, fused kernel) agree, GQA and a KV offset included.
    #[test]
    fn composed_and_fused_attention_agree() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, kvh, t, d, offset) = (2, 8, 2, 6, 64, 5);
        let q = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, kvh, offset + t, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, kvh, offset + t, d), &dev)?;
        let scale = 1.0 / (d as f64).sqrt();
        let composed = composed_attention(&q, &k, &v, (b, t), offset, scale)?;
        let op = crate::attention::CausalAttention {
            scale: scale as f32,
            offset,
        };
        let fused = q.apply_op3_no_bwd(&k, &v, &op)?.reshape((b * t, h * d))?;
        let diff = (composed - fused)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }
}
