//! A differentiable `LlamaForCausalLM` for training.
//!
//! Computes what transformers 4.46.3 `modeling_llama.py` computes (pre-norm RMSNorm, GQA
//! self-attention with rotate-half RoPE, SwiGLU), like `sightline_model::llama`, but from ops
//! that have a backward: the fused `rms_norm`, `rope` and `softmax_last_dim` kernels the
//! inference model uses silently drop gradients (spec/candle-autograd.md). RMSNorm, RoPE, the
//! causal softmax, SwiGLU and the frozen-weight matmul are this crate's own fused ops with
//! hand-written backward passes ([`crate::fused`]); the matmuls are candle's.
//!
//! [`TrainLlama::checkpointed_backward`] is the same forward and backward with per-layer
//! gradient checkpointing.
//!
//! Which weights train is decided at construction ([`Trainable`]): trainable ones are `Var`s,
//! frozen ones plain tensors ([`Param`]). There is no attention mask beyond the causal one:
//! batches are right-padded and padded positions carry label -100, which keeps them out of the
//! loss, and causal attention keeps them out of every earlier position.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use sightline_model::{LlamaConfig, Weights};

use crate::error::{Error, Result};
use crate::fused;
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
        let ys = match &self.weight {
            Param::Frozen(w) => fused::frozen_linear(xs, w)?,
            Param::Trainable(w) => xs.matmul(&w.as_tensor().t()?)?,
        };
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

/// transformers' `LlamaRMSNorm`: `w · x / sqrt(mean(x²) + eps)` ([`fused::rms_norm`]: one pass
/// forward and backward instead of six elementwise ops and their gradients).
fn rms_norm(xs: &Tensor, w: &Param, eps: f64) -> Result<Tensor> {
    Ok(fused::rms_norm(xs, w.tensor(), eps)?)
}

/// `x·cos + rotate_half(x)·sin` on `[b, heads, t, d]` with tables `[t, d]` ([`fused::rope`]).
fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(fused::rope(xs, cos, sin)?)
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

/// What every layer of one forward shares: shapes and the RoPE tables cut to `t`.
pub(crate) struct LayerCtx {
    b: usize,
    t: usize,
    h: usize,
    kvh: usize,
    d: usize,
    n_rep: usize,
    cos: Tensor,
    sin: Tensor,
    scale: f64,
    eps: f64,
}

