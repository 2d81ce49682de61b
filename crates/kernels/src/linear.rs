//! The matmul by a weight `x · Wᵀ` on CPU f32 rows with a backward written for it: a frozen
//! weight's skips the weight's gradient, a trained weight's computes it in `W`'s own layout.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use crate::cpu::{bf16_forward, CResult, Path};

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

/// `x · Wᵀ` where `W` is trained. candle's matmul backward gives the right operand `Wᵀ` the
/// gradient `xᵀ · dY` (`[in, out]`), which its transpose's backward then turns into a strided
/// view that has to be copied into `[out, in]` order: a pass over every weight per step (5% of
/// an f32 full fine-tuning step). This backward computes `dW = dYᵀ · x` in `[out, in]` order
/// directly, as PyTorch's linear does; `dX = dY · W` as candle does.
struct TrainedMatmul;

impl CustomOp2 for TrainedMatmul {
    fn name(&self) -> &'static str {
        "trained-matmul"
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
            candle_core::bail!("trained-matmul: x has {k} columns, W has {k2}");
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
        Ok((Some(grad.matmul(w)?), Some(grad.t()?.matmul(x)?)))
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
    x.contiguous()?.apply_op2(&w.contiguous()?, TrainedMatmul)
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
    x.apply_op1(FrozenMatmul {
        w_t: w.contiguous()?.t()?,
    })
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
