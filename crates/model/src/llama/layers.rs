//! The parts of a LLaMA decoder layer: linear layers (with an optional LoRA update), RMSNorm,
//! RoPE tables, GQA self-attention with its KV cache, and the SwiGLU MLP.
//!
//! Every op goes through `sightline_kernels`, which runs forward-only kernels when nothing
//! tracks a gradient (scoring, generation) and ops with a backward when something does
//! (training): one forward serves both.

use std::f64::consts::PI;
use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::Result;
use crate::lora::LoraLayer;
use crate::param::{linear, Param};

/// `x·Wᵀ (+ b)` on rows `[n, in]` with an HF-layout weight `[out, in]`, plus an unmerged LoRA
/// update when an adapter targets this layer.
#[derive(Clone)]
pub(crate) struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    pub lora: Option<LoraLayer>,
}

impl Linear {
    /// `[n, in] -> [n, out]` in the weight's compute dtype; `train` switches LoRA dropout on.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_to(xs, self.weight.compute_dtype(), train)
    }

    /// [`Linear::forward`] with the result in `out`: f32 for the layers that write into an
    /// f32 residual stream. Inference with a frozen bf16 weight then returns the GEMM's f32
    /// sums unrounded; training computes the layer (LoRA update included) in its compute dtype
    /// and hands the stream that result, as `torch.autocast` and PEFT round it.
    pub fn forward_to(&self, xs: &Tensor, out: DType, train: bool) -> Result<Tensor> {
        let compute = self.weight.compute_dtype();
        if train && out != compute {
            return Ok(self.forward_to(xs, compute, train)?.to_dtype(out)?);
        }
        let ys = match &self.weight {
            Param::Frozen(w) if out == DType::F32 && w.dtype() != DType::F32 => {
                sightline_kernels::frozen_linear_to_f32(xs, w)?
            }
            p => linear(xs, p)?.to_dtype(out)?,
        };
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(&b.value()?.to_dtype(out)?)?,
            None => ys,
        };
        match &self.lora {
            Some(l) => l.forward(xs, ys, train),
            None => Ok(ys),
        }
    }
}

/// transformers' `LlamaRMSNorm`.
#[derive(Clone)]
pub(crate) struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    /// Normalised rows in the weight's compute dtype. On bf16's f32 residual stream with
    /// gradients (mixed-precision training), the norm runs in f32 with the f32 master (a
    /// frozen bf16 weight widened, exactly) and its output is rounded once to bf16, as
    /// transformers' `LlamaRMSNorm` on an f32 stream followed by an autocast linear computes
    /// it; without gradients, the bf16 kernel takes the f32 rows directly.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let compute = self.weight.compute_dtype();
        let trains = xs.track_op() || self.weight.var().is_some();
        if xs.dtype() == DType::F32 && compute != DType::F32 && trains {
            let w = self.weight.tensor().to_dtype(DType::F32)?;
            let ys = sightline_kernels::rms_norm(xs, &w, self.eps)?;
            return Ok(ys.to_dtype(compute)?);
        }
        Ok(sightline_kernels::rms_norm(
            xs,
            &self.weight.value()?,
            self.eps,
        )?)
    }
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

/// cos/sin tables `[max_positions, head_dim / 2]` in the model dtype, and in f32 for bf16
/// training (see [`Rope::apply`]).
#[derive(Clone)]
pub(crate) struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    /// The f32 tables, when the model dtype is another.
    f32_tables: Option<(Tensor, Tensor)>,
}

impl Rope {
    pub fn new(
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
        let cos = Tensor::from_vec(cos, (n, half), device)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?;
        Ok(Self {
            f32_tables: (dtype != DType::F32).then(|| (cos.clone(), sin.clone())),
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
        })
    }

    /// Rotates projections `[b, t, heads, head_dim]` for positions `offset..offset + t` and
    /// returns them head-major, `[b, heads, t, head_dim]`, in their dtype.
    ///
    /// On bf16's f32 residual stream with gradients (mixed-precision training) the rotation is
    /// f32 with f32 tables, rounded to bf16 once after: transformers takes the tables' dtype
    /// from the (f32) stream, `q·cos + rotate_half(q)·sin` promotes to f32, and autocast rounds
    /// the result when attention reads it. Elsewhere the tables are in the model dtype, as a
    /// bf16 model's stream makes them in transformers.
    fn apply(&self, xs: &Tensor, offset: usize, residual: DType) -> Result<Tensor> {
        if let Some((cos, sin)) = &self.f32_tables {
            if residual == DType::F32 && xs.track_op() {
                let up = xs.to_dtype(DType::F32)?;
                let ys = sightline_kernels::rope_to_heads(&up, cos, sin, offset)?;
                return Ok(ys.to_dtype(xs.dtype())?);
            }
        }
        Ok(sightline_kernels::rope_to_heads(
            xs, &self.cos, &self.sin, offset,
        )?)
    }
}

