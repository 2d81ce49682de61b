//! A differentiable `LlamaForCausalLM` for training.
//!
//! Computes what transformers 4.46.3 `modeling_llama.py` computes (pre-norm RMSNorm, GQA
//! self-attention with rotate-half RoPE, SwiGLU), like `sightline_model::llama`, but from ops
//! whose backward candle implements: the fused `rms_norm`, `rope` and `softmax_last_dim`
//! kernels the inference model uses silently drop gradients (spec/candle-autograd.md), so this
//! file composes them from elementwise ops, reductions and matmuls.
//!
//! Which weights train is decided at construction ([`Trainable`]): trainable ones are `Var`s,
//! frozen ones plain tensors ([`Param`]). There is no attention mask beyond the causal one:
//! batches are right-padded and padded positions carry label -100, which keeps them out of the
//! loss, and causal attention keeps them out of every earlier position.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use sightline_model::{LlamaConfig, Weights};

use crate::error::{Error, Result};
use crate::lora::{self, LoraLayer, LoraSpec};
use crate::param::{NamedParam, Param};

/// Which of the decoder's weights train.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Every weight (full fine-tune).
    Full,
    /// None (LLaVA stage 1: only the projector outside the decoder trains).
    Frozen,
    /// Only `embed_tokens` (LLaVA stage 1 with `mm_use_im_start_end`, spec M6.6: the whole
    /// matrix is trainable, though only the rows next to the image get a gradient).
    EmbeddingsOnly,
    /// Base weights frozen, LoRA matrices on the target modules train.
    Lora(LoraSpec),
}

/// `x·Wᵀ (+ b) (+ LoRA)` on `[n, in]`.
struct Linear {
    weight: Param,
    bias: Option<Param>,
    lora: Option<LoraLayer>,
}

impl Linear {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = xs.matmul(&self.weight.tensor().t()?)?;
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b.tensor())?,
            None => ys,
        };
        match &self.lora {
            Some(l) => Ok((ys + l.forward(xs, train)?)?),
            None => Ok(ys),
        }
    }
}

/// transformers' `LlamaRMSNorm`: `w · x / sqrt(mean(x²) + eps)`, from differentiable ops.
fn rms_norm(xs: &Tensor, w: &Param, eps: f64) -> Result<Tensor> {
    let var = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let xs = xs.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xs.broadcast_mul(w.tensor())?)
}

