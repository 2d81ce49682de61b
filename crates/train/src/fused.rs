//! Fused CPU ops with hand-written backward passes, for the training step's hot spots.
//!
//! candle's autograd differentiates the composed forms in `model.rs` / `loss.rs` op by op: every
//! elementwise step allocates a tensor forward and two or three backward, and the fused
//! inference kernels (`candle_nn::ops::rms_norm`, `rope`, ...) have no backward at all
//! (spec/candle-autograd.md). Each op here computes the same function in one pass over its
//! rows (rayon-parallel), and its `bwd` computes the exact gradient in one more; the tests check
//! both against the composed forms and against finite differences.
//!
//! Every entry point falls back to the composed form where the fused one does not apply (a
//! non-CPU device, a dtype other than f32), so callers need no device checks.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Whether the fused CPU kernels apply to `t`.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The contiguous f32 values of a CPU storage under `layout`.
fn slice<'a>(s: &'a CpuStorage, layout: &Layout) -> CResult<&'a [f32]> {
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: non-contiguous input".into()))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// Runs `f` on the contiguous f32 values of a CPU tensor (copied only if strided).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => candle_core::bail!("fused op: tensor is not on the CPU"),
    }
}

/// Rows per parallel task: big enough to amortise rayon, small enough to split 2+ ways.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(64).clamp(1, 64)
}

// ---------------------------------------------------------------------------------------------
// Frozen linear

/// `x · Wᵀ` where `W` is frozen: the backward returns x's gradient only. candle's matmul
/// backward always computes the right operand's gradient too, which for a frozen base weight
/// (LoRA, LLaVA stage 1) is a wasted `[out, in]` matmul and allocation per layer per step.
struct FrozenMatmul {
    /// `Wᵀ`: `[in, out]` (a transposed view of the contiguous `[out, in]` weight).
    w_t: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, k) = l.shape().dims2()?;
        let (k2, out) = self.w_t.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-matmul: x has {k} columns, W has {k2}");
        }
        let (wst, wl) = self.w_t.storage_and_layout();
        let Storage::Cpu(w) = &*wst else {
            candle_core::bail!("frozen-matmul: weight is not on the CPU");
        };
        Ok((s.matmul(w, (1, n, out, k), l, wl)?, Shape::from((n, out))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w_t.t()?)?))
    }
}

/// `x · Wᵀ` for `x: [n, in]` and a weight `w: [out, in]` that is not trained.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !x.track_op() || !fusable(x) || !fusable(w) || x.rank() != 2 {
        return x.matmul(&w.t()?);
    }
    x.apply_op1(FrozenMatmul {
        w_t: w.contiguous()?.t()?,
    })
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// transformers' `LlamaRMSNorm` on rows: `y = w · x · r`, `r = 1/sqrt(mean(x²) + eps)`.
struct RmsNorm {
    eps: f32,
}

