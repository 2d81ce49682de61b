//! bf16 ops with a backward, for mixed-precision training: the linear layer (forward and both
//! gradients on the bf16 GEMM, [`crate::gemm_bf16`]) and SwiGLU, rounding as
//! `torch.autocast(bfloat16)` does (bf16 operands, f32 inside, bf16 results).
//!
//! Why: candle's bf16 matmul widens both whole operands to f32 on every call, so a bf16
//! training step ran its ~3 products per linear layer (forward, input gradient, weight
//! gradient) slower than f32. Here each is one `VDPBF16PS` GEMM; the operands the GEMM wants
//! transposed (`Wᵀ` for the input gradient, `dYᵀ` and `Xᵀ` for the weight gradient) are copied
//! once per call by a blocked transpose, one pass over each matrix against the product's
//! `n·k·m`.
//!
//! The gradient of the weight is returned in bf16, the dtype of the operand it belongs to (a
//! mixed parameter's bf16 value, whose cast carries it to the f32 master), as autocast's is.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::bf16::{product, Bf16Linear, Bf16SwiGlu};
use crate::cpu::{slice_of, CResult};
use crate::math::sigmoid;

/// `x · Wᵀ` (bf16) whose backward runs on the bf16 GEMM; `weight_grad: false` for a frozen
/// weight (only x's gradient is computed).
struct Bf16LinearWithBackward {
    weight_grad: bool,
}

impl CustomOp2 for Bf16LinearWithBackward {
    fn name(&self) -> &'static str {
        "bf16-linear-with-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        Bf16Linear { out: DType::BF16 }.cpu_fwd(xs, xl, ws, wl)
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

/// `silu(gate) · up` on bf16 rows with a backward, as autocast runs `act_fn(gate) * up` in bf16:
/// forward [`Bf16SwiGlu`] (the activation rounded to bf16, then the product), backward the two
/// bf16 products' gradients (`d_up = bf16(dy · act)`, `d_act = bf16(dy · up)`) and silu's
/// (`d_gate = bf16(d_act · σ(g)(1 + g(1 − σ(g))))`, in f32 inside). Saves nothing but the bf16
/// inputs the graph holds anyway.
struct Bf16SwiGluWithBackward;

impl CustomOp2 for Bf16SwiGluWithBackward {
    fn name(&self) -> &'static str {
        "bf16-swiglu-with-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        Bf16SwiGlu.cpu_fwd(gs, gl, us, ul)
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
            .apply_op2(&up.contiguous()?, Bf16SwiGluWithBackward)?,
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

/// Side of the square blocks a transpose copies (64 × 64 bf16 = 8 KiB: both blocks stay in L1).
const BLOCK: usize = 64;

/// `src: [rows, cols]` transposed into a new `[cols, rows]`, in cache-sized blocks, blocks of
/// output rows in parallel (candle's strided copy walks one element at a time through its
/// index arithmetic, several times slower on these sizes).
fn transpose(src: &[bf16], rows: usize, cols: usize) -> Vec<bf16> {
    let mut dst = vec![bf16::ZERO; rows * cols];
    if rows == 0 || cols == 0 {
        return dst;
    }
    dst.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(cb, out)| {
            let c0 = cb * BLOCK;
            let width = out.len() / rows;
            for r0 in (0..rows).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(rows);
                for c in 0..width {
                    let column = &mut out[c * rows..(c + 1) * rows];
                    for r in r0..r1 {
                        column[r] = src[r * cols + c0 + c];
                    }
                }
            }
        });
    dst
}

/// `x · Wᵀ` for bf16 rows `x: [n, in]` and a bf16 weight `[out, in]` with a backward on the bf16
/// GEMM, when this CPU has one and the operands are CPU bf16 and 2-D; `None` otherwise (the
/// caller keeps candle's matmul). `trained_weight: false` skips the weight's gradient.
pub fn bf16_linear_trainable(
    x: &Tensor,
    w: &Tensor,
    trained_weight: bool,
) -> CResult<Option<Tensor>> {
    let fits = crate::gemm_bf16::Bf16Gemm::detect() == crate::gemm_bf16::Bf16Gemm::Avx512Bf16
        && [x, w]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::BF16 && t.rank() == 2);
    if !fits {
        return Ok(None);
    }
    let op = Bf16LinearWithBackward {
        weight_grad: trained_weight,
    };
    Ok(Some(x.contiguous()?.apply_op2(&w.contiguous()?, op)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_value() {
        for (rows, cols) in [(1, 1), (3, 70), (130, 5), (65, 129)] {
            let src: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(i as f32)).collect();
            let t = transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }
}