/// `x·cos + rotate_half(x)·sin` on `[b, heads, t, d]` with tables `[t, d]`.
fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    let x1 = xs.narrow(D::Minus1, 0, d / 2)?;
    let x2 = xs.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((xs.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

struct Layer {
    input_layernorm: Param,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: Param,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// The trainable LLaMA decoder.
pub struct TrainLlama {
    embed_tokens: Param,
    layers: Vec<Layer>,
    norm: Param,
    lm_head: Param,
    /// RoPE tables `[max_positions, head_dim]` (each half-table repeated, as HF's `emb`).
    cos: Tensor,
    sin: Tensor,
    /// Base weights in checkpoint order (HF names); `lm_head` is absent when tied.
    base: Vec<NamedParam>,
    /// LoRA matrices by module path, in layer order.
    loras: Vec<(String, LoraLayer)>,
    lora_spec: Option<LoraSpec>,
    pub config: LlamaConfig,
}

impl TrainLlama {
    /// Builds the model from an HF checkpoint (f32 master weights); `config_path` names
    /// config.json in errors.
    pub fn new(
        cfg: &LlamaConfig,
        w: &Weights,
        config_path: &Path,
        trainable: &Trainable,
    ) -> Result<Self> {
        if w.dtype != DType::F32 {
            return Err(Error::Config(format!(
                "training keeps f32 master weights; open the checkpoint as f32, not {:?}",
                w.dtype
            )));
        }
        let full = matches!(trainable, Trainable::Full);
        let (lora_spec, rng) = match trainable {
            Trainable::Lora(spec) => {
                spec.validate()?;
                (Some(spec.clone()), Some(lora::shared_rng(spec.seed)))
            }
            _ => (None, None),
        };
        let device = w.device.clone();
        let mut base = Vec::new();
        let embeddings_only = matches!(trainable, Trainable::EmbeddingsOnly);
        let mut get = |shape: &[usize], name: &str| -> Result<Param> {
            let trains = full || (embeddings_only && name == "model.embed_tokens.weight");
            let p = Param::new(w.get(shape, name)?, trains)?;
            base.push(NamedParam {
                name: name.to_string(),
                param: p.clone(),
            });
            Ok(p)
        };
        let (v, hs, is) = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size);
        let (h, kvh, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let embed_tokens = get(&[v, hs], "model.embed_tokens.weight")?;
        let mut loras = Vec::new();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let mut linear = |parent: &str,
                              name: &str,
                              out_dim: usize,
                              in_dim: usize,
                              bias: bool|
             -> Result<Linear> {
                let module = sightline_model::lora::module_name(i, parent, name);
                let weight = get(&[out_dim, in_dim], &format!("{module}.weight"))?;
                let bias = if bias {
                    Some(get(&[out_dim], &format!("{module}.bias"))?)
                } else {
                    None
                };
                let lora = match (&lora_spec, &rng) {
                    (Some(spec), Some(rng)) if spec.target_modules.iter().any(|t| t == name) => {
                        let l = LoraLayer::new(spec, out_dim, in_dim, rng.clone(), &device)?;
                        loras.push((module, l.clone()));
                        Some(l)
                    }
                    _ => None,
                };
                Ok(Linear { weight, bias, lora })
            };
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            let q_proj = linear("self_attn", "q_proj", h * d, hs, ab)?;
            let k_proj = linear("self_attn", "k_proj", kvh * d, hs, ab)?;
            let v_proj = linear("self_attn", "v_proj", kvh * d, hs, ab)?;
            let o_proj = linear("self_attn", "o_proj", hs, h * d, ab)?;
            let gate_proj = linear("mlp", "gate_proj", is, hs, mb)?;
            let up_proj = linear("mlp", "up_proj", is, hs, mb)?;
            let down_proj = linear("mlp", "down_proj", hs, is, mb)?;
            let input_layernorm = get(&[hs], &format!("model.layers.{i}.input_layernorm.weight"))?;
            let post_attention_layernorm = get(
                &[hs],
                &format!("model.layers.{i}.post_attention_layernorm.weight"),
            )?;
            layers.push(Layer {
                input_layernorm,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                post_attention_layernorm,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = get(&[hs], "model.norm.weight")?;
        // Tied: one parameter serves both ends, so its gradient sums both uses, as in torch.
        let lm_head = if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            get(&[v, hs], "lm_head.weight")?
        };
        let (cos, sin) = rope_tables(cfg, config_path, &device)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            base,
            loras,
            lora_spec,
            config: cfg.clone(),
        })
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.embed_tokens.tensor().device()
    }

    /// Base weights with their HF names (frozen and trainable).
    pub fn base_params(&self) -> &[NamedParam] {
        &self.base
    }

    /// The LoRA settings, when the model has adapters.
    pub fn lora_spec(&self) -> Option<&LoraSpec> {
        self.lora_spec.as_ref()
    }

    /// LoRA matrices as PEFT's saved keys (`base_model.model.<module>.lora_A.weight`).
    pub fn lora_params(&self) -> Vec<NamedParam> {
        let mut out = Vec::with_capacity(2 * self.loras.len());
        for (module, l) in &self.loras {
            for (which, var) in [("lora_A", &l.a), ("lora_B", &l.b)] {
                out.push(NamedParam {
                    name: lora::peft_key(module, which),
                    param: Param::Trainable(var.clone()),
                });
            }
        }
        out
    }

    /// The LoRA layers (they share one dropout stream).
    pub fn lora_layers(&self) -> impl Iterator<Item = &LoraLayer> {
        self.loras.iter().map(|(_, l)| l)
    }

    /// Every trainable tensor of the decoder (base weights under full fine-tuning, LoRA
    /// matrices under LoRA), in a fixed order.
    pub fn trainable(&self) -> Vec<NamedParam> {
        let mut out: Vec<NamedParam> = self
            .base
            .iter()
            .filter(|p| p.param.var().is_some())
            .cloned()
            .collect();
        out.extend(self.lora_params());
        out
    }

    /// Input embeddings of `ids: [b, t]` (u32) → `[b, t, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let xs = self
            .embed_tokens
            .tensor()
            .index_select(&ids.flatten_all()?, 0)?;
        Ok(xs.reshape((b, t, self.config.hidden_size))?)
    }

    /// Final-norm hidden states `[b, t, hidden]` for input embeddings `[b, t, hidden]`
    /// (transformers' `inputs_embeds=`), positions `0..t`. `train` turns LoRA dropout on.
    pub fn forward_hidden(&self, embeds: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t, hs) = embeds.dims3()?;
        let cfg = &self.config;
        if hs != cfg.hidden_size {
            return Err(Error::Batch(format!(
                "input embeddings have width {hs}, hidden_size is {}",
                cfg.hidden_size
            )));
        }
        if t > cfg.max_position_embeddings {
            return Err(Error::Batch(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                cfg.max_position_embeddings
            )));
        }
        let (h, kvh, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let n_rep = h / kvh;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        // Query heads sharing a KV head are folded into the row dimension (no K/V copies):
        // q [b, kvh, n_rep*t, d] against k [b, kvh, t, d]; row r is position r % t.
        let mask = causal_mask(n_rep, t, embeds.device())?;
        let scale = 1.0 / (d as f64).sqrt();
        let eps = cfg.rms_norm_eps;
        let mut xs = embeds.reshape((b * t, hs))?;
        for l in &self.layers {
            let x = rms_norm(&xs, &l.input_layernorm, eps)?;
            let q = l.q_proj.forward(&x, train)?.reshape((b, t, h, d))?;
            let k = l.k_proj.forward(&x, train)?.reshape((b, t, kvh, d))?;
            let v = l.v_proj.forward(&x, train)?.reshape((b, t, kvh, d))?;
            let q = rope(&q.transpose(1, 2)?.contiguous()?, &cos, &sin)?; // [b, h, t, d]
            let k = rope(&k.transpose(1, 2)?.contiguous()?, &cos, &sin)?; // [b, kvh, t, d]
            let v = v.transpose(1, 2)?.contiguous()?;
            let q = (q * scale)?.reshape((b, kvh, n_rep * t, d))?;
            let att = q.matmul(&k.t()?)?.broadcast_add(&mask)?; // [b, kvh, n_rep*t, t]
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            let ys = att
                .matmul(&v)? // [b, kvh, n_rep*t, d]
                .reshape((b, h, t, d))?
                .transpose(1, 2)?
                .reshape((b * t, h * d))?;
            xs = (xs + l.o_proj.forward(&ys, train)?)?;
            let x = rms_norm(&xs, &l.post_attention_layernorm, eps)?;
            let gate = l.gate_proj.forward(&x, train)?.silu()?;
            let up = l.up_proj.forward(&x, train)?;
            xs = (xs + l.down_proj.forward(&(gate * up)?, train)?)?;
        }
        let xs = rms_norm(&xs, &self.norm, eps)?;
        Ok(xs.reshape((b, t, hs))?)
    }

    /// LM-head logits for hidden rows `[n, hidden]` → `[n, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.matmul(&self.lm_head.tensor().t()?)?)
    }

    /// Full forward without dropout: `ids: [b, t]` → logits `[b, t, vocab]` (for checks).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.forward_hidden(&self.embed(ids)?, false)?;
        let logits = self.logits(&hidden.reshape((b * t, self.config.hidden_size))?)?;
        Ok(logits.reshape((b, t, ()))?)
    }
}