/// `1/sqrt(mean(x²) + eps)` of one row.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let h = xl.shape().dims().last().copied().unwrap_or(0);
        let (x, w) = (slice(xs, xl)?, slice(ws, wl)?);
        if w.len() != h || h == 0 {
            candle_core::bail!("rms-norm: weight of {} for rows of {h}", w.len());
        }
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len() / h) * h;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                    let r = inv_rms(x, self.eps);
                    for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                        *y = w * (x * r);
                    }
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    /// With `x̂ = x·r` and `gw = g·w`: `dx = r·(gw − x̂·mean(gw·x̂))`, `dw = Σ_rows g·x̂`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let n = x.elem_count() / h;
        let chunk = rows_per_task(n) * h;
        let mut dx = vec![0f32; n * h];
        let partial_dw: Vec<Vec<f32>> = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(grad, |g| {
                    Ok(dx
                        .par_chunks_mut(chunk)
                        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
                        .map(|(dx, (x, g))| {
                            let mut dw = vec![0f32; h];
                            for ((dx, x), g) in dx
                                .chunks_exact_mut(h)
                                .zip(x.chunks_exact(h))
                                .zip(g.chunks_exact(h))
                            {
                                let r = inv_rms(x, self.eps);
                                let mut dot = 0f32;
                                for i in 0..h {
                                    let xh = x[i] * r;
                                    dot += g[i] * w[i] * xh;
                                    dw[i] += g[i] * xh;
                                }
                                let mean = dot / h as f32;
                                for i in 0..h {
                                    dx[i] = r * (g[i] * w[i] - x[i] * r * mean);
                                }
                            }
                            dw
                        })
                        .collect())
                })
            })
        })?;
        // Partial sums in a fixed order: the same gradient on every run.
        let mut dw = vec![0f32; h];
        for p in &partial_dw {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// transformers' `LlamaRMSNorm` over the last dimension of `xs` with weight `w`, differentiable
/// in both (the composed form of `model.rs` when not on the CPU in f32).
pub fn rms_norm(xs: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if !fusable(xs) || !fusable(w) {
        let var = xs.sqr()?.mean_keepdim(D::Minus1)?;
        let xs = xs.broadcast_div(&(var + eps)?.sqrt()?)?;
        return xs.broadcast_mul(w);
    }
    xs.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// Rotate-half RoPE on `[b, heads, t, d]`: `y = x·cos + rotate_half(x)·sin`, with HF's tables,
/// whose two halves are equal (`emb = cat(freqs, freqs)`), so only the first half is read.
/// The map is a rotation of each pair `(x_i, x_{i+d/2})`; its transpose (the backward) is the
/// rotation by the opposite angle, i.e. the same op with `sin` negated.
struct Rope {
    /// `[t, d]`, contiguous.
    cos: Tensor,
    sin: Tensor,
    /// Rotate by the negative angle (the backward).
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (_, _, t, d) = l.shape().dims4()?;
        if self.cos.dims2()? != (t, d) || d % 2 != 0 {
            candle_core::bail!("rope: tables {:?} for rows of ({t}, {d})", self.cos.shape());
        }
        let x = slice(s, l)?;
        let half = d / 2;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                // One task per (batch, head): t·d values.
                y.par_chunks_mut(t * d)
                    .zip(x.par_chunks(t * d))
                    .for_each(|(y, x)| {
                        for p in 0..t {
                            let (c, sn) = (&cos[p * d..p * d + half], &sin[p * d..p * d + half]);
                            let (x, y) = (&x[p * d..(p + 1) * d], &mut y[p * d..(p + 1) * d]);
                            let (x1, x2) = x.split_at(half);
                            let (y1, y2) = y.split_at_mut(half);
                            for i in 0..half {
                                let s = sign * sn[i];
                                y1[i] = x1[i] * c[i] - x2[i] * s;
                                y2[i] = x2[i] * c[i] + x1[i] * s;
                            }
                        }
                    });
                Ok(())
            })
        })?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        })?))
    }
}

/// `x·cos + rotate_half(x)·sin` on `[b, heads, t, d]` with HF's tables `[t, d]` (halves equal).
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if !fusable(xs) || !fusable(cos) || !fusable(sin) || xs.rank() != 4 {
        let d = xs.dim(D::Minus1)?;
        let x1 = xs.narrow(D::Minus1, 0, d / 2)?;
        let x2 = xs.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        return xs.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?;
    }
    xs.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        inverse: false,
    })
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Per-row `−log softmax(logits)[target]` of `[n, vocab]` logits. The backward recomputes the
/// softmax from the logits (one pass) rather than keeping an `[n, vocab]` copy:
/// `d logits = g_row · (softmax − onehot(target))`.
struct CrossEntropy {
    targets: Vec<u32>,
}

/// `(max, log Σ exp(x − max))` of one row: `logsumexp = max + lse`.
fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: targets do not fit [{n}, {v}] logits");
        }
        let x = slice(s, l)?;
        let nll: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(x, &t)| {
                let (max, lse) = log_sum_exp(x);
                -(x[t as usize] - max - lse)
            })
            .collect();
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, v) = logits.dims2()?;
        let g = grad.to_vec1::<f32>()?;
        let mut dx = vec![0f32; n * v];
        with_f32(logits, |x| {
            dx.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(self.targets.par_iter().zip(g.par_iter()))
                .for_each(|((dx, x), (&t, &g))| {
                    let (max, lse) = log_sum_exp(x);
                    for (d, x) in dx.iter_mut().zip(x) {
                        *d = g * (x - max - lse).exp();
                    }
                    dx[t as usize] -= g;
                });
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, (n, v), logits.device())?))
    }
}

/// `−log softmax(logits)[target]` per row of `[n, vocab]` logits → `[n]`, differentiable in
/// the logits (log_softmax + gather when not on the CPU in f32).
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    if !fusable(logits) {
        let n = targets.len();
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let tgt = Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?;
        return logp.gather(&tgt, 1)?.squeeze(1)?.neg();
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: targets.to_vec(),
    })
}

