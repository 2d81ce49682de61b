//! LoRA for training, with PEFT's semantics (peft 0.21.2 `tuners/lora/layer.py`,
//! <https://github.com/huggingface/peft/blob/v0.21.2/src/peft/tuners/lora/layer.py>):
//!
//! ```text
//! y = base(x) + lora_B(lora_A(dropout(x))) * lora_alpha / r
//! lora_A: kaiming_uniform_(a = sqrt(5))  (U(-1/sqrt(in), 1/sqrt(in)));  lora_B: zeros
//! ```
//!
//! Dropout draws from a seeded ChaCha stream, not torch's RNG, so runs with `lora_dropout > 0`
//! are reproducible here but cannot match PyTorch bit for bit; parity is checked at dropout 0.
//! Adapters are saved as PEFT does (`save_pretrained`): `adapter_config.json` and
//! `adapter_model.safetensors` with keys `base_model.model.<module>.lora_{A,B}.weight`, which
//! `sightline_model::LoraAdapter::from_dir` (and `PeftModel.from_pretrained`) read back.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What to adapt and how (the LLaVA / PEFT `lora_*` settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// Leaf names of the adapted linear layers (`q_proj`, ..., `down_proj`).
    pub target_modules: Vec<String>,
    /// Seeds A's initialisation and the dropout masks.
    pub seed: u64,
}

impl LoraSpec {
    /// The paper's settings (spec T9): r 64, alpha 16, dropout 0.05, all seven projections.
    pub fn paper(seed: u64) -> Self {
        Self {
            r: 64,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: sightline_model::lora::LINEAR_MODULES
                .iter()
                .map(|(_, n)| n.to_string())
                .collect(),
            seed,
        }
    }

    /// `lora_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let known: Vec<&str> = sightline_model::lora::LINEAR_MODULES
            .iter()
            .map(|(_, n)| *n)
            .collect();
        if self.r == 0 {
            return Err(Error::Config("lora_r must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "lora_dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if let Some(bad) = self
            .target_modules
            .iter()
            .find(|m| !known.contains(&m.as_str()))
        {
            return Err(Error::Config(format!(
                "LoRA target module `{bad}` is not a LLaMA linear layer (expected some of {})",
                known.join(", ")
            )));
        }
        Ok(())
    }
}

/// The seeded stream shared by every LoRA layer of a model (init, then dropout masks).
pub(crate) type SharedRng = Arc<Mutex<ChaCha8Rng>>;

pub(crate) fn shared_rng(seed: u64) -> SharedRng {
    Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)))
}

/// The low-rank update of one linear layer: `A: [r, in]`, `B: [out, r]`, both trained.
#[derive(Clone)]
pub struct LoraLayer {
    pub a: Var,
    pub b: Var,
    pub scaling: f64,
    dropout: f32,
    rng: SharedRng,
}

impl LoraLayer {
    /// PEFT's default init (`init_lora_weights=True`): A kaiming-uniform with a = √5, i.e.
    /// U(-b, b) with b = gain·√(3/in), gain = √(2/(1+5)), which is b = 1/√in; B zeros.
    pub(crate) fn new(
        spec: &LoraSpec,
        out_dim: usize,
        in_dim: usize,
        rng: SharedRng,
        device: &Device,
    ) -> Result<Self> {
        let bound = (2.0f64 / 6.0).sqrt() * (3.0 / in_dim as f64).sqrt();
        let a: Vec<f32> = {
            let mut g = rng
                .lock()
                .map_err(|_| Error::Config("LoRA RNG poisoned".into()))?;
            (0..spec.r * in_dim)
                .map(|_| g.random_range(-bound..bound) as f32)
                .collect()
        };
        Ok(Self {
            a: Var::from_tensor(&Tensor::from_vec(a, (spec.r, in_dim), device)?)?,
            b: Var::zeros((out_dim, spec.r), DType::F32, device)?,
            scaling: spec.scaling(),
            dropout: spec.dropout,
            rng,
        })
    }

    /// `scaling · B·A·dropout(x)` for `xs: [n, in]` → `[n, out]`; dropout only when `train`.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = if train && self.dropout > 0.0 {
            self.dropout(xs)?
        } else {
            xs.clone()
        };
        let h = xs.matmul(&self.a.as_tensor().t()?)?;
        Ok((h.matmul(&self.b.as_tensor().t()?)? * self.scaling)?)
    }

    /// Where the shared dropout stream stands (ChaCha word position), for resuming a run.
    pub fn rng_position(&self) -> Result<u128> {
        let g = self
            .rng
            .lock()
            .map_err(|_| Error::Config("LoRA RNG poisoned".into()))?;
        Ok(g.get_word_pos())
    }

    /// Moves the shared dropout stream to a saved position.
    pub fn set_rng_position(&self, pos: u128) -> Result<()> {
        let mut g = self
            .rng
            .lock()
            .map_err(|_| Error::Config("LoRA RNG poisoned".into()))?;
        g.set_word_pos(pos);
        Ok(())
    }

    /// Inverted dropout as torch does it: keep with probability 1-p, scale kept by 1/(1-p).
    fn dropout(&self, xs: &Tensor) -> Result<Tensor> {
        let p = self.dropout;
        let n = xs.elem_count();
        let mask: Vec<f32> = {
            let mut g = self
                .rng
                .lock()
                .map_err(|_| Error::Config("LoRA RNG poisoned".into()))?;
            (0..n)
                .map(|_| {
                    if g.random::<f32>() < p {
                        0.0
                    } else {
                        1.0 / (1.0 - p)
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        Ok((xs * mask)?)
    }
}

/// PEFT's saved key of a LoRA matrix (the adapter name `default` is dropped on save):
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
pub fn peft_key(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.{which}.weight")
}

/// `adapter_config.json` as PEFT 0.21.2 writes it for this adapter (the fields PEFT's loader
/// and sightline's read; PEFT fills the rest with defaults).
pub fn adapter_config_json(spec: &LoraSpec, base_model: &str) -> serde_json::Value {
    let mut targets = spec.target_modules.clone();
    targets.sort();
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "inference_mode": true,
        "base_model_name_or_path": base_model,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_peft_default() -> Result<()> {
        let spec = LoraSpec {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into()],
            seed: 1,
        };
        let l = LoraLayer::new(&spec, 10, 64, shared_rng(1), &Device::Cpu)?;
        let a = l.a.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let bound = 1.0 / 8.0; // 1/sqrt(64)
        assert!(a.iter().all(|x| x.abs() <= bound));
        assert!(a.iter().any(|x| x.abs() > 0.9 * bound));
        let b = l.b.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        assert!(b.iter().all(|&x| x == 0.0));
        assert_eq!(l.scaling, 2.0);
        Ok(())
    }

    #[test]
    fn dropout_keeps_expectation() -> Result<()> {
        let spec = LoraSpec {
            r: 1,
            alpha: 1.0,
            dropout: 0.25,
            target_modules: vec![],
            seed: 1,
        };
        let l = LoraLayer::new(&spec, 1, 1, shared_rng(5), &Device::Cpu)?;
        let xs = Tensor::ones((4000, 1), DType::F32, &Device::Cpu)?;
        let d = l.dropout(&xs)?.to_vec2::<f32>()?;
        let mean: f32 = d.iter().map(|r| r[0]).sum::<f32>() / 4000.0;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        Ok(())
    }
}