/// Additive mask `[n_rep*t, t]`: row `r` (position `r % t`) sees keys `0..=r % t`.
/// transformers adds `finfo(f32).min`; any value that makes `exp` underflow to 0 is equal.
fn causal_mask(n_rep: usize, t: usize, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; n_rep * t * t];
    for r in 0..n_rep * t {
        let i = r % t;
        for v in &mut m[r * t + i + 1..(r + 1) * t] {
            *v = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(m, (n_rep * t, t), dev)?)
}

/// cos/sin `[max_positions, head_dim]`: angles `pos · inv_freq` in f32 as transformers
/// computes them, each half repeated (`emb = cat(freqs, freqs)`).
fn rope_tables(cfg: &LlamaConfig, config_path: &Path, dev: &Device) -> Result<(Tensor, Tensor)> {
    let scaling = cfg.rope_scaling(config_path)?;
    let freqs = sightline_model::llama::inv_freq(cfg.head_dim(), cfg.rope_theta, &scaling);
    let n = cfg.max_position_embeddings;
    let d = cfg.head_dim();
    let (mut cos, mut sin) = (Vec::with_capacity(n * d), Vec::with_capacity(n * d));
    for pos in 0..n {
        for _ in 0..2 {
            for &f in &freqs {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, d), dev)?,
        Tensor::from_vec(sin, (n, d), dev)?,
    ))
}