// ---------------------------------------------------------------------------------------------
// Causal softmax

/// Row softmax of attention scores `[.., rows, t]` under the causal mask: row `r` is position
/// `r % t` (query heads sharing a KV head are folded into the rows, see `model.rs`) and sees
/// keys `0..=r % t`; the masked entries are exactly 0, as `exp(-inf)` gives in the composed
/// mask + softmax. The backward needs only the output `p`:
/// `ds = p ⊙ (dp − Σ_j dp_j p_j)`.
struct CausalSoftmax;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let t = l.shape().dims().last().copied().unwrap_or(0);
        let x = slice(s, l)?;
        if t == 0 {
            return Ok((CpuStorage::F32(vec![]), l.shape().clone()));
        }
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len() / t) * t;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .enumerate()
            .for_each(|(c, (y, x))| {
                let first_row = c * chunk / t;
                for (k, (y, x)) in y.chunks_exact_mut(t).zip(x.chunks_exact(t)).enumerate() {
                    let seen = (first_row + k) % t + 1;
                    let (x, y) = (&x[..seen], &mut y[..seen]);
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = (x - max).exp();
                        sum += *y;
                    }
                    for y in y.iter_mut() {
                        *y /= sum;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, p: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let t = p.dim(D::Minus1)?;
        let mut ds = vec![0f32; p.elem_count()];
        let chunk = rows_per_task(ds.len() / t.max(1)) * t;
        with_f32(p, |p| {
            with_f32(grad, |g| {
                ds.par_chunks_mut(chunk)
                    .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
                    .enumerate()
                    .for_each(|(c, (ds, (p, g)))| {
                        let first_row = c * chunk / t;
                        for (k, ((ds, p), g)) in ds
                            .chunks_exact_mut(t)
                            .zip(p.chunks_exact(t))
                            .zip(g.chunks_exact(t))
                            .enumerate()
                        {
                            let seen = (first_row + k) % t + 1;
                            let dot: f32 =
                                p[..seen].iter().zip(&g[..seen]).map(|(a, b)| a * b).sum();
                            for j in 0..seen {
                                ds[j] = p[j] * (g[j] - dot);
                            }
                        }
                    });
                Ok(())
            })
        })?;
        Ok(Some(Tensor::from_vec(ds, p.shape(), p.device())?))
    }
}

/// `softmax(scores + causal mask)` over the last dimension of `[.., rows, t]`, row `r` seeing
/// keys `0..=r % t` (the composed mask-add and softmax when not on the CPU in f32).
pub fn causal_softmax(scores: &Tensor) -> candle_core::Result<Tensor> {
    if !fusable(scores) {
        let dims = scores.dims();
        let (rows, t) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut m = vec![0f32; rows * t];
        for r in 0..rows {
            for v in &mut m[r * t + r % t + 1..(r + 1) * t] {
                *v = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (rows, t), scores.device())?.to_dtype(scores.dtype())?;
        return candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1);
    }
    scores.contiguous()?.apply_op1(CausalSoftmax)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(gate) · up`. With `σ = sigmoid(gate)`: `d gate = g · up · σ · (1 + gate · (1 − σ))`,
/// `d up = g · gate · σ`.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (gate, up) = (slice(gs, gl)?, slice(us, ul)?);
        if gate.len() != up.len() {
            candle_core::bail!("swiglu: gate {:?}, up {:?}", gl.shape(), ul.shape());
        }
        let mut y = vec![0f32; gate.len()];
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                for i in 0..y.len() {
                    y[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
                }
            });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        const CHUNK: usize = 1 << 14;
        with_f32(gate, |ga| {
            with_f32(up, |u| {
                with_f32(grad, |g| {
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .zip(
                            ga.par_chunks(CHUNK)
                                .zip(u.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))),
                        )
                        .for_each(|((dg, du), (ga, (u, g)))| {
                            for i in 0..dg.len() {
                                let s = 1.0 / (1.0 + (-ga[i]).exp());
                                du[i] = g[i] * ga[i] * s;
                                dg[i] = g[i] * u[i] * s * (1.0 + ga[i] * (1.0 - s));
                            }
                        });
                    Ok(())
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

/// LLaMA's MLP activation `silu(gate) · up` (composed when not on the CPU in f32).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !fusable(gate) || !fusable(up) || gate.shape() != up.shape() {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}
