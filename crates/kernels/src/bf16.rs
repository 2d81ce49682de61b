//! bf16 kernels: for scoring and generation the linear layers on the bf16 GEMM, and RMSNorm and
//! SwiGLU computed in f32 inside with the roundings PyTorch's bf16 CPU kernels make, so
//! sightline's bf16 numbers track transformers' bf16 numbers instead of drifting; for
//! mixed-precision training the linear layer and SwiGLU with their backward, rounding as
//! `torch.autocast(bfloat16)` does.
//!
//! candle's bf16 ops round after every elementary step: its `rms_norm` rounds the row's RMS to
//! bf16 before dividing by it (a systematic error on every value of the row), and its softmax
//! computes max, exp and sum in bf16. transformers' `LlamaRMSNorm` instead computes
//! `x · rsqrt(mean(x²) + eps)` in f32, rounds once, and multiplies by the weight in bf16; this
//! file does exactly that. Attention in bf16 is computed in f32 (see `attention.rs`).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::cpu::{rows_per_task, slice, slice_of, CResult};
use crate::gemm_bf16::matmul_nt_uninit;
use crate::gemm_bf16::GemmOut;
use crate::math::{inv_rms, sigmoid};
use crate::transpose::transpose;

/// `x · Wᵀ` on bf16 rows `[n, k]` and a bf16 weight `[m, k]`, into bf16 (PyTorch's bf16
/// matmul) or into f32 (the LM head: logits that are not rounded to 8 significant bits).
///
/// With a backward (mixed-precision training, [`bf16_linear_trainable`]) both gradients run on
/// the GEMM as `torch.autocast(bfloat16)` computes them — `dX = dY·W`, `dW = dYᵀ·X`, bf16
/// results — the operands the GEMM wants transposed (`Wᵀ`, `dYᵀ`, `Xᵀ`) copied once per call by
/// a blocked transpose; `weight_grad: false` for a frozen weight. The weight's gradient is bf16,
/// the dtype of the operand it belongs to (a mixed parameter's bf16 value, whose cast carries it
/// to the f32 master). candle's bf16 matmul instead widens both whole operands on every call.
pub(crate) struct Bf16Linear {
    pub out: DType,
    pub weight_grad: bool,
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

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(DType::BF16)?.contiguous()?;
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let ((n, m), (_, k)) = (grad.dims2()?, x.dims2()?);
        let dev = x.device().clone();
        with_bf16(&grad, |g| {
            // dX = dY · W = dY · (Wᵀ)ᵀ: [n, m] against Wᵀ as rows [k, m].
            let dx = with_bf16(&w, |w| product::<bf16>(g, &transpose(w, m, k), (n, m, k)))?;
            let dx = Tensor::from_vec(dx, (n, k), &dev)?;
            if !self.weight_grad {
                return Ok((Some(dx), None));
            }
            // dW = dYᵀ · X = dYᵀ · (Xᵀ)ᵀ: [m, n] against Xᵀ as rows [k, n].
            let gt = transpose(g, n, m);
            let dw = with_bf16(&x, |x| product::<bf16>(&gt, &transpose(x, n, k), (m, n, k)))?;
            Ok((Some(dx), Some(Tensor::from_vec(dw, (m, k), &dev)?)))
        })
    }
}

