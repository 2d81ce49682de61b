//! LoRA with PEFT's semantics, implemented once: PEFT adapters applied unmerged at evaluation,
//! fresh adapters trained with dropout, and merging into the base weights.
//!
//! The paper scores its LoRA models with lm-eval's `peft=` argument, which wraps the base model
//! with `PeftModel.from_pretrained` and leaves every adapted linear layer unmerged. Each one then
//! computes, as `peft/tuners/lora/layer.py` `Linear.forward` does (peft v0.21.2,
//! <https://github.com/huggingface/peft/blob/v0.21.2/src/peft/tuners/lora/layer.py>; v0.4.0,
//! which the paper pins, computes the same at eval time):
//!
//! ```text
//! result = base_layer(x)                       # x·Wᵀ (+ b), model dtype
//! x = x.to(lora_A.weight.dtype)
//! result = result + lora_B(lora_A(dropout(x))) * scaling     # dropout is identity at eval
//! result = result.to(torch_result_dtype)
//! scaling = lora_alpha / r   (use_rslora: lora_alpha / sqrt(r))
//! ```
//!
//! PEFT keeps the adapter weights in f32 even when the base model is f16/bf16
//! (`autocast_adapter_dtype=True` in `from_pretrained`; v0.4.0 creates its `lora_A`/`lora_B`
//! layers in the default f32), so [`LoraLayer`] holds A and B in f32, runs the low-rank path in
//! f32 and rounds the sum once to the model dtype. Merging `W + scaling·B·A` would be the same
//! function but changes f16 rounding, which is why evaluation never merges (`merge-lora` does,
//! on request, through [`LoraLayer::delta_weight`]).
//!
//! Files: `adapter_config.json` ([`LoraConfig`]) and `adapter_model.safetensors` (preferred, as
//! PEFT does) or `adapter_model.bin`, with keys
//! `base_model.model.<module>.lora_A[.<adapter name>].weight` (`[r, in]`) and `...lora_B...`
//! (`[out, r]`). Only plain LoRA on the seven linear projections of each decoder layer is
//! supported; every config field that would change the computation otherwise is refused.
//!
//! Files by concern: [`config`] (`adapter_config.json`), [`adapter`] (reading an adapter
//! directory and binding it to a model), [`layer`] (the update itself, loaded or trainable).

pub mod adapter;
pub mod config;
pub mod layer;
mod names;

pub use adapter::LoraAdapter;
pub use config::{LayerIndexes, LoraConfig, ModuleNames, StringOrList, REFUSED_FIELDS};
pub use layer::{adapter_config_json, peft_key, LoraLayer, LoraSpec, SharedRng};

pub use names::{
    module_name, ADAPTER_CONFIG, ADAPTER_WEIGHTS, LINEAR_MODULES, PROJECTOR_MODULE,
    PROJECTOR_PREFIX,
};
