//! Parameters that are trainable (`Var`) or frozen (plain `Tensor`) by construction.
//!
//! Only `Var`s are leaves of candle's autograd that the trainer reads gradients of, keeps
//! accumulation buffers for and gives optimizer state to; a frozen weight is an ordinary tensor
//! and costs nothing beyond its storage. (candle's own matmul backward would still compute a
//! transient gradient for a frozen operand; the model's linear layers use
//! [`crate::fused::frozen_linear`], whose backward skips it.)

use candle_core::{Tensor, Var};

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
    pub fn new(t: Tensor, trainable: bool) -> candle_core::Result<Self> {
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

/// HF Trainer's weight-decay rule (`Trainer.get_decay_parameter_names`, transformers 4.46.3):
/// no decay for names containing `bias` nor for parameters of `ALL_LAYERNORM_LAYERS`, which
/// `modeling_llama` extends with `LlamaRMSNorm` (so `input_layernorm`, `post_attention_layernorm`
/// and the final `norm` are exempt). LoRA matrices and the projector weight are decayed.
///
/// ```
/// use sightline_train::param::decays;
/// assert!(decays("model.layers.0.self_attn.q_proj.weight"));
/// assert!(!decays("model.layers.0.input_layernorm.weight"));
/// assert!(!decays("model.norm.weight"));
/// assert!(!decays("model.mm_projector.bias"));
/// ```
pub fn decays(name: &str) -> bool {
    if name.contains("bias") {
        return false;
    }
    let module = name.strip_suffix(".weight").unwrap_or(name);
    let leaf = module.rsplit('.').next().unwrap_or(module);
    !matches!(
        leaf,
        "input_layernorm" | "post_attention_layernorm" | "norm"
    )
}
