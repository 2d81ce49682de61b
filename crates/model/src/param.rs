//! Parameters that are trainable (`Var`) or frozen (plain `Tensor`) by construction.
//!
//! Only `Var`s are leaves of candle's autograd that the trainer reads gradients of, keeps
//! accumulation buffers for and gives optimizer state to; a frozen weight is an ordinary tensor
//! and costs nothing beyond its storage. A model whose parameters are all frozen records no
//! graph at all, so its forward takes the kernels' forward-only paths. (candle's own matmul
//! backward would still compute a transient gradient for a frozen operand; the linear layers
//! use [`sightline_kernels::frozen_linear`], whose backward skips it.)
//!
//! # Mixed precision (bf16 training)
//!
//! A trained weight in a bf16 run is [`Param::Mixed`]: its `Var` is the **f32 master** that
//! AdamW updates, and every use in the forward goes through [`Param::value`], which casts the
//! master to the compute dtype at that moment, as `torch.autocast` does for an f32 parameter
//! in a bf16 region. candle's `to_dtype` is differentiable (its backward casts the incoming
//! gradient back to the source dtype), so the gradient arrives at the master as f32: the bf16
//! copy exists only inside one forward and is never updated or stored. Frozen weights of such a
//! run are stored in bf16 directly (half the memory; they never change).

use candle_core::{DType, Tensor, Var};

use crate::error::Result;

/// One weight of the model.
#[derive(Clone, Debug)]
pub enum Param {
    /// Not trained: no gradient buffer, no optimizer state.
    Frozen(Tensor),
    /// Trained, computed in its own dtype.
    Trainable(Var),
    /// Trained in mixed precision: `master` (f32) is what the optimizer updates and checkpoints
    /// save; the forward uses it cast to `compute` (bf16).
    Mixed { master: Var, compute: DType },
}

impl Param {
    /// Wraps `t` as a `Var` (a copy) when `trainable`.
    pub fn new(t: Tensor, trainable: bool) -> Result<Self> {
        Ok(if trainable {
            Param::Trainable(Var::from_tensor(&t)?)
        } else {
            Param::Frozen(t)
        })
    }

    /// [`Param::new`] for a model computing in `compute`: a trainable `t` keeps its dtype as
    /// the master ([`Param::Mixed`] when that differs from `compute`), a frozen one is stored
    /// in `compute`.
    pub fn new_in(t: Tensor, trainable: bool, compute: DType) -> Result<Self> {
        if trainable {
            Param::Trainable(Var::from_tensor(&t)?).computed_in(compute)
        } else {
            Ok(Param::Frozen(t.to_dtype(compute)?))
        }
    }

    /// This trainable parameter computed in `compute` (a [`Param::Mixed`] when its master has
    /// another dtype). Frozen parameters are returned as they are.
    pub fn computed_in(self, compute: DType) -> Result<Self> {
        Ok(match self {
            Param::Trainable(v) if v.dtype() != compute => Param::Mixed { master: v, compute },
            Param::Mixed { master, .. } if master.dtype() == compute => Param::Trainable(master),
            Param::Mixed { master, .. } => Param::Mixed { master, compute },
            p => p,
        })
    }

    /// The stored value: the master of a trained parameter (what optimizers update and
    /// checkpoints save), the tensor of a frozen one.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) | Param::Mixed { master: v, .. } => v.as_tensor(),
        }
    }

    /// The value the forward computes with: the stored one, or a mixed parameter's master cast
    /// to its compute dtype (differentiable: the gradient reaches the master in f32).
    pub fn value(&self) -> Result<Tensor> {
        Ok(match self {
            Param::Mixed { master, compute } => master.as_tensor().to_dtype(*compute)?,
            p => p.tensor().clone(),
        })
    }

    /// `value() · s` for a power of two `s`: a mixed parameter's master is scaled in f32 before
    /// the cast, which is the same bits (scaling by a power of two commutes with rounding, short
    /// of subnormals) without a pass over the compute-dtype copy (candle's bf16 `affine` is a
    /// scalar loop through f32, in the forward and again in the backward).
    pub fn value_times_power_of_two(&self, s: f64) -> Result<Tensor> {
        Ok(match self {
            Param::Mixed { master, compute } => (master.as_tensor() * s)?.to_dtype(*compute)?,
            p => (p.value()? * s)?,
        })
    }

    /// The dtype the forward computes this parameter in.
    pub fn compute_dtype(&self) -> DType {
        match self {
            Param::Mixed { compute, .. } => *compute,
            p => p.tensor().dtype(),
        }
    }

    /// Rows `ids` (`u32`, 1-D) of a `[rows, width]` matrix in the compute dtype (an
    /// embedding lookup). A mixed master is selected first and the rows cast after: the same
    /// values as casting the whole matrix, without a bf16 copy of it per forward, and the
    /// gradient is scattered into the master in f32.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.tensor().index_select(ids, 0)?;
        Ok(rows.to_dtype(self.compute_dtype())?)
    }

    /// The `Var` when trainable (the f32 master when mixed).
    pub fn var(&self) -> Option<&Var> {
        match self {
            Param::Frozen(_) => None,
            Param::Trainable(v) | Param::Mixed { master: v, .. } => Some(v),
        }
    }
}

