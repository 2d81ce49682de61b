//! Parameters that are trainable (`Var`) or frozen (plain `Tensor`) by construction.
//!
//! Only `Var`s are leaves of candle's autograd that the trainer reads gradients of, keeps
//! accumulation buffers for and gives optimizer state to; a frozen weight is an ordinary tensor
//! and costs nothing beyond its storage. A model whose parameters are all frozen records no
//! graph at all, so its forward takes the kernels' forward-only paths. (candle's own matmul
//! backward would still compute a transient gradient for a frozen operand; the linear layers
//! use [`sightline_kernels::frozen_linear`], whose backward skips it.)

use candle_core::{Tensor, Var};

use crate::error::Result;

/// One weight of the model.
#[derive(Clone, Debug)]
pub enum Param {
    /// Not trained: no gradient buffer, no optimizer state.
    Frozen(Tensor),
    /// Trained.
    Trainable(Var),
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

    /// The current value.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }

    /// The `Var` when trainable.
    pub fn var(&self) -> Option<&Var> {
        match self {
            Param::Frozen(_) => None,
            Param::Trainable(v) => Some(v),
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
/// through [`sightline_kernels::frozen_linear`] (no weight gradient), a trainable one through
/// candle's matmul.
pub fn linear(xs: &Tensor, w: &Param) -> Result<Tensor> {
    Ok(match w {
        Param::Frozen(w) => sightline_kernels::frozen_linear(xs, w)?,
        Param::Trainable(w) => xs.matmul(&w.as_tensor().t()?)?,
    })
}
