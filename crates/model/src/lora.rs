//! LoRA adapters in PEFT's format, applied at evaluation time without merging.
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
//! layers in the default f32), so [`LoraDelta`] holds A and B in f32, runs the low-rank path in
//! f32 and rounds the sum once to the model dtype. Merging `W + scaling·B·A` would be the same
//! function but changes f16 rounding, which is why nothing here merges.
//!
//! Files: `adapter_config.json` ([`LoraConfig`]) and `adapter_model.safetensors` (preferred, as
//! PEFT does) or `adapter_model.bin`, with keys
//! `base_model.model.<module>.lora_A[.<adapter name>].weight` (`[r, in]`) and `...lora_B...`
//! (`[out, r]`). Only plain LoRA on the seven linear projections of each decoder layer is
//! supported; every config field that would change the computation otherwise is refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};

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
const DEFAULT_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// HF name of a decoder linear layer, e.g. `model.layers.0.self_attn.q_proj`.
pub fn module_name(layer: usize, parent: &str, name: &str) -> String {
    format!("model.layers.{layer}.{parent}.{name}")
}

/// `target_modules` / `exclude_modules`: PEFT accepts a list of names (matched on a `.`-bounded
/// suffix of the module path) or one string, which is a regular expression (`re.fullmatch`)
/// unless it is the shorthand `all-linear`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModuleNames {
    Pattern(String),
    List(Vec<String>),
}

/// `layers_to_transform`: one layer index or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LayerIndexes {
    One(usize),
    List(Vec<usize>),
}

/// `layers_pattern`: one name or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    List(Vec<String>),
}

/// The fields of PEFT's `LoraConfig` (`peft/tuners/lora/config.py`) that decide what the adapter
/// computes. Field names and defaults are PEFT's; fields not listed here are kept in `other` and
/// checked against [`REFUSED_FIELDS`].
#[derive(Debug, Clone, Deserialize)]
pub struct LoraConfig {
    /// Must be `"LORA"`.
    #[serde(default)]
    pub peft_type: Option<String>,
    /// PEFT default 8.
    #[serde(default = "default_r")]
    pub r: usize,
    /// PEFT default 8 (an int in PEFT, but floats are harmless).
    #[serde(default = "default_r_f64")]
    pub lora_alpha: f64,
    /// `None`: PEFT's default for llama, `q_proj` and `v_proj`.
    #[serde(default)]
    pub target_modules: Option<ModuleNames>,
    #[serde(default)]
    pub exclude_modules: Option<ModuleNames>,
    /// True means Conv1D-layout (`[in, out]`) weights, which LLaMA never has.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Rank-stabilised scaling `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA adds a magnitude vector and a weight-norm division: not supported.
    #[serde(default)]
    pub use_dora: bool,
    /// `"none"` only: `"all"` / `"lora_only"` ship retrained base-layer biases.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Per-module rank overrides, first matching key wins (`get_pattern_key`); order kept.
    #[serde(default, deserialize_with = "ordered_map")]
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alpha overrides, same matching as `rank_pattern`.
    #[serde(default, deserialize_with = "ordered_map")]
    pub alpha_pattern: Vec<(String, f64)>,
    /// Full copies of other modules (e.g. `lm_head`): not supported.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndexes>,
    #[serde(default)]
    pub layers_pattern: Option<StringOrList>,
    /// `true` (PEFT's default), `false`, or an init scheme; some schemes rewrite the base weights
    /// when PEFT loads the adapter, which sightline does not reproduce.
    #[serde(default)]
    pub init_lora_weights: Option<serde_json::Value>,
    /// Informational: the base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Informational (`CAUSAL_LM` for adapters trained on `LlamaForCausalLM`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn default_r() -> usize {
    8
}
fn default_r_f64() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".to_string()
}

/// Config fields that change `Linear.forward` or the model beyond plain LoRA, with what they
/// are: an adapter that sets any of them (to anything but null / false / empty) is refused
/// instead of being silently evaluated as something else.
pub const REFUSED_FIELDS: &[(&str, &str)] = &[
    ("lora_bias", "a trained bias on lora_B"),
    ("layer_replication", "layer replication"),
    ("trainable_token_indices", "trainable token embeddings"),
    ("target_parameters", "LoRA on raw parameters"),
    ("megatron_config", "Megatron parallel layers"),
    ("use_qalora", "QALoRA"),
    ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
    ("arrow_config", "Arrow routing"),
    ("use_bdlora", "BD-LoRA"),
    ("velora_config", "VeLoRA"),
    ("monteclora_config", "MonteCLoRA"),
    ("kasa_config", "KaSA"),
    ("mica", "MiCA"),
];

