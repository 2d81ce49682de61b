//! The LLaMA decoder (LLaMA 1/2/3/3.1, Vicuna, OpenLLaMA, TinyLlama: `LlamaForCausalLM`), one
//! implementation for scoring, generation, LLaVA and training.
//!
//! Computes what `transformers.models.llama.modeling_llama` (v4.46.3) computes: pre-norm
//! blocks of RMSNorm → GQA self-attention with rotate-half RoPE → RMSNorm → SwiGLU MLP.
//! Reference: <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/llama/modeling_llama.py>.
//!
//! Which weights train is decided at construction ([`Trainable`]): trainable ones are `Var`s,
//! frozen ones plain tensors ([`Param`]). [`Llama::new`] and [`Llama::new_with_adapter`] freeze
//! everything, so no op records a graph and every kernel takes its forward-only path
//! (`sightline_kernels`); [`Llama::new_trainable`] makes some weights `Var`s, and the same
//! forward then records what backward needs. Files: [`layers`] (the parts of a layer),
//! [`train`] (trainable parameters, dropout, gradient checkpointing).
//!
//! There is no attention mask beyond the causal one: batches are right-padded, and causal
//! attention keeps padded positions out of every earlier position.

pub mod layers;
mod logprob;
pub mod train;
mod trainable;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::lora::{self, LoraAdapter, LoraLayer, LoraSpec, SharedRng};
use crate::param::{linear, NamedParam, Param};
use crate::weights::Weights;
use layers::{Attention, Ctx, DecoderLayer, Linear, Mlp, RmsNorm, Rope, Slot};

pub use layers::{inv_freq, KvCache};
pub use logprob::{argmax, logprob_and_greedy, LogSoftmax};
pub use trainable::Trainable;

/// Where the LoRA updates of a model come from.
enum LoraSource {
    None,
    /// A PEFT adapter bound to the model: updates by module path, taken as layers are built.
    Peft(HashMap<String, LoraLayer>, PathBuf),
    /// Fresh trainable adapters on the spec's target modules, drawing from one stream.
    Fresh(LoraSpec, SharedRng),
}

/// Reads weights in checkpoint order, deciding per tensor whether it trains.
struct Builder<'a> {
    w: &'a Weights,
    trainable: &'a Trainable,
    /// The dtype the forward computes in (see [`Llama::new_trainable_in`]).
    compute: DType,
    base: Vec<NamedParam>,
    lora: LoraSource,
    loras: Vec<(String, LoraLayer)>,
}

