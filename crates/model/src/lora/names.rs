//! Names PEFT and HF give to files, modules and saved tensors.

/// The adapter's config file name, as PEFT writes it.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// Adapter weights, in the order PEFT looks for them.
pub const ADAPTER_WEIGHTS: &[&str] = &["adapter_model.safetensors", "adapter_model.bin"];

/// The linear layers of a LLaMA decoder layer, as `(parent, name)` in HF key order.
pub const LINEAR_MODULES: &[(&str, &str)] = &[
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

/// PEFT's default `target_modules` for `model_type` llama
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`), used when the config has none.
pub(crate) const DEFAULT_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// HF name of a decoder linear layer, e.g. `model.layers.0.self_attn.q_proj`.
pub fn module_name(layer: usize, parent: &str, name: &str) -> String {
    format!("model.layers.{layer}.{parent}.{name}")
}

/// The one `modules_to_save` entry sightline reads: LLaVA's projector, which LoRA runs train
/// in full and save next to the adapter (`base_model.model.model.mm_projector.*`). It belongs to
/// the vision side; the decoder ignores it.
pub const PROJECTOR_MODULE: &str = "mm_projector";

/// The saved-key prefix of the projector's tensors in an adapter file.
pub const PROJECTOR_PREFIX: &str = "base_model.model.model.mm_projector.";