/// Per-layer keys and values `[b, kv_heads, seen, head_dim]` of the tokens seen so far.
#[derive(Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
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

/// One layer's use of the KV cache in a forward.
pub(crate) enum Slot<'a> {
    /// No cache: the tokens attend to each other only.
    None,
    /// Attend to the cached keys/values, then append this step's to them.
    Append(&'a mut Option<(Tensor, Tensor)>),
    /// Attend to the cached keys/values without changing them.
    Read(Option<&'a (Tensor, Tensor)>),
}

/// What every layer of one forward shares: `b` sequences of `t` new tokens at positions
/// `offset..`, the RoPE tables, and the dtype of the residual stream (the compute dtype, or
/// f32 under bf16 on a CPU with the bf16 GEMM: see `Llama::residual_dtype`).
pub(crate) struct Ctx<'a> {
    pub b: usize,
    pub t: usize,
    pub offset: usize,
    pub rope: &'a Rope,
    pub residual: DType,
}

pub(crate) struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `xs: [b*t, hidden]` → `[b*t, hidden]`. With [`Slot::Append`], this step's keys/values
    /// are appended to the cache (a prefix cached once at batch 1 serves a batch of
    /// continuations); with [`Slot::Read`], they attend to the cached prefix, which is left as
    /// it is (and, at batch 1, never copied per sequence).
    fn forward(&self, xs: &Tensor, c: &Ctx, cache: Slot, train: bool) -> Result<Tensor> {
        let (b, t, offset) = (c.b, c.t, c.offset);
        let (h, d) = (self.n_heads, self.head_dim);
        let q = self.q_proj.forward(xs, train)?.reshape((b, t, h, d))?;
        let (k, v) = self.keys_values(xs, c, train)?;
        let q = c.rope.apply(&q, offset, c.residual)?; // [b, h, t, d]
        let scale = self.scale();
        if let Slot::Read(Some((pk, pv))) = cache {
            let ys = sightline_kernels::causal_attention_after_prefix(&q, (pk, pv), &k, &v, scale)?;
            return self.o_proj.forward_to(&ys, c.residual, train);
        }
        let (k, v) = self.with_cache(k, v, c, cache)?;
        let ys = sightline_kernels::causal_attention(&q, &k, &v, offset, scale)?; // [b*t, h*d]
        self.o_proj.forward_to(&ys, c.residual, train)
    }

    /// [`Attention::forward`] (inference) that computes only the output rows in `windows`
    /// (per sequence, positions `start..end` of its `t`), `[Σ window, hidden]` in sequence
    /// order; `picked` holds their indices into `xs`' `b·t` rows. Keys and values still come
    /// from every row, and [`Slot::Append`] caches them all; queries, attention and `o_proj`
    /// run on the picked rows only.
    fn forward_rows(
        &self,
        xs: &Tensor,
        c: &Ctx,
        cache: Slot,
        windows: &[Range<usize>],
        picked: &Tensor,
    ) -> Result<Tensor> {
        let (b, offset) = (c.b, c.offset);
        let (h, d) = (self.n_heads, self.head_dim);
        if matches!(cache, Slot::Read(Some(_))) {
            return Err(crate::error::Error::Request(
                "a rows-only forward cannot run on a read-only cached prefix".into(),
            ));
        }
        let (k, v) = self.keys_values(xs, c, false)?;
        let (k, v) = self.with_cache(k, v, c, cache)?;
        if picked.dim(0)? == 0 {
            // No row wanted: only this layer's keys and values (cached above) were needed.
            return Ok(Tensor::zeros((0, xs.dim(1)?), c.residual, xs.device())?);
        }
        let q = self.q_proj.forward(&xs.index_select(picked, 0)?, false)?;
        // Queries at positions offset + w.start.. of sequences `seqs` (one window `w` each),
        // against their keys up to the last of them: the full forward's causal attention for
        // these rows.
        let attend = |q: &Tensor, seqs: Range<usize>, w: &Range<usize>| -> Result<Tensor> {
            let n = seqs.len();
            let q = q.reshape((n, w.len(), h, d))?;
            let q = c.rope.apply(&q, offset + w.start, c.residual)?;
            let seen = offset + w.end;
            let narrow = |x: &Tensor| x.narrow(0, seqs.start, n)?.narrow(2, 0, seen)?.contiguous();
            let (k, v) = (narrow(&k)?, narrow(&v)?);
            let scale = self.scale();
            Ok(sightline_kernels::causal_attention(
                &q,
                &k,
                &v,
                offset + w.start,
                scale,
            )?)
        };
        let ys = if windows.iter().all(|w| *w == windows[0]) {
            // One window for all (the last position of every prompt): one batched call.
            attend(&q, 0..b, &windows[0])?
        } else {
            let mut ys = Vec::with_capacity(windows.len());
            let mut row = 0;
            for (i, w) in windows.iter().enumerate().filter(|(_, w)| !w.is_empty()) {
                ys.push(attend(&q.narrow(0, row, w.len())?, i..i + 1, w)?);
                row += w.len();
            }
            Tensor::cat(&ys, 0)?
        };
        self.o_proj.forward_to(&ys, c.residual, false)
    }

    /// This step's keys (rotated) and values of every row, head-major: `[b, kvh, t, d]` each.
    fn keys_values(&self, xs: &Tensor, c: &Ctx, train: bool) -> Result<(Tensor, Tensor)> {
        let (b, t) = (c.b, c.t);
        let (kvh, d) = (self.n_kv_heads, self.head_dim);
        let k = self.k_proj.forward(xs, train)?.reshape((b, t, kvh, d))?;
        let v = self
            .v_proj
            .forward(xs, train)?
            .reshape((b, t, kvh, d))?
            .transpose(1, 2)?
            .contiguous()?;
        Ok((c.rope.apply(&k, c.offset, c.residual)?, v))
    }

    /// `1/√head_dim`, the scores' scale.
    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// This step's keys and values `[b, kvh, t, d]` behind what the slot has cached (which
    /// [`Slot::Append`] then replaces by the whole), `[b, kvh, offset + t, d]`.
    fn with_cache(&self, k: Tensor, v: Tensor, c: &Ctx, cache: Slot) -> Result<(Tensor, Tensor)> {
        let Slot::Append(slot) = cache else {
            return Ok((k, v));
        };
        let kv = match slot.as_ref() {
            Some((pk, pv)) => {
                let (pk, pv) = if pk.dim(0)? != c.b {
                    let shape = (c.b, self.n_kv_heads, pk.dim(2)?, self.head_dim);
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
        Ok(kv)
    }
}

pub(crate) struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    /// `xs: [n, hidden]` → `[n, hidden]` in `out` (the residual stream's dtype).
    fn forward(&self, xs: &Tensor, out: DType, train: bool) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs, train)?;
        let up = self.up_proj.forward(xs, train)?;
        let act = sightline_kernels::swiglu(&gate, &up)?; // silu(gate) · up
        self.down_proj.forward_to(&act, out, train)
    }
}