impl Builder<'_> {
    fn param(&mut self, shape: &[usize], name: &str) -> Result<Param> {
        let trains = match self.trainable {
            Trainable::Full => true,
            Trainable::EmbeddingsOnly => name == "model.embed_tokens.weight",
            Trainable::Frozen | Trainable::Lora(_) => false,
        };
        let p = Param::new_in(self.w.get(shape, name)?, trains, self.compute)?;
        self.base.push(NamedParam {
            name: name.to_string(),
            param: p.clone(),
        });
        Ok(p)
    }

    /// The linear layer `model.layers.{i}.{parent}.{name}` with its LoRA update, if any.
    fn linear(
        &mut self,
        (i, parent, name): (usize, &str, &str),
        (out_dim, in_dim): (usize, usize),
        bias: bool,
    ) -> Result<Linear> {
        let module = lora::module_name(i, parent, name);
        let weight = self.param(&[out_dim, in_dim], &format!("{module}.weight"))?;
        let bias = if bias {
            Some(self.param(&[out_dim], &format!("{module}.bias"))?)
        } else {
            None
        };
        let lora = match &mut self.lora {
            LoraSource::None => None,
            LoraSource::Peft(deltas, _) => deltas.remove(&module),
            LoraSource::Fresh(spec, rng) if spec.targets(name) => Some(
                LoraLayer::new_trainable(spec, out_dim, in_dim, rng.clone(), &self.w.device)?
                    .computed_in(self.compute)?,
            ),
            LoraSource::Fresh(..) => None,
        };
        if let Some(l) = &lora {
            self.loras.push((module, l.clone()));
        }
        Ok(Linear { weight, bias, lora })
    }

    /// Decoder layer `i`: its linear layers first, then its norms (the order of the base
    /// parameters, which optimizer state and checkpoints follow).
    fn layer(&mut self, cfg: &LlamaConfig, i: usize) -> Result<DecoderLayer> {
        let (hs, is) = (cfg.hidden_size, cfg.intermediate_size);
        let (h, kvh, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
        let self_attn = Attention {
            q_proj: self.linear((i, "self_attn", "q_proj"), (h * d, hs), ab)?,
            k_proj: self.linear((i, "self_attn", "k_proj"), (kvh * d, hs), ab)?,
            v_proj: self.linear((i, "self_attn", "v_proj"), (kvh * d, hs), ab)?,
            o_proj: self.linear((i, "self_attn", "o_proj"), (hs, h * d), ab)?,
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: d,
        };
        let mlp = Mlp {
            gate_proj: self.linear((i, "mlp", "gate_proj"), (is, hs), mb)?,
            up_proj: self.linear((i, "mlp", "up_proj"), (is, hs), mb)?,
            down_proj: self.linear((i, "mlp", "down_proj"), (hs, is), mb)?,
        };
        let norm = |b: &mut Self, name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: b.param(&[hs], &format!("model.layers.{i}.{name}.weight"))?,
                eps: cfg.rms_norm_eps,
            })
        };
        Ok(DecoderLayer {
            input_layernorm: norm(self, "input_layernorm")?,
            self_attn,
            post_attention_layernorm: norm(self, "post_attention_layernorm")?,
            mlp,
        })
    }
}

/// `LlamaForCausalLM`: embeddings, decoder layers, final norm and LM head.
pub struct Llama {
    embed_tokens: Param,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Param,
    rope: Rope,
    /// Base weights in checkpoint order (HF names); `lm_head` is absent when tied.
    base: Vec<NamedParam>,
    /// LoRA updates by module path, in layer order.
    loras: Vec<(String, LoraLayer)>,
    lora_spec: Option<LoraSpec>,
    /// The stream fresh LoRA layers draw dropout from: gradient checkpointing rewinds it.
    lora_rng: Option<SharedRng>,
    /// The dtype of activations and of every weight as the forward uses it.
    compute: DType,
    pub config: LlamaConfig,
}

