//! Forward-only bf16 kernels for scoring and generation: the linear layers on the bf16 GEMM,
//! and RMSNorm and SwiGLU computed in f32 inside with the roundings PyTorch's bf16 CPU kernels
//! make, so sightline's bf16 numbers track transformers' bf16 numbers instead of drifting.
//!
//! candle's bf16 ops round after every elementary step: its `rms_norm` rounds the row's RMS to
//! bf16 before dividing by it (a systematic error on every value of the row), and its softmax
//! computes max, exp and sum in bf16. transformers' `LlamaRMSNorm` instead computes
//! `x · rsqrt(mean(x²) + eps)` in f32, rounds once, and multiplies by the weight in bf16; this
//! file does exactly that. Attention in bf16 is computed in f32 (see `attention.rs`).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::cpu::{rows_per_task, slice, slice_of, CResult};
use crate::gemm_bf16::matmul_nt;
use crate::gemm_bf16::GemmOut;
use crate::math::{inv_rms, sigmoid};

/// `x · Wᵀ` on bf16 rows `[n, k]` and a bf16 weight `[m, k]`, into bf16 (PyTorch's bf16
/// matmul) or into f32 (the LM head: logits that are not rounded to 8 significant bits).
pub(crate) struct Bf16Linear {
    pub out: DType,
}

impl CustomOp2 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (m, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("bf16-linear: x has {k} columns, W has {k2}");
        }
        let (x, w) = (slice_of::<bf16>(xs, xl)?, slice_of::<bf16>(ws, wl)?);
        let storage = match self.out {
            DType::F32 => CpuStorage::F32(product(x, w, (n, k, m))?),
            _ => CpuStorage::BF16(product(x, w, (n, k, m))?),
        };
        Ok((storage, Shape::from((n, m))))
    }
}

/// `x · wᵀ` into a new `[n, m]` buffer of `O`.
pub(crate) fn product<O: GemmOut>(
    x: &[bf16],
    w: &[bf16],
    (n, k, m): (usize, usize, usize),
) -> CResult<Vec<O>> {
    let mut y = vec![O::ZERO; n * m];
    let ran = matmul_nt(x, w, (n, k, m), &mut y).map_err(candle_core::Error::Msg)?;
    if !ran {
        candle_core::bail!("bf16-linear: no bf16 GEMM on this CPU");
    }
    Ok(y)
}

/// `LlamaRMSNorm` in bf16 as transformers computes it: `r = rsqrt(mean(x²) + eps)` in f32,
/// `h = bf16(x · r)`, `y = bf16(w · h)`.
pub(crate) struct Bf16RmsNorm {
    pub eps: f32,
}

impl CustomOp2 for Bf16RmsNorm {
    fn name(&self) -> &'static str {
        "bf16-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let h = xl.shape().dims().last().copied().unwrap_or(0);
        let w = slice_of::<bf16>(ws, wl)?;
        if w.len() != h || h == 0 {
            candle_core::bail!("rms-norm: weight of {} for rows of {h}", w.len());
        }
        let w: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        // Rows of bf16 (a bf16 residual stream) or of f32 (the f32 residual stream the
        // decoder keeps on this path: see `sightline_model::llama`).
        let y = match xs {
            CpuStorage::F32(_) => self.rows(slice(xs, xl)?, &w, |v: &f32| *v),
            _ => self.rows(slice_of::<bf16>(xs, xl)?, &w, |v: &bf16| v.to_f32()),
        };
        Ok((CpuStorage::BF16(y), xl.shape().clone()))
    }
}

impl Bf16RmsNorm {
    fn rows<T: Sync>(&self, x: &[T], w: &[f32], to_f32: impl Fn(&T) -> f32 + Sync) -> Vec<bf16> {
        let h = w.len();
        let mut y = vec![bf16::ZERO; x.len()];
        let chunk = rows_per_task(x.len() / h) * h;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                let mut row = vec![0f32; h];
                for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                    for (r, v) in row.iter_mut().zip(x) {
                        *r = to_f32(v);
                    }
                    let r = inv_rms(&row, self.eps);
                    for ((y, v), w) in y.iter_mut().zip(&row).zip(w) {
                        let normed = bf16::from_f32(v * r).to_f32();
                        *y = bf16::from_f32(w * normed);
                    }
                }
            });
        y
    }
}

/// `silu(gate) · up` in bf16 as PyTorch computes `act_fn(gate) * up`: the activation in f32
/// rounded to bf16, then the product rounded.
pub(crate) struct Bf16SwiGlu;

impl CustomOp2 for Bf16SwiGlu {
    fn name(&self) -> &'static str {
        "bf16-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (gate, up) = (slice_of::<bf16>(gs, gl)?, slice_of::<bf16>(us, ul)?);
        if gate.len() != up.len() {
            candle_core::bail!("swiglu: gate {:?}, up {:?}", gl.shape(), ul.shape());
        }
        let mut y = vec![bf16::ZERO; gate.len()];
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                for i in 0..y.len() {
                    let g = g[i].to_f32();
                    let act = bf16::from_f32(g * sigmoid(g)).to_f32();
                    y[i] = bf16::from_f32(act * u[i].to_f32());
                }
            });
        Ok((CpuStorage::BF16(y), gl.shape().clone()))
    }
}

/// `x · Wᵀ` through [`Bf16Linear`] for contiguous 2-D bf16 operands.
pub(crate) fn linear(x: &Tensor, w: &Tensor, out: DType) -> CResult<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &Bf16Linear { out })
}
