//! RMSNorm (LLaMA) and LayerNorm (CLIP) over the last dimension, one pass over each row
//! forward and one backward (rayon-parallel over rows).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{bf16_forward, rows_per_task, slice, with_f32, CResult, Path};
use crate::math::inv_rms;

/// transformers' `LlamaRMSNorm` on rows: `y = w · x · r`, `r = 1/sqrt(mean(x²) + eps)`.
struct RmsNorm {
    eps: f32,
}

/// Sums per-task partial column sums in a fixed order: the same gradient on every run.
fn sum_partials(partials: &[Vec<f32>], h: usize) -> Vec<f32> {
    let mut out = vec![0f32; h];
    for p in partials {
        for (a, b) in out.iter_mut().zip(p) {
            *a += b;
        }
    }
    out
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
        // Written without zeroing first: `x` is whole rows of `h`, and every row of `y` is
        // written.
        let mut y: Vec<f32> = Vec::with_capacity(x.len());
        let chunk = rows_per_task(x.len() / h) * h;
        y.spare_capacity_mut()
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                    let r = inv_rms(x, self.eps);
                    for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                        y.write(w * (x * r));
                    }
                }
            });
        // SAFETY: `x.len()` is a multiple of `h` (its last dim), so the chunks and rows above
        // cover all of `y`, and each value was written.
        unsafe { y.set_len(x.len()) };
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
        // Written without zeroing first: every row of `dx` is written (lengths checked below).
        let mut dx: Vec<f32> = Vec::with_capacity(n * h);
        let partial_dw: Vec<Vec<f32>> = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(grad, |g| {
                    if x.len() != n * h || g.len() != n * h || w.len() != h {
                        candle_core::bail!("rms-norm: backward of {n} rows of {h}");
                    }
                    Ok(dx
                        .spare_capacity_mut()
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
                                    dx[i].write(r * (g[i] * w[i] - x[i] * r * mean));
                                }
                            }
                            dw
                        })
                        .collect())
                })
            })
        })?;
        // SAFETY: `x` and `g` have `n·h` values (checked above), so the chunks and rows above
        // cover all of `dx`, and each value was written.
        unsafe { dx.set_len(n * h) };
        let dw = sum_partials(&partial_dw, h);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// transformers' `LlamaRMSNorm` over the last dimension of `xs` with weight `w`.
///
/// On CPU f32 the op here (one pass each way; the forward-only path gives the same bits as the
/// path with a backward, which gradient checkpointing relies on); otherwise, without gradients,
/// candle's fused kernel (bf16/f16 scoring), with gradients the composed form. bf16/f16 with
/// gradients (mixed-precision training) is computed in f32 and rounded back, as
/// `LlamaRMSNorm` upcasts (`hidden_states.to(torch.float32)`): a bf16 mean of squares loses
/// the statistic; on the CPU this is the fused f32 op with its backward.
pub fn rms_norm(xs: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    let op = RmsNorm { eps: eps as f32 };
    // bf16 weights on bf16 rows, or on the f32 residual stream of bf16 inference (→ bf16).
    let f32_rows = xs.dtype() == DType::F32 && bf16_forward(&[w]) && !xs.track_op();
    if bf16_forward(&[xs, w]) || (f32_rows && xs.device().is_cpu()) {
        let op = crate::bf16::Bf16RmsNorm { eps: eps as f32 };
        return xs.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op);
    }
    match Path::of(&[xs, w]) {
        Path::Forward => xs.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op),
        Path::WithBackward => xs.contiguous()?.apply_op2(&w.contiguous()?, op),
        Path::Candle if !xs.track_op() && !w.track_op() && xs.dtype() != DType::F64 => {
            candle_nn::ops::rms_norm(&xs.contiguous()?, w, eps as f32)
        }
        Path::Candle if matches!(xs.dtype(), DType::BF16 | DType::F16) => {
            let up = |t: &Tensor| t.to_dtype(DType::F32);
            rms_norm(&up(xs)?, &up(w)?, eps)?.to_dtype(xs.dtype())
        }
        Path::Candle => {
            let var = xs.sqr()?.mean_keepdim(D::Minus1)?;
            let xs = xs.broadcast_div(&(var + eps)?.sqrt()?)?;
            xs.broadcast_mul(w)
        }
    }
}

