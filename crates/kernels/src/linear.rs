//! The matmul by a weight `x · Wᵀ` on CPU f32 rows with a backward written for it: a frozen
//! weight's skips the weight's gradient, a trained weight's computes it in `W`'s own layout.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use crate::cpu::{bf16_forward, CResult, Path};

/// `x · Wᵀ` on CPU f32 rows `x: [n, in]` and a weight `W: [out, in]`, with the backward a linear
/// layer wants (the bf16 GEMM's [`crate::bf16`] linear has the same two modes):
/// - `weight_grad: false`, a frozen weight (LoRA's base, LLaVA stage 1): `dX` only. candle's
///   matmul backward always computes the right operand's gradient too, a wasted `[out, in]`
///   matmul and allocation per layer per step.
/// - `weight_grad: true`, a trained weight: candle's matmul backward gives the right operand
///   `Wᵀ` the gradient `xᵀ · dY` (`[in, out]`), which its transpose's backward then turns into
///   a strided view that has to be copied into `[out, in]` order: a pass over every weight per
///   step (5% of an f32 full fine-tuning step). This computes `dW = dYᵀ · x` in `[out, in]`
///   order directly, as PyTorch's linear does.
///
/// `dX = dY · W` in both, as candle computes it.
struct F32Linear {
    weight_grad: bool,
}

impl CustomOp2 for F32Linear {
    fn name(&self) -> &'static str {
        "f32-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (out, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("f32-linear: x has {k} columns, W has {k2}");
        }
        let w_t = wl.transpose(0, 1)?;
        Ok((
            xs.matmul(ws, (1, n, out, k), xl, &w_t)?,
            Shape::from((n, out)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dw = if self.weight_grad {
            Some(grad.t()?.matmul(x)?)
        } else {
            None
        };
        Ok((Some(grad.matmul(w)?), dw))
    }
}

/// Weights with more rows than this (an LM head or tied embeddings: one row per vocabulary
/// entry) keep candle's matmul in [`trained_linear`]: for them `dYᵀ · X` measured slower than
/// candle's `Xᵀ · dY` plus the transposed copy (20M bench model, full f32 step: 1.36 against
/// 1.25 s) and raised the peak RSS by 200 MB.
const TRAINED_MATMUL_MAX_ROWS: usize = 16384;

/// `x · Wᵀ` for `x: [n, in]` and a trained weight `w: [out, in]`: with gradients on CPU f32,
/// the op whose backward returns `dW` in `W`'s layout; otherwise (and for weights of more than
/// [`TRAINED_MATMUL_MAX_ROWS`] rows) candle's matmul.
pub fn trained_linear(x: &Tensor, w: &Tensor) -> CResult<Tensor> {
    if Path::of(&[x, w]) != Path::WithBackward
        || x.rank() != 2
        || w.rank() != 2
        || w.dim(0)? > TRAINED_MATMUL_MAX_ROWS
    {
        return x.matmul(&w.t()?);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, F32Linear { weight_grad: true })
}

/// `x · Wᵀ` for `x: [n, in]` and a weight `w: [out, in]` that is not trained.
///
/// Forward only (nothing tracks), another dtype or device, or a batched `x`: candle's matmul,
/// which is what gemm gives either way. With gradients on CPU f32: the op whose backward
/// returns x's gradient only.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> CResult<Tensor> {
    if bf16_forward(&[x, w]) && x.rank() == 2 {
        return crate::bf16::linear(x, w, DType::BF16);
    }
    if crate::cpu::tracks(&[x, w]) {
        if let Some(y) = crate::bf16::bf16_linear_trainable(x, w, false)? {
            return Ok(y);
        }
    }
    if Path::of(&[x, w]) != Path::WithBackward || x.rank() != 2 {
        return x.matmul(&w.t()?);
    }
    x.apply_op2(&w.contiguous()?, F32Linear { weight_grad: false })
}

/// [`frozen_linear`] with the result in f32, for the LM head: on the bf16 forward path the
/// GEMM's f32 accumulators are returned as they are, not rounded to bf16 first (log-likelihoods
/// are differences of logits of a few units: bf16's 8 bits would cost ~1e-2 each); elsewhere
/// the product cast to f32.
pub fn frozen_linear_to_f32(x: &Tensor, w: &Tensor) -> CResult<Tensor> {
    if bf16_forward(&[x, w]) && x.rank() == 2 {
        return crate::bf16::linear(x, w, DType::F32);
    }
    frozen_linear(x, w)?.to_dtype(DType::F32)
}