impl Llama {
    /// Builds the model from checkpoint weights, all frozen; every tensor's shape is checked
    /// against `cfg`. `config_path` only names `config.json` in errors.
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
        let lora = match adapter {
            Some(a) => LoraSource::Peft(a.bind(cfg, &w.device)?, a.weights_path.clone()),
            None => LoraSource::None,
        };
        Self::build(cfg, w, config_path, &Trainable::Frozen, lora, w.dtype)
    }

    /// The model for training from an HF checkpoint opened in f32 (master weights): the weights
    /// `trainable` names are `Var`s, and [`Trainable::Lora`] adds fresh adapters.
    pub fn new_trainable(
        cfg: &LlamaConfig,
        w: &Weights,
        config_path: &Path,
        trainable: &Trainable,
    ) -> Result<Self> {
        Self::new_trainable_in(cfg, w, config_path, trainable, DType::F32)
    }

    /// [`Llama::new_trainable`] computing in `compute`: with `DType::BF16`, bf16 mixed
    /// precision. Trainable weights stay f32 masters ([`Param::Mixed`]: cast to bf16 at each
    /// use, gradients arrive in f32), frozen weights are stored in bf16, and activations, the
    /// RoPE tables and fresh LoRA matrices compute in bf16 (their masters f32 too).
    pub fn new_trainable_in(
        cfg: &LlamaConfig,
        w: &Weights,
        config_path: &Path,
        trainable: &Trainable,
        compute: DType,
    ) -> Result<Self> {
        if w.dtype != DType::F32 {
            return Err(Error::Config(format!(
                "training keeps f32 master weights; open the checkpoint as f32, not {:?}",
                w.dtype
            )));
        }
        let lora = match trainable {
            Trainable::Lora(spec) => {
                spec.validate()?;
                LoraSource::Fresh(spec.clone(), lora::layer::shared_rng(spec.seed))
            }
            _ => LoraSource::None,
        };
        Self::build(cfg, w, config_path, trainable, lora, compute)
    }

    fn build(
        cfg: &LlamaConfig,
        w: &Weights,
        config_path: &Path,
        trainable: &Trainable,
        lora: LoraSource,
        compute: DType,
    ) -> Result<Self> {
        let scaling = cfg.rope_scaling(config_path)?;
        let (lora_spec, lora_rng) = match &lora {
            LoraSource::Fresh(spec, rng) => (Some(spec.clone()), Some(rng.clone())),
            _ => (None, None),
        };
        let mut b = Builder {
            w,
            trainable,
            compute,
            base: Vec::new(),
            lora,
            loras: Vec::new(),
        };
        let (v, hs) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = b.param(&[v, hs], "model.embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| b.layer(cfg, i))
            .collect::<Result<Vec<_>>>()?;
        // `bind` only returns modules of this architecture, so every update found its layer.
        if let LoraSource::Peft(left, path) = &b.lora {
            if let Some(module) = left.keys().next() {
                return Err(Error::format(
                    path,
                    format!("the update for `{module}` was not applied to any layer"),
                ));
            }
        }
        let norm = RmsNorm {
            weight: b.param(&[hs], "model.norm.weight")?,
            eps: cfg.rms_norm_eps,
        };
        // Tied checkpoints usually omit lm_head.weight; transformers then reuses the embedding
        // (one parameter serves both ends, so its gradient sums both uses, as in torch).
        let lm_head = if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            b.param(&[v, hs], "lm_head.weight")?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg, &scaling, compute, &w.device)?,
            base: b.base,
            loras: b.loras,
            lora_spec,
            lora_rng,
            compute,
            config: cfg.clone(),
        })
    }

    /// The compute device.
    pub fn device(&self) -> &Device {
        self.embed_tokens.tensor().device()
    }

    /// The compute dtype: of activations and of every weight as the forward uses it (the
    /// checkpoint dtype, except under mixed precision, where trained masters are f32).
    pub fn dtype(&self) -> DType {
        self.compute
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
        let ids = ids.flatten_all()?;
        let xs = match &self.embed_tokens {
            // Trained f32 masters feeding an f32 residual stream (bf16 training): the rows as
            // they are, as an f32 `nn.Embedding` gives them under autocast.
            Param::Mixed { master, .. } if self.residual_dtype() == master.dtype() => {
                master.as_tensor().index_select(&ids, 0)?
            }
            p => p.rows(&ids)?,
        };
        Ok(xs.reshape((b, t, self.config.hidden_size))?)
    }

    /// [`Llama::forward_hidden`] from input embeddings `[b, t, hidden]` (positions
    /// `cache.len()..`), as transformers' `inputs_embeds=` argument.
    pub fn forward_hidden_embeds(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.run(embeds, cache.into(), false)
    }

    /// [`Llama::forward_hidden`] on a cached prefix that is only read: `ids: [b, t]` at
    /// positions `prefix.len()..` attend to it and to each other, and `prefix` is left as it
    /// was. A prefix cached at batch 1 serves all `b` sequences without a copy per sequence
    /// (scoring a batch of continuations of one context).
    pub fn forward_hidden_after(&self, ids: &Tensor, prefix: &KvCache) -> Result<Tensor> {
        self.run(&self.embed(ids)?, Cache::Read(prefix), false)
    }

    /// [`Llama::forward_hidden`] for the rows a caller reads: per sequence of `ids: [b, t]`,
    /// positions `windows[i]` (`start..end` within `t`) → `[Σ window, hidden]` in sequence
    /// order. The last layer computes keys and values for every row (and caches them all)
    /// but queries, attention output and MLP for these rows only: one layer's work saved on
    /// every row no one reads (a scored context, a prompt before its last token). The rows
    /// equal [`Llama::forward_hidden`]'s (`tests/forward_rows.rs`).
    pub fn forward_hidden_rows(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        windows: &[Range<usize>],
    ) -> Result<Tensor> {
        self.forward_hidden_embeds_rows(&self.embed(ids)?, cache, windows)
    }

    /// [`Llama::forward_hidden_rows`] from input embeddings `[b, t, hidden]`.
    pub fn forward_hidden_embeds_rows(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        windows: &[Range<usize>],
    ) -> Result<Tensor> {
        self.run_rows(embeds, cache.into(), false, Some(windows))
    }

    /// The decoder on input embeddings `[b, t, hidden]`; `train` switches LoRA dropout on.
    fn run(&self, embeds: &Tensor, cache: Cache, train: bool) -> Result<Tensor> {
        self.run_rows(embeds, cache, train, None)
    }

    /// [`Llama::run`]; with `windows` (inference), the last layer and the final norm compute
    /// only those rows (per sequence, positions `start..end` of its `t`) and the result is
    /// `[Σ window, hidden]` in sequence order.
    fn run_rows(
        &self,
        embeds: &Tensor,
        mut cache: Cache,
        train: bool,
        windows: Option<&[Range<usize>]>,
    ) -> Result<Tensor> {
        let offset = match &cache {
            Cache::None => 0,
            Cache::Append(c) => c.len(),
            Cache::Read(c) => c.len(),
        };
        let (b, t, hidden) = self.check_embeds(embeds, offset)?;
        // The windows and their row indices, when some rows are left out of the last layer.
        let picked = match windows {
            // Every row wanted (a decoding step): the plain forward, no gather.
            Some(w) if w.iter().all(|w| *w == (0..t)) && w.len() == b => {
                return Ok(self
                    .run_rows(embeds, cache, train, None)?
                    .reshape((b * t, hidden))?)
            }
            Some(w) => Some((w, self.picked_rows(w, b, t)?)),
            None => None,
        };
        if let Cache::Append(c) = &mut cache {
            c.layers.resize(self.layers.len(), None);
        }
        let residual = self.residual_dtype();
        let ctx = Ctx {
            b,
            t,
            offset,
            rope: &self.rope,
            residual,
        };
        let mut xs = embeds
            .to_dtype(residual)?
            .reshape((b * t, hidden))?
            .contiguous()?;
        let last = self.layers.len().checked_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = match &mut cache {
                Cache::None => Slot::None,
                Cache::Append(c) => Slot::Append(&mut c.layers[i]),
                Cache::Read(c) => Slot::Read(c.layers.get(i).and_then(|l| l.as_ref())),
            };
            xs = match &picked {
                Some((w, p)) if Some(i) == last => layer.forward_rows(&xs, &ctx, slot, w, p)?,
                _ => layer.forward(&xs, &ctx, slot, train)?,
            };
        }
        if let (Some((_, p)), None) = (&picked, last) {
            xs = xs.index_select(p, 0)?; // no layers: the embeddings' rows
        }
        if picked.is_some() && xs.dim(0)? == 0 {
            // No row wanted (the last layer still cached its keys and values).
            return Ok(Tensor::zeros((0, hidden), self.compute, self.device())?);
        }
        let xs = self.norm.forward(&xs)?;
        Ok(match picked {
            Some(_) => xs,
            None => xs.reshape((b, t, hidden))?,
        })
    }

    /// Indices into the `b·t` rows of the positions in `windows` (one window per sequence).
    fn picked_rows(&self, windows: &[Range<usize>], b: usize, t: usize) -> Result<Tensor> {
        if windows.len() != b || windows.iter().any(|w| w.start > w.end || w.end > t) {
            return Err(Error::Request(format!(
                "row windows {windows:?} do not fit {b} sequences of {t} positions"
            )));
        }
        let rows: Vec<u32> = windows
            .iter()
            .enumerate()
            .flat_map(|(i, w)| w.clone().map(move |r| (i * t + r) as u32))
            .collect();
        Ok(Tensor::new(rows.as_slice(), self.device())?)
    }

    /// The dtype of the residual stream between layers: the compute dtype, except under bf16
    /// on a CPU with the bf16 GEMM, where it is **f32**.
    ///
    /// Inference: transformers rounds the residual stream to bf16 after every attention and MLP
    /// block of a bf16 model; rounding there is where most of bf16's error accumulates, and
    /// keeping it in f32 costs little (the matrix products and everything inside a block stay
    /// bf16; `o_proj` and `down_proj` hand their f32 sums to the stream unrounded). So
    /// sightline's bf16 log-likelihoods are closer to f32 than transformers' bf16 ones
    /// (`crates/model/tests/bf16.rs`).
    ///
    /// Training (`bf16 = true`): this is `torch.autocast`'s layout, what HF Trainer's
    /// `bf16=True` runs: the embeddings of f32 masters enter as f32, each block's output
    /// (rounded to bf16 by its last linear layer) is added in f32, and RMSNorm computes in f32
    /// before its output is rounded for the next linear layer (`RmsNorm::forward`,
    /// `Linear::forward_to`). A bf16 stream (this rule's old form for training) put the first
    /// loss of the bf16 loss-curve bench 8× further from f32 than autocast's.
    fn residual_dtype(&self) -> DType {
        let fast_bf16 = sightline_kernels::gemm_bf16::Bf16Gemm::detect().is_available();
        if self.compute == DType::BF16 && fast_bf16 && self.device().is_cpu() {
            DType::F32
        } else {
            self.compute
        }
    }

    /// `(b, t, hidden)` of input embeddings at positions `offset..`, checked against the config.
    fn check_embeds(&self, embeds: &Tensor, offset: usize) -> Result<(usize, usize, usize)> {
        let (b, t, hidden) = embeds.dims3()?;
        if hidden != self.config.hidden_size {
            return Err(Error::Request(format!(
                "input embeddings have width {hidden}, the decoder's hidden_size is {}",
                self.config.hidden_size
            )));
        }
        let max = self.config.max_position_embeddings;
        if offset + t > max {
            return Err(Error::Request(format!(
                "sequence of {} tokens exceeds max_position_embeddings {max}",
                offset + t
            )));
        }
        Ok((b, t, hidden))
    }

    /// LM-head logits in f32 for hidden rows `[n, hidden]` → `[n, vocab]` (transformers
    /// upcasts logits to f32 as well).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = hidden.contiguous()?;
        Ok(match &self.lm_head {
            Param::Frozen(w) => sightline_kernels::frozen_linear_to_f32(&hidden, w)?,
            p => linear(&hidden, p)?.to_dtype(DType::F32)?,
        })
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
        self.forward_last_embeds(&self.embed(ids)?, cache)
    }

    /// [`Llama::forward_last`] from input embeddings `[b, t, hidden]` → `[b, vocab]`: the
    /// last layer's queries and MLP run on the last position only (the step that reads a
    /// prompt before generating from it).
    pub fn forward_last_embeds(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        if t == 0 {
            return Err(Error::Request(
                "forward_last needs at least one position".into(),
            ));
        }
        let hidden = self.forward_hidden_embeds_rows(embeds, cache, &vec![t - 1..t; b])?;
        self.logits(&hidden)
    }
}

/// How one forward uses a KV cache (see [`Llama::forward_hidden_after`]).
enum Cache<'a> {
    None,
    Append(&'a mut KvCache),
    Read(&'a KvCache),
}

impl<'a> From<Option<&'a mut KvCache>> for Cache<'a> {
    fn from(c: Option<&'a mut KvCache>) -> Self {
        c.map_or(Cache::None, Cache::Append)
    }
}
