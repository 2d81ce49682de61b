//! Which parameters AdamW decays. The parameters themselves ([`Param`], [`NamedParam`]) belong
//! to the model (`sightline_model::param`), which decides at construction what trains.

pub use sightline_model::param::{NamedParam, Param};

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
