//! `adapter_config.json`: PEFT's `LoraConfig` fields that decide what an adapter computes,
//! validated so that anything sightline would compute differently is refused by name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::names::{DEFAULT_TARGETS, LINEAR_MODULES, PROJECTOR_MODULE};
use crate::error::{Error, Result};

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
pub(crate) fn names_module(entry: &str, module: &str) -> bool {
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
        self.validate_patterns(path)
    }

    /// The pattern fields (`exclude_modules`, `rank_pattern`, `alpha_pattern`,
    /// `layers_pattern`): only forms whose meaning sightline evaluates exactly.
    fn validate_patterns(&self, path: &Path) -> Result<()> {
        let refuse = |msg: String| Err(Error::format(path, msg));
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
    pub(crate) fn target_list(&self) -> Option<Vec<String>> {
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
    pub(crate) fn targets(&self, targets: &[String], module: &str, layer: usize) -> bool {
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
}