pub(crate) struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// One pre-norm decoder layer on rows `[b·t, hidden]` → `[b·t, hidden]`.
    pub fn forward(&self, xs: &Tensor, c: &Ctx, cache: Slot, train: bool) -> Result<Tensor> {
        let h = self.input_layernorm.forward(xs)?;
        let h = self.self_attn.forward(&h, c, cache, train)?;
        // `kernels::add`: on the CPU in f32, the add on rayon's threads (candle's own pool
        // and barriers cost more than the add in a training step); elsewhere candle's add.
        let xs = sightline_kernels::add(xs, &h)?;
        let h = self.post_attention_layernorm.forward(&xs)?;
        Ok(sightline_kernels::add(
            &xs,
            &self.mlp.forward(&h, c.residual, train)?,
        )?)
    }

    /// [`DecoderLayer::forward`] (inference) computing only the rows in `windows` (see
    /// [`Attention::forward_rows`]): `[Σ window, hidden]`. Everything after attention's keys
    /// and values is row-wise, so the layer's other rows are never needed by these.
    pub fn forward_rows(
        &self,
        xs: &Tensor,
        c: &Ctx,
        cache: Slot,
        windows: &[Range<usize>],
        picked: &Tensor,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(xs)?;
        let h = self.self_attn.forward_rows(&h, c, cache, windows, picked)?;
        if h.dim(0)? == 0 {
            return Ok(h);
        }
        let xs = sightline_kernels::add(&xs.index_select(picked, 0)?, &h)?;
        let h = self.post_attention_layernorm.forward(&xs)?;
        Ok(sightline_kernels::add(
            &xs,
            &self.mlp.forward(&h, c.residual, false)?,
        )?)
    }
}