/// `nn.LayerNorm` on rows: `y = x̂ · w + b`, `x̂ = (x − mean)·r`, `r = 1/sqrt(var + eps)`, with
/// the variance taken two-pass (of the centred values), as PyTorch's kernel effectively does;
/// `E[x²] − E[x]²` (candle-nn's `layer_norm`) cancels on residual streams with a large offset.
struct LayerNorm {
    eps: f32,
}

/// `(mean, 1/sqrt(var + eps))` of one row, two-pass.
fn mean_inv_std(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let h = xl.shape().dims().last().copied().unwrap_or(0);
        let (x, w, b) = (slice(xs, xl)?, slice(ws, wl)?, slice(bs, bl)?);
        if w.len() != h || b.len() != h || h == 0 {
            candle_core::bail!(
                "layer-norm: weight {}, bias {} for rows of {h}",
                w.len(),
                b.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len() / h) * h;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                    let (mean, r) = mean_inv_std(x, self.eps);
                    for i in 0..h {
                        y[i] = (x[i] - mean) * r * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    /// With `gw = g·w`: `dx = r·(gw − mean(gw) − x̂·mean(gw·x̂))`, `dw = Σ g·x̂`, `db = Σ g`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let n = x.elem_count() / h;
        let chunk = rows_per_task(n) * h;
        let mut dx = vec![0f32; n * h];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(grad, |g| {
                    Ok(dx
                        .par_chunks_mut(chunk)
                        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
                        .map(|(dx, (x, g))| {
                            let (mut dw, mut db) = (vec![0f32; h], vec![0f32; h]);
                            for ((dx, x), g) in dx
                                .chunks_exact_mut(h)
                                .zip(x.chunks_exact(h))
                                .zip(g.chunks_exact(h))
                            {
                                let (mean, r) = mean_inv_std(x, self.eps);
                                let (mut sum_gw, mut dot) = (0f32, 0f32);
                                for i in 0..h {
                                    let xh = (x[i] - mean) * r;
                                    let gw = g[i] * w[i];
                                    sum_gw += gw;
                                    dot += gw * xh;
                                    dw[i] += g[i] * xh;
                                    db[i] += g[i];
                                }
                                let (m1, m2) = (sum_gw / h as f32, dot / h as f32);
                                for i in 0..h {
                                    let xh = (x[i] - mean) * r;
                                    dx[i] = r * (g[i] * w[i] - m1 - xh * m2);
                                }
                            }
                            (dw, db)
                        })
                        .collect())
                })
            })
        })?;
        let (dws, dbs): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(
                sum_partials(&dws, h),
                w.shape(),
                w.device(),
            )?),
            Some(Tensor::from_vec(
                sum_partials(&dbs, h),
                b.shape(),
                b.device(),
            )?),
        ))
    }
}

/// `nn.LayerNorm` over the last dimension of `xs` with weight `w` and bias `b` (same dtype as
/// `xs`); two-pass variance on every path.
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> CResult<Tensor> {
    let op = LayerNorm { eps: eps as f32 };
    match Path::of(&[xs, w, b]) {
        Path::Forward => xs
            .contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &op),
        Path::WithBackward => xs
            .contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, op),
        Path::Candle => {
            let mean = xs.mean_keepdim(D::Minus1)?;
            let centred = xs.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
            let inv_std = (var + eps)?.sqrt()?.recip()?;
            centred
                .broadcast_mul(&inv_std)?
                .broadcast_mul(w)?
                .broadcast_add(b)
        }
    }
}