/// Reads a JSON object into `(key, value)` pairs in file order (serde_json's map would sort
/// them, and PEFT's pattern lookup returns the first key that matches). `null` is empty.
fn ordered_map<'de, D, V>(d: D) -> std::result::Result<Vec<(String, V)>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Pairs<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of module name -> value")
        }
        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Pairs(std::marker::PhantomData))
}

/// Whether a JSON value means "switched on" (not null, false, 0, "", [] or {}).
fn is_set(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A pattern key PEFT would compile as a regular expression; only plain names and dotted paths
/// (where the regex and a literal match agree) are evaluated here.
fn is_literal(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// PEFT's suffix rule for list entries: the whole path, or a `.`-bounded suffix of it.
fn names_module(entry: &str, module: &str) -> bool {
    module == entry
        || (module.len() > entry.len()
            && module.ends_with(entry)
            && module.as_bytes()[module.len() - entry.len() - 1] == b'.')
}

impl LoraConfig {
    /// Reads and validates `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let cfg: LoraConfig = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not a valid PEFT adapter config: {e}")))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let refuse = |msg: String| Err(Error::format(path, msg));
        match self.peft_type.as_deref() {
            Some("LORA") => {}
            Some(other) => {
                return refuse(format!(
                    "peft_type `{other}` is not supported (only `LORA` adapters are)"
                ))
            }
            None => return refuse("no `peft_type` (expected \"LORA\")".into()),
        }
        if self.r == 0 {
            return refuse("`r` must be positive".into());
        }
        if self.use_dora {
            return refuse(
                "`use_dora` is true: DoRA adapters are not supported (plain LoRA only)".into(),
            );
        }
        if self.fan_in_fan_out {
            return refuse(
                "`fan_in_fan_out` is true, which describes Conv1D (`[in, out]`) weights, but \
                 LLaMA's layers are nn.Linear (PEFT resets the flag with a warning; sightline \
                 refuses the contradictory config)"
                    .into(),
            );
        }
        if self.bias != "none" {
            return refuse(format!(
                "`bias` is `{}`: adapters that ship base-layer biases are not supported \
                 (only \"none\")",
                self.bias
            ));
        }
        if let Some(m) = self
            .modules_to_save
            .as_ref()
            .filter(|m| m.iter().any(|x| x != PROJECTOR_MODULE))
        {
            return refuse(format!(
                "`modules_to_save` {m:?} is not supported (it replaces whole modules, \
                 not a low-rank update); only LLaVA's `{PROJECTOR_MODULE}` is read"
            ));
        }
        if let Some(init) = &self.init_lora_weights {
            let ok = match init {
                serde_json::Value::Null | serde_json::Value::Bool(_) => true,
                serde_json::Value::String(s) => {
                    matches!(s.to_lowercase().as_str(), "gaussian" | "eva" | "orthogonal")
                }
                _ => false,
            };
            if !ok {
                return refuse(format!(
                    "`init_lora_weights` {init}: PEFT rewrites the base weights (or the forward) \
                     for this scheme when it loads the adapter, which sightline does not \
                     reproduce; save the adapter with PEFT's weight conversion instead"
                ));
            }
        }
        for (field, what) in REFUSED_FIELDS {
            if let Some(v) = self.other.get(*field).filter(|v| is_set(v)) {
                return refuse(format!("`{field}` is {v}: {what} is not supported"));
            }
        }
        if let Some(ModuleNames::Pattern(p)) = &self.exclude_modules {
            return refuse(format!(
                "`exclude_modules` is the regular expression `{p}`, which sightline does not \
                 evaluate; list the module names instead"
            ));
        }
        for (field, keys) in [
            (
                "rank_pattern",
                self.rank_pattern.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ),
            (
                "alpha_pattern",
                self.alpha_pattern.iter().map(|(k, _)| k).collect(),
            ),
        ] {
            if let Some(k) = keys.into_iter().find(|k| !is_literal(k)) {
                return refuse(format!(
                    "`{field}` key `{k}` is a regular expression; sightline matches only module \
                     names and dotted paths (like `down_proj` or `model.layers.3.mlp.down_proj`)"
                ));
            }
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| *r == 0) {
            return refuse(format!("`rank_pattern` gives `{k}` rank 0"));
        }
        if let Some(pattern) = &self.layers_pattern {
            let names = match pattern {
                StringOrList::One(s) => vec![s.clone()],
                StringOrList::List(l) => l.clone(),
            };
            if names.iter().any(|n| !n.is_empty() && n != "layers") {
                return refuse(format!(
                    "`layers_pattern` {names:?} is not supported (LLaMA's decoder layers are \
                     `layers`)"
                ));
            }
        }
        Ok(())
    }

    /// The target list, or `None` when `target_modules` is a regular expression (then the
    /// adapter file itself says which modules PEFT wrapped: see [`LoraAdapter::bind`]).
    fn target_list(&self) -> Option<Vec<String>> {
        match &self.target_modules {
            None => Some(DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
            Some(ModuleNames::List(l)) => Some(l.clone()),
            Some(ModuleNames::Pattern(p)) if p.eq_ignore_ascii_case("all-linear") => {
                Some(LINEAR_MODULES.iter().map(|(_, n)| n.to_string()).collect())
            }
            Some(ModuleNames::Pattern(_)) => None,
        }
    }

    /// Whether PEFT wraps `module` (`check_target_module_exists` for the list form).
    fn targets(&self, targets: &[String], module: &str, layer: usize) -> bool {
        if let Some(ModuleNames::List(ex)) = &self.exclude_modules {
            if ex.iter().any(|e| names_module(e, module)) {
                return false;
            }
        }
        if targets.iter().any(|t| t == module) {
            return true;
        }
        if !targets.iter().any(|t| names_module(t, module)) {
            return false;
        }
        match &self.layers_to_transform {
            None => true,
            Some(LayerIndexes::One(i)) => *i == layer,
            Some(LayerIndexes::List(l)) if l.is_empty() => true,
            Some(LayerIndexes::List(l)) => l.contains(&layer),
        }
    }

    /// Rank and scaling of `module` (`LoraModel._create_and_replace`, `LoraLayer.update_layer`).
    pub fn rank_and_scaling(&self, module: &str) -> (usize, f64) {
        let r = self
            .rank_pattern
            .iter()
            .find(|(k, _)| names_module(k, module))
            .map_or(self.r, |(_, r)| *r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| names_module(k, module))
            .map_or(self.lora_alpha, |(_, a)| *a);
        let scaling = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        (r, scaling)
    }
}

/// The low-rank update of one linear layer: `scaling · (x·Aᵀ)·Bᵀ`, in f32.
#[derive(Clone)]
pub struct LoraDelta {
    /// `[r, in]`, f32.
    a: Tensor,
    /// `[out, r]`, f32.
    b: Tensor,
    scaling: f64,
}

impl LoraDelta {
    /// Builds a delta from A `[r, in]` and B `[out, r]` (converted to f32, as PEFT upcasts).
    pub fn new(a: &Tensor, b: &Tensor, scaling: f64) -> Result<Self> {
        Ok(Self {
            a: a.to_dtype(DType::F32)?,
            b: b.to_dtype(DType::F32)?,
            scaling,
        })
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `alpha / r` (or `alpha / sqrt(r)`).
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// Adds the update to `base = x·Wᵀ (+ b)` for `xs: [n, in]`, in PEFT's order and dtypes:
    /// `(base.f32 + ((xs.f32 · Aᵀ) · Bᵀ) · scaling).to(base dtype)`.
    pub fn apply(&self, xs: &Tensor, base: Tensor) -> Result<Tensor> {
        let dtype = base.dtype();
        let x = xs.to_dtype(self.a.dtype())?;
        let delta = (x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)? * self.scaling)?;
        Ok((base.to_dtype(delta.dtype())? + delta)?.to_dtype(dtype)?)
    }
}

/// The A and B tensors of one module, with the keys they came under.
#[derive(Default)]
struct Pair {
    a: Option<(String, Tensor)>,
    b: Option<(String, Tensor)>,
}

impl Pair {
    /// The key of A, else of B (a pair is only created with one of them).
    fn first_key(&self) -> &str {
        self.a.as_ref().or(self.b.as_ref()).map_or("", |(k, _)| k)
    }
}

/// A PEFT LoRA adapter directory, read and checked on its own; [`LoraAdapter::bind`] checks it
/// against a model.
pub struct LoraAdapter {
    /// `adapter_config.json`.
    pub config_path: PathBuf,
    /// `adapter_model.safetensors` or `adapter_model.bin`.
    pub weights_path: PathBuf,
    pub config: LoraConfig,
    /// Module path (e.g. `model.layers.0.self_attn.q_proj`) -> its tensors.
    modules: BTreeMap<String, Pair>,
    /// LLaVA's projector saved under `modules_to_save`, with LLaVA's checkpoint names
    /// (`model.mm_projector.weight`, ...); empty when the adapter has none.
    pub projector: BTreeMap<String, Tensor>,
}

/// The one `modules_to_save` entry sightline reads: LLaVA's projector, which LoRA runs train
/// in full and save next to the adapter (`base_model.model.model.mm_projector.*`). It belongs to
/// the vision side; the decoder ignores it.
pub const PROJECTOR_MODULE: &str = "mm_projector";

/// The saved-key prefix of the projector's tensors in an adapter file.
pub const PROJECTOR_PREFIX: &str = "base_model.model.model.mm_projector.";

/// Splits `base_model.model.<module>.lora_{A,B}[.<adapter>].weight` into the module path and
/// whether it is A. `None` for anything else (DoRA magnitudes, embedding LoRA, LoRA biases...).
fn parse_key(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let parts: Vec<&str> = rest.split('.').collect();
    let at = parts
        .iter()
        .rposition(|p| *p == "lora_A" || *p == "lora_B")?;
    let tail = &parts[at + 1..];
    let tail_ok = tail == ["weight"] || (tail.len() == 2 && tail[1] == "weight");
    if at == 0 || !tail_ok {
        return None;
    }
    let module_len = parts[..at].iter().map(|p| p.len() + 1).sum::<usize>() - 1;
    Some((&rest[..module_len], parts[at] == "lora_A"))
}

impl LoraAdapter {
    /// Reads `adapter_config.json` and the adapter weights from a PEFT `save_pretrained`
    /// directory. Every key must be a LoRA A/B weight; the model is not needed yet.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::format(dir, "not a LoRA adapter directory"));
        }
        let config_path = dir.join(ADAPTER_CONFIG);
        if !config_path.is_file() {
            return Err(Error::format(
                dir,
                format!("no {ADAPTER_CONFIG} (expected a PEFT adapter directory)"),
            ));
        }
        let config = LoraConfig::from_file(&config_path)?;
        let weights_path = ADAPTER_WEIGHTS
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::format(
                    dir,
                    format!(
                        "no adapter weights: expected {}",
                        ADAPTER_WEIGHTS.join(" or ")
                    ),
                )
            })?;
        let tensors = read_tensors(&weights_path)?;
        let mut modules: BTreeMap<String, Pair> = BTreeMap::new();
        let mut projector = BTreeMap::new();
        let saves_projector = config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| m.iter().any(|x| x == PROJECTOR_MODULE));
        for (key, t) in tensors {
            if let Some(rest) = key.strip_prefix(PROJECTOR_PREFIX) {
                if saves_projector {
                    projector.insert(format!("model.mm_projector.{rest}"), t);
                    continue;
                }
            }
            let Some((module, is_a)) = parse_key(&key) else {
                return Err(Error::format(
                    &weights_path,
                    format!(
                        "tensor `{key}` is not a LoRA weight of a linear layer \
                         (`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`); \
                         sightline applies plain LoRA only"
                    ),
                ));
            };
            let pair = modules.entry(module.to_string()).or_default();
            let slot = if is_a { &mut pair.a } else { &mut pair.b };
            if let Some((prev, _)) = slot {
                return Err(Error::format(
                    &weights_path,
                    format!("tensors `{prev}` and `{key}` are both the same LoRA weight"),
                ));
            }
            *slot = Some((key, t));
        }
        Ok(Self {
            config_path,
            weights_path,
            config,
            modules,
            projector,
        })
    }

    /// Checks the adapter against the model and returns the update of every adapted linear
    /// layer, keyed by module path, on `device` in f32.
    ///
    /// Errors (each naming the file and the tensor or field): a `target_modules` entry that names
    /// no linear layer of the model; a targeted layer without its `lora_A` or `lora_B`; a shape
    /// other than `[r, in]` / `[out, r]` (with `r` from `r` or `rank_pattern`); a tensor for a
    /// module the model does not have or that the config does not target.
    /// With a regular-expression `target_modules` (which this crate does not evaluate), the
    /// modules that have tensors are the adapted ones, as they are in PEFT.
    pub fn bind(&self, cfg: &LlamaConfig, device: &Device) -> Result<HashMap<String, LoraDelta>> {
        let (h, kvh, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let (hs, is) = (cfg.hidden_size, cfg.intermediate_size);
        let shape = |name: &str| -> (usize, usize) {
            match name {
                "q_proj" => (h * d, hs),
                "k_proj" | "v_proj" => (kvh * d, hs),
                "o_proj" => (hs, h * d),
                "gate_proj" | "up_proj" => (is, hs),
                _ => (hs, is), // down_proj
            }
        };
        let model_modules: Vec<(String, usize, (usize, usize))> = (0..cfg.num_hidden_layers)
            .flat_map(|i| {
                LINEAR_MODULES
                    .iter()
                    .map(move |(p, n)| (module_name(i, p, n), i, shape(n)))
            })
            .collect();
        let targets = self.config.target_list();
        if let Some(targets) = &targets {
            self.check_targets(targets, &model_modules)?;
        }
        // Tensors for modules the model lacks: the first error a wrong base model gives.
        for (module, pair) in &self.modules {
            if !model_modules.iter().any(|(m, _, _)| m == module) {
                let key = pair.first_key();
                return Err(Error::format(
                    &self.weights_path,
                    format!(
                        "tensor `{key}` is for module `{module}`, which matches no module of the \
                         model ({} layers; adaptable: {})",
                        cfg.num_hidden_layers,
                        LINEAR_MODULES
                            .iter()
                            .map(|(_, n)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut out = HashMap::new();
        for (module, layer, (out_dim, in_dim)) in &model_modules {
            let pair = self.modules.get(module);
            let targeted = match &targets {
                Some(t) => self.config.targets(t, module, *layer),
                None => pair.is_some(),
            };
            let (r, scaling) = self.config.rank_and_scaling(module);
            let key = |ab: &str| format!("base_model.model.{module}.{ab}.weight");
            if !targeted {
                if let Some(pair) = pair {
                    let k = pair.first_key();
                    return Err(Error::format(
                        &self.weights_path,
                        format!(
                            "tensor `{k}` is for module `{module}`, which {} does not target \
                             (PEFT would ignore it)",
                            self.config_path.display()
                        ),
                    ));
                }
                continue;
            }
            let (a, b) = match pair {
                Some(Pair {
                    a: Some(a),
                    b: Some(b),
                }) => (a, b),
                Some(Pair { a: None, .. }) | None => {
                    return Err(self.missing(key("lora_A"), &[r, *in_dim]))
                }
                Some(Pair { b: None, .. }) => {
                    return Err(self.missing(key("lora_B"), &[*out_dim, r]))
                }
            };
            self.check_shape(&a.0, a.1.dims(), &[r, *in_dim], r, "in_features", *in_dim)?;
            self.check_shape(
                &b.0,
                b.1.dims(),
                &[*out_dim, r],
                r,
                "out_features",
                *out_dim,
            )?;
            let delta = LoraDelta::new(&a.1.to_device(device)?, &b.1.to_device(device)?, scaling)
                .map_err(|e| {
                Error::format(&self.weights_path, format!("tensor `{}`: {e}", a.0))
            })?;
            out.insert(module.clone(), delta);
        }
        Ok(out)
    }

    /// Every `target_modules` entry must name a linear layer of the model: an entry that names
    /// nothing is a typo or an adapter for another architecture.
    fn check_targets(
        &self,
        targets: &[String],
        model_modules: &[(String, usize, (usize, usize))],
    ) -> Result<()> {
        for t in targets {
            if model_modules.iter().any(|(m, _, _)| names_module(t, m)) {
                continue;
            }
            let msg = if ["lm_head", "model.embed_tokens", "embed_tokens"].contains(&t.as_str()) {
                format!(
                    "target_modules entry `{t}`: LoRA on the embedding or the LM head is not \
                     supported (only on the decoder's linear layers)"
                )
            } else {
                format!(
                    "target_modules entry `{t}` matches no linear layer of the model (a LLaMA \
                     decoder layer has {})",
                    LINEAR_MODULES
                        .iter()
                        .map(|(_, n)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(Error::format(&self.config_path, msg));
        }
        Ok(())
    }

    fn missing(&self, tensor: String, shape: &[usize]) -> Error {
        Error::MissingTensor {
            path: self.weights_path.clone(),
            tensor,
            expected: shape.to_vec(),
        }
    }

    fn check_shape(
        &self,
        key: &str,
        actual: &[usize],
        expected: &[usize],
        r: usize,
        dim_name: &str,
        dim: usize,
    ) -> Result<()> {
        if actual == expected {
            return Ok(());
        }
        Err(Error::format(
            &self.weights_path,
            format!(
                "tensor `{key}` has shape {actual:?}, expected {expected:?} (r = {r} from {}, \
                 {dim_name} = {dim} from the model's config.json)",
                self.config_path.display()
            ),
        ))
    }
}

/// All tensors of a safetensors or PyTorch-pickle file, on the CPU in their stored dtype.
fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let is_bin = path.extension().is_some_and(|e| e == "bin");
    let read = if is_bin {
        candle_core::pickle::read_all(path)
    } else {
        candle_core::safetensors::load(path, &Device::Cpu).map(|m| m.into_iter().collect())
    };
    read.map_err(|e| {
        let what = if is_bin {
            "not a readable PyTorch checkpoint"
        } else {
            "not a valid safetensors file"
        };
        Error::format(path, format!("{what} ({})", root_cause(&e)))
    })
}

/// candle wraps errors with backtraces and paths; users need the innermost message only.
fn root_cause(e: &candle_core::Error) -> String {
    let mut e = e;
    loop {
        match e {
            candle_core::Error::WithPath { inner, .. }
            | candle_core::Error::WithBacktrace { inner, .. }
            | candle_core::Error::Context { inner, .. } => e = inner,
            other => return other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: serde_json::Value) -> Result<LoraConfig> {
        let mut v = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj"]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        LoraConfig::from_json(&v.to_string(), Path::new("a/adapter_config.json"))
    }

    #[test]
    fn keys_parse_with_and_without_adapter_name() {
        let k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
        assert_eq!(
            parse_key(k),
            Some(("model.layers.0.self_attn.q_proj", true))
        );
        let k = "base_model.model.model.layers.2.mlp.down_proj.lora_B.default.weight";
        assert_eq!(parse_key(k), Some(("model.layers.2.mlp.down_proj", false)));
        for bad in [
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
            "base_model.model.lora_A.weight",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn scaling_follows_peft() {
        let c = cfg(serde_json::json!({})).unwrap();
        assert_eq!(
            c.rank_and_scaling("model.layers.0.self_attn.q_proj"),
            (4, 2.0)
        );
        let c = cfg(serde_json::json!({"use_rslora": true})).unwrap();
        assert_eq!(
            c.rank_and_scaling("model.layers.0.self_attn.q_proj"),
            (4, 4.0)
        );
        // First matching key wins, in file order (not sorted order).
        let text = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8,
            "rank_pattern": {"q_proj": 2, "layers.0.self_attn.q_proj": 8},
            "alpha_pattern": {"model.layers.1.self_attn.q_proj": 1}}"#;
        let c = LoraConfig::from_json(text, Path::new("c")).unwrap();
        assert_eq!(
            c.rank_and_scaling("model.layers.0.self_attn.q_proj"),
            (2, 4.0)
        );
        assert_eq!(
            c.rank_and_scaling("model.layers.1.self_attn.q_proj"),
            (2, 0.5)
        );
        // `.`-bounded suffixes only: `proj` names no module.
        assert_eq!(
            c.rank_and_scaling("model.layers.1.self_attn.k_proj"),
            (4, 2.0)
        );
    }

    #[test]
    fn targeting_follows_check_target_module_exists() {
        let c = cfg(serde_json::json!({"layers_to_transform": [1],
            "exclude_modules": ["model.layers.1.self_attn.v_proj"]}))
        .unwrap();
        let t = c.target_list().unwrap();
        assert!(c.targets(&t, "model.layers.1.self_attn.q_proj", 1));
        assert!(!c.targets(&t, "model.layers.0.self_attn.q_proj", 0));
        assert!(!c.targets(&t, "model.layers.1.self_attn.v_proj", 1));
        assert!(!c.targets(&t, "model.layers.1.self_attn.k_proj", 1));
        let c = cfg(serde_json::json!({"target_modules": "ALL-LINEAR"})).unwrap();
        assert_eq!(c.target_list().unwrap().len(), 7);
        let c = cfg(serde_json::json!({"target_modules": ".*(q|v)_proj"})).unwrap();
        assert!(c.target_list().is_none());
        let c = cfg(serde_json::json!({"target_modules": null})).unwrap();
        assert_eq!(c.target_list().unwrap(), ["q_proj", "v_proj"]);
    }

    #[test]
    fn unsupported_configs_are_named() {
        for (extra, needle) in [
            (serde_json::json!({"use_dora": true}), "use_dora"),
            (serde_json::json!({"peft_type": "IA3"}), "IA3"),
            (
                serde_json::json!({"fan_in_fan_out": true}),
                "fan_in_fan_out",
            ),
            (serde_json::json!({"bias": "all"}), "bias"),
            (
                serde_json::json!({"modules_to_save": ["lm_head"]}),
                "modules_to_save",
            ),
            (
                serde_json::json!({"rank_pattern": {"^model.*q_proj$": 2}}),
                "rank_pattern",
            ),
            (serde_json::json!({"init_lora_weights": "pissa"}), "pissa"),
            (serde_json::json!({"lora_bias": true}), "lora_bias"),
            (
                serde_json::json!({"alora_invocation_tokens": [1, 2]}),
                "alora_invocation_tokens",
            ),
            (serde_json::json!({"layers_pattern": "h"}), "layers_pattern"),
            (
                serde_json::json!({"exclude_modules": ".*k_proj"}),
                "exclude_modules",
            ),
        ] {
            let msg = cfg(extra).expect_err("refused").to_string();
            assert!(
                msg.contains("a/adapter_config.json") && msg.contains(needle),
                "{msg}"
            );
        }
        // Fields PEFT writes with neutral values are accepted.
        cfg(
            serde_json::json!({"lora_bias": false, "megatron_config": null, "loftq_config": {},
            "use_qalora": false, "modules_to_save": null, "init_lora_weights": true,
            "layers_pattern": null, "rank_pattern": {}, "alpha_pattern": {}}),
        )
        .unwrap();
    }

    #[test]
    fn delta_runs_in_f32_and_rounds_once() -> Result<()> {
        // f16 base: PEFT adds an f32 update to the upcast result and rounds once.
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0.5f32, -1.0], [0.25, 2.0]], &dev)?; // r=2, in=2
        let b = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev)?; // out=3
        let d = LoraDelta::new(&a, &b, 0.5)?;
        assert_eq!((d.rank(), d.scaling()), (2, 0.5));
        let x = Tensor::new(&[[1.0f32, 1.0]], &dev)?;
        let base = Tensor::new(&[[1.0f32, 2.0, 3.0]], &dev)?;
        // x·Aᵀ = [-0.5, 2.25]; ·Bᵀ = [-0.5, 2.25, 1.75]; ·0.5 = [-0.25, 1.125, 0.875].
        let y: Vec<Vec<f32>> = d.apply(&x, base.clone())?.to_vec2()?;
        assert_eq!(y, [[0.75, 3.125, 3.875]]);
        let y16 = d.apply(&x.to_dtype(DType::F16)?, base.to_dtype(DType::F16)?)?;
        assert_eq!(y16.dtype(), DType::F16);
        let y16: Vec<Vec<f32>> = y16.to_dtype(DType::F32)?.to_vec2()?;
        assert_eq!(y16, [[0.75, 3.125, 3.875]]);
        Ok(())
    }
}
