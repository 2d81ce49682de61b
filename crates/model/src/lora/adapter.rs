//! A PEFT adapter directory: reading `adapter_model.safetensors`/`.bin` and binding its
//! tensors to the linear layers of a model, with every mismatch named.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::config::{names_module, LoraConfig};
use super::layer::LoraLayer;
use super::names::{
    module_name, ADAPTER_CONFIG, ADAPTER_WEIGHTS, LINEAR_MODULES, PROJECTOR_MODULE,
    PROJECTOR_PREFIX,
};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

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
    pub fn bind(&self, cfg: &LlamaConfig, device: &Device) -> Result<HashMap<String, LoraLayer>> {
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
            let delta =
                LoraLayer::from_peft(&a.1.to_device(device)?, &b.1.to_device(device)?, scaling)
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
    if path.extension().is_some_and(|e| e == "bin") {
        return crate::pickle::read_all(path);
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map(|m| m.into_iter().collect())
        .map_err(|e| {
            Error::format(
                path,
                format!("not a valid safetensors file ({})", root_cause(&e)),
            )
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
}