impl Layer {
    /// One pre-norm decoder layer on rows `[b·t, hidden]` → `[b·t, hidden]`.
    fn forward(&self, xs: &Tensor, c: &LayerCtx, train: bool) -> Result<Tensor> {
        let (b, t, h, kvh, d) = (c.b, c.t, c.h, c.kvh, c.d);
        let x = rms_norm(xs, &self.input_layernorm, c.eps)?;
        let q = self.q_proj.forward(&x, train)?.reshape((b, t, h, d))?;
        let k = self.k_proj.forward(&x, train)?.reshape((b, t, kvh, d))?;
        let v = self.v_proj.forward(&x, train)?.reshape((b, t, kvh, d))?;
        let q = rope(&q.transpose(1, 2)?.contiguous()?, &c.cos, &c.sin)?; // [b, h, t, d]
        let k = rope(&k.transpose(1, 2)?.contiguous()?, &c.cos, &c.sin)?; // [b, kvh, t, d]
        let v = v.transpose(1, 2)?.contiguous()?;
        let q = (q * c.scale)?.reshape((b, kvh, c.n_rep * t, d))?;
        // Mask and softmax in one pass each way ([`fused::causal_softmax`]).
        let att = fused::causal_softmax(&q.matmul(&k.t()?)?)?; // [b, kvh, n_rep*t, t]
        let ys = att
            .matmul(&v)? // [b, kvh, n_rep*t, d]
            .reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b * t, h * d))?;
        let xs = (xs + self.o_proj.forward(&ys, train)?)?;
        let x = rms_norm(&xs, &self.post_attention_layernorm, c.eps)?;
        let gate = self.gate_proj.forward(&x, train)?;
        let up = self.up_proj.forward(&x, train)?;
        let act = fused::swiglu(&gate, &up)?; // silu(gate) · up
        Ok((&xs + self.down_proj.forward(&act, train)?)?)
    }
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
    /// The stream LoRA dropout draws from: gradient checkpointing rewinds it so that a
    /// recomputed layer sees the masks of its first forward.
    lora_rng: Option<lora::SharedRng>,
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
            lora_rng: rng,
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
        let (b, t, hs) = self.check_embeds(embeds)?;
        let cfg = &self.config;
        let ctx = self.layer_ctx(b, t)?;
        let eps = cfg.rms_norm_eps;
        let mut xs = embeds.reshape((b * t, hs))?;
        for l in &self.layers {
            xs = l.forward(&xs, &ctx, train)?;
        }
        let xs = rms_norm(&xs, &self.norm, eps)?;
        Ok(xs.reshape((b, t, hs))?)
    }

    /// `[b, t, hidden]` of input embeddings, checked against the config.
    fn check_embeds(&self, embeds: &Tensor) -> Result<(usize, usize, usize)> {
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
        Ok((b, t, hs))
    }

    fn layer_ctx(&self, b: usize, t: usize) -> Result<LayerCtx> {
        let cfg = &self.config;
        let (h, kvh, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let n_rep = h / kvh;
        // Query heads sharing a KV head are folded into the row dimension (no K/V copies):
        // q [b, kvh, n_rep*t, d] against k [b, kvh, t, d]; row r is position r % t.
        Ok(LayerCtx {
            b,
            t,
            h,
            kvh,
            d,
            n_rep,
            cos: self.cos.narrow(0, 0, t)?,
            sin: self.sin.narrow(0, 0, t)?,
            scale: 1.0 / (d as f64).sqrt(),
            eps: cfg.rms_norm_eps,
        })
    }

    /// Forward and backward with gradient checkpointing per decoder layer: the memory of a
    /// step holds each layer's input instead of every layer's activations, for one extra
    /// forward of the decoder.
    ///
    /// The forward runs layer by layer on detached inputs, keeping only those inputs. `head`
    /// gets the final-norm hidden states `[b, t, hidden]` and returns the scalar to
    /// differentiate (None: nothing to backpropagate). The backward then goes down the layers:
    /// each is recomputed from its kept input as a fresh `Var`, `Σ out · g` is differentiated,
    /// and the input's gradient becomes the next `g`; finally `Σ embeds · g` carries the
    /// gradient into whatever built `embeds` (`embed_tokens`, a projector). Every partial
    /// gradient store goes to `on_grads`, which must add (not assign) what it reads: a tied
    /// `embed_tokens`/`lm_head` gets a share from the head and one from the embeddings.
    ///
    /// LoRA dropout draws its masks again in the recomputation, so the dropout stream is
    /// rewound to where each layer's first forward started and left where the forward ended:
    /// gradients and later steps are the same as without checkpointing.
    pub fn checkpointed_backward(
        &self,
        embeds: &Tensor,
        train: bool,
        head: impl FnOnce(&Tensor) -> Result<Option<Tensor>>,
        mut on_grads: impl FnMut(&GradStore) -> Result<()>,
    ) -> Result<()> {
        let (b, t, hs) = self.check_embeds(embeds)?;
        let ctx = self.layer_ctx(b, t)?;
        let rng_state = || -> Result<Option<ChaCha8Rng>> {
            match &self.lora_rng {
                Some(r) => Ok(Some(lock_rng(r)?.clone())),
                None => Ok(None),
            }
        };
        let rewind = |state: &Option<ChaCha8Rng>| -> Result<()> {
            if let (Some(r), Some(s)) = (&self.lora_rng, state) {
                *lock_rng(r)? = s.clone();
            }
            Ok(())
        };
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut xs = embeds.reshape((b * t, hs))?.detach();
        for l in &self.layers {
            let state = rng_state()?;
            let out = l.forward(&xs, &ctx, train)?.detach();
            inputs.push((std::mem::replace(&mut xs, out), state));
        }
        let after_forward = rng_state()?;
        let top = Var::from_tensor(&xs)?;
        drop(xs);
        let hidden = rms_norm(top.as_tensor(), &self.norm, ctx.eps)?.reshape((b, t, hs))?;
        let Some(loss) = head(&hidden)? else {
            return Ok(());
        };
        drop(hidden);
        let store = loss.backward()?;
        on_grads(&store)?;
        let mut g = input_grad(&store, &top)?;
        drop((store, top));
        while let Some((input, state)) = inputs.pop() {
            rewind(&state)?;
            let x = Var::from_tensor(&input)?;
            drop(input);
            let out = self.layers[inputs.len()].forward(x.as_tensor(), &ctx, train)?;
            let store = (out * &g)?.sum_all()?.backward()?;
            on_grads(&store)?;
            g = input_grad(&store, &x)?;
        }
        rewind(&after_forward)?;
        if embeds.track_op() {
            let store = (embeds.reshape((b * t, hs))? * g)?.sum_all()?.backward()?;
            on_grads(&store)?;
        }
        Ok(())
    }

    /// LM-head logits for hidden rows `[n, hidden]` → `[n, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(match &self.lm_head {
            Param::Frozen(w) => fused::frozen_linear(hidden, w)?,
            Param::Trainable(w) => hidden.matmul(&w.as_tensor().t()?)?,
        })
    }

    /// Full forward without dropout: `ids: [b, t]` → logits `[b, t, vocab]` (for checks).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.forward_hidden(&self.embed(ids)?, false)?;
        let logits = self.logits(&hidden.reshape((b * t, self.config.hidden_size))?)?;
        Ok(logits.reshape((b, t, ()))?)
    }
}

fn lock_rng(r: &lora::SharedRng) -> Result<std::sync::MutexGuard<'_, ChaCha8Rng>> {
    r.lock()
        .map_err(|_| Error::Config("LoRA RNG poisoned".into()))
}

/// The gradient a backward pass gave the checkpointed activation `x` (a detached copy).
fn input_grad(store: &GradStore, x: &Var) -> Result<Tensor> {
    store.get(x.as_tensor()).map(Tensor::detach).ok_or_else(|| {
        Error::Config("checkpointed backward: no gradient reached a layer input".into())
    })
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