/// A parameter with its checkpoint name (HF for base weights, PEFT's saved key for LoRA).
#[derive(Clone, Debug)]
pub struct NamedParam {
    pub name: String,
    pub param: Param,
}

/// `x·Wᵀ` for rows `x: [n, in]` and an HF-layout weight `[out, in]`: a frozen weight goes
/// through [`sightline_kernels::frozen_linear`] (no weight gradient), a trainable one (a mixed
/// one in its compute dtype) through the bf16 GEMM with its backward in bf16 on CPUs that have
/// one, else through [`sightline_kernels::trained_linear`] (candle's matmul, with the weight's
/// gradient computed in its own layout on CPU f32).
pub fn linear(xs: &Tensor, w: &Param) -> Result<Tensor> {
    Ok(match w {
        Param::Frozen(w) => sightline_kernels::frozen_linear(xs, w)?,
        Param::Trainable(_) | Param::Mixed { .. } => {
            let w = w.value()?;
            match sightline_kernels::bf16_linear_trainable(xs, &w, true)? {
                Some(y) => y,
                None => sightline_kernels::trained_linear(xs, &w)?,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The gradient of a loss on a mixed parameter's bf16 value reaches its f32 master, as
    /// f32, with the value d/dw Σ (w·x) = x (exact in bf16 for these small integers).
    #[test]
    fn mixed_gradient_reaches_the_f32_master() -> Result<()> {
        let t = Tensor::new(&[0.1f32, -0.2, 0.3], &Device::Cpu)?;
        let p = Param::new_in(t, true, DType::BF16)?;
        let master = p.var().map(|v| v.as_tensor().clone());
        let master = master.ok_or_else(|| crate::Error::Config("no var".into()))?;
        let v = p.value()?;
        assert_eq!((master.dtype(), v.dtype()), (DType::F32, DType::BF16));
        let x = Tensor::new(&[1f32, 2., -3.], &Device::Cpu)?.to_dtype(DType::BF16)?;
        let grads = (v * x)?.sum_all()?.backward()?;
        let g = grads
            .get(&master)
            .ok_or_else(|| crate::Error::Config("no gradient reached the master".into()))?;
        assert_eq!(g.dtype(), DType::F32);
        assert_eq!(g.to_vec1::<f32>()?, [1., 2., -3.]);
        Ok(())
    }

    /// Scaling a mixed master by a power of two before its cast gives the bits of scaling the
    /// cast value, and the gradient still reaches the master (scaled).
    #[test]
    fn power_of_two_scaling_before_the_cast_is_exact() -> Result<()> {
        let vals: Vec<f32> = (0..257)
            .map(|i| (i as f32 - 128.0) * 0.0123457 + 1e-3)
            .collect();
        let t = Tensor::new(vals.as_slice(), &Device::Cpu)?;
        let p = Param::new_in(t, true, DType::BF16)?;
        for s in [0.25, 2.0, 1.0 / 64.0] {
            let fast = p.value_times_power_of_two(s)?;
            let slow = (p.value()? * s)?;
            assert_eq!(fast.dtype(), DType::BF16);
            let bits = |t: &Tensor| -> Result<Vec<u16>> {
                Ok(t.to_vec1::<half::bf16>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            assert_eq!(bits(&fast)?, bits(&slow)?, "scaling {s}");
        }
        let master = p.var().map(|v| v.as_tensor().clone());
        let master = master.ok_or_else(|| crate::Error::Config("no var".into()))?;
        let grads = p.value_times_power_of_two(0.25)?.sum_all()?.backward()?;
        let g = grads
            .get(&master)
            .ok_or_else(|| crate::Error::Config("no gradient reached the master".into()))?;
        assert!(g.to_vec1::<f32>()?.iter().all(|&v| v == 0.25));
        Ok(())
    }

    /// Frozen weights of a bf16 model are stored in bf16; trainable ones in f32 stay f32.
    #[test]
    fn new_in_stores_frozen_in_compute_and_keeps_masters() -> Result<()> {
        let t = Tensor::ones(4, DType::F32, &Device::Cpu)?;
        let frozen = Param::new_in(t.clone(), false, DType::BF16)?;
        assert_eq!(frozen.tensor().dtype(), DType::BF16);
        let f32_run = Param::new_in(t, true, DType::F32)?;
        assert!(matches!(f32_run, Param::Trainable(_)));
        Ok(())
    }
}