/// `x · wᵀ` into a new `[n, m]` buffer of `O`.
fn product<O: GemmOut>(
    x: &[bf16],
    w: &[bf16],
    (n, k, m): (usize, usize, usize),
) -> CResult<Vec<O>> {
    // Not zeroed first: the GEMM writes every element when it runs.
    let mut y: Vec<O> = Vec::with_capacity(n * m);
    let ran = matmul_nt_uninit(x, w, (n, k, m), &mut y.spare_capacity_mut()[..n * m])
        .map_err(candle_core::Error::Msg)?;
    if !ran {
        candle_core::bail!("bf16-linear: no bf16 GEMM on this CPU");
    }
    // SAFETY: `matmul_nt_uninit` returned true, so all n·m elements were written.
    unsafe { y.set_len(n * m) };
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
/// rounded to bf16, then the product rounded. Its backward (bf16 training,
/// [`bf16_swiglu_trainable`]) rounds as autocast does: `d_up = bf16(dy · act)`,
/// `d_act = bf16(dy · up)`, `d_gate = bf16(d_act · σ(g)(1 + g(1 − σ(g))))` (f32 inside); it
/// saves nothing but the bf16 inputs the graph holds anyway.
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

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(DType::BF16)?.contiguous()?;
        let (gate, up) = (gate.contiguous()?, up.contiguous()?);
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
        with_bf16(&grad, |dy| {
            with_bf16(&gate, |g| {
                with_bf16(&up, |u| {
                    const CHUNK: usize = 1 << 14;
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(c, (dg, du))| {
                            let base = c * CHUNK;
                            for i in 0..dg.len() {
                                let (x, dyi) = (g[base + i].to_f32(), dy[base + i].to_f32());
                                let sigmoid = sigmoid(x);
                                let act = bf16::from_f32(x * sigmoid).to_f32();
                                du[i] = bf16::from_f32(dyi * act);
                                let d_act = bf16::from_f32(dyi * u[base + i].to_f32()).to_f32();
                                dg[i] =
                                    bf16::from_f32(d_act * sigmoid * (1.0 + x * (1.0 - sigmoid)));
                            }
                        });
                    Ok(())
                })
            })
        })?;
        let shape = gate.shape().clone();
        Ok((
            Some(Tensor::from_vec(dg, shape.clone(), gate.device())?),
            Some(Tensor::from_vec(du, shape, gate.device())?),
        ))
    }
}

/// `x · Wᵀ` through [`Bf16Linear`] for contiguous 2-D bf16 operands.
pub(crate) fn linear(x: &Tensor, w: &Tensor, out: DType) -> CResult<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        &w.contiguous()?,
        &Bf16Linear {
            out,
            weight_grad: false,
        },
    )
}

/// `x · Wᵀ` for bf16 rows `x: [n, in]` and a bf16 weight `[out, in]` with a backward on the bf16
/// GEMM, when this CPU has one and the operands are CPU bf16 and 2-D; `None` otherwise (the
/// caller keeps candle's matmul). `trained_weight: false` skips the weight's gradient.
pub fn bf16_linear_trainable(
    x: &Tensor,
    w: &Tensor,
    trained_weight: bool,
) -> CResult<Option<Tensor>> {
    let fits = crate::gemm_bf16::Bf16Gemm::detect().is_available()
        && [x, w]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::BF16 && t.rank() == 2);
    if !fits {
        return Ok(None);
    }
    let op = Bf16Linear {
        out: DType::BF16,
        weight_grad: trained_weight,
    };
    Ok(Some(x.contiguous()?.apply_op2(&w.contiguous()?, op)?))
}

/// `silu(gate) · up` for CPU bf16 tensors of one shape when a gradient is wanted, with the
/// backward above; `None` otherwise (the caller keeps its other paths).
pub(crate) fn bf16_swiglu_trainable(gate: &Tensor, up: &Tensor) -> CResult<Option<Tensor>> {
    let fits = [gate, up]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::BF16)
        && gate.shape() == up.shape()
        && (gate.track_op() || up.track_op());
    if !fits {
        return Ok(None);
    }
    Ok(Some(
        gate.contiguous()?
            .apply_op2(&up.contiguous()?, Bf16SwiGlu)?,
    ))
}

/// Runs `f` on the values of a contiguous CPU bf16 tensor.
fn with_bf16<R>(t: &Tensor, f: impl FnOnce(&[bf16]) -> CResult<R>) -> CResult<R> {
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(slice_of::<bf16>(s, layout)?),
        _ => candle_core::bail!("bf16-linear: tensor is not on the CPU"),
    }
}
