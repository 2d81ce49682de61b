//! The LoRA update of one linear layer, `scaling · B·A·dropout(x)`, loaded from a PEFT adapter
//! (frozen) or created fresh for training (trainable, with dropout), and the settings and file
//! names a trained adapter is saved with.
//!
//! Training follows peft 0.21.2 `tuners/lora/layer.py`:
//!
//! ```text
//! y = base(x) + lora_B(lora_A(dropout(x))) * lora_alpha / r
//! lora_A: kaiming_uniform_(a = sqrt(5))  (U(-1/sqrt(in), 1/sqrt(in)));  lora_B: zeros
//! ```
//!
//! Dropout draws from a seeded ChaCha stream shared by every layer of a model, not torch's RNG,
//! so runs with `lora_dropout > 0` are reproducible here but cannot match PyTorch bit for bit;
//! parity is checked at dropout 0. Adapters are saved as PEFT does (`save_pretrained`):
//! `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_{A,B}.weight`, which [`super::LoraAdapter::from_dir`] (and
//! `PeftModel.from_pretrained`) read back.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::names::LINEAR_MODULES;
use crate::error::{Error, Result};
use crate::param::{NamedParam, Param};

/// What to adapt and how, for a fresh trainable adapter (the LLaVA / PEFT `lora_*` settings).
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
            target_modules: LINEAR_MODULES.iter().map(|(_, n)| n.to_string()).collect(),
            seed,
        }
    }

    /// `lora_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Refuses a rank of 0, a dropout outside `[0, 1)` and targets that are not LLaMA layers.
    pub fn validate(&self) -> Result<()> {
        let known: Vec<&str> = LINEAR_MODULES.iter().map(|(_, n)| *n).collect();
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

    /// Whether layers named `name` (`q_proj`, ...) get an adapter.
    pub fn targets(&self, name: &str) -> bool {
        self.target_modules.iter().any(|t| t == name)
    }
}

/// The seeded stream shared by every LoRA layer of a model (init, then dropout masks).
pub type SharedRng = Arc<Mutex<ChaCha8Rng>>;

/// A fresh shared stream.
pub fn shared_rng(seed: u64) -> SharedRng {
    Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)))
}

/// Locks the shared stream (a poisoned lock means a panic mid-draw: the stream is unusable).
pub fn lock_rng(r: &SharedRng) -> Result<MutexGuard<'_, ChaCha8Rng>> {
    r.lock()
        .map_err(|_| Error::Config("LoRA RNG poisoned".into()))
}

/// The low-rank update of one linear layer: `A: [r, in]`, `B: [out, r]`, both f32 (PEFT keeps
/// adapter weights in f32 whatever the base dtype), frozen when loaded, trainable when fresh.
#[derive(Clone)]
pub struct LoraLayer {
    pub a: Param,
    pub b: Param,
    pub scaling: f64,
    /// Dropout probability in training (0 for a loaded adapter: PEFT's dropout is the
    /// identity at evaluation).
    dropout: f32,
    /// The model's shared dropout stream (None: never drops).
    rng: Option<SharedRng>,
}

impl LoraLayer {
    /// A loaded (frozen) update from A `[r, in]` and B `[out, r]`, converted to f32 as PEFT
    /// upcasts.
    pub fn from_peft(a: &Tensor, b: &Tensor, scaling: f64) -> Result<Self> {
        Ok(Self {
            a: Param::Frozen(a.to_dtype(DType::F32)?),
            b: Param::Frozen(b.to_dtype(DType::F32)?),
            scaling,
            dropout: 0.0,
            rng: None,
        })
    }

    /// A fresh trainable update with PEFT's default init (`init_lora_weights=True`): A
    /// kaiming-uniform with a = √5, i.e. U(-b, b) with b = gain·√(3/in), gain = √(2/(1+5)),
    /// which is b = 1/√in, drawn from `rng`; B zeros.
    pub fn new_trainable(
        spec: &LoraSpec,
        out_dim: usize,
        in_dim: usize,
        rng: SharedRng,
        device: &Device,
    ) -> Result<Self> {
        let bound = (2.0f64 / 6.0).sqrt() * (3.0 / in_dim as f64).sqrt();
        let a: Vec<f32> = {
            let mut g = lock_rng(&rng)?;
            (0..spec.r * in_dim)
                .map(|_| g.random_range(-bound..bound) as f32)
                .collect()
        };
        Ok(Self {
            a: Param::Trainable(Var::from_tensor(&Tensor::from_vec(
                a,
                (spec.r, in_dim),
                device,
            )?)?),
            b: Param::Trainable(Var::zeros((out_dim, spec.r), DType::F32, device)?),
            scaling: spec.scaling(),
            dropout: spec.dropout,
            rng: Some(rng),
        })
    }

    /// This layer's trainable matrices computed in `compute` (bf16 mixed precision: f32
    /// masters, the update `B·A·x` computed in bf16 as under `torch.autocast`); a loaded
    /// adapter is unchanged.
    pub fn computed_in(mut self, compute: DType) -> Result<Self> {
        self.a = self.a.computed_in(compute)?;
        self.b = self.b.computed_in(compute)?;
        Ok(self)
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.tensor().dims()[0]
    }

    /// `alpha / r` (or `alpha / sqrt(r)`).
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// Adds the update to `base = x·Wᵀ (+ b)` for `xs: [n, in]` at evaluation (no dropout), in
    /// PEFT's order and dtypes: `(base.f32 + ((xs.f32 · Aᵀ) · Bᵀ) · scaling).to(base dtype)`.
    pub fn apply(&self, xs: &Tensor, base: Tensor) -> Result<Tensor> {
        self.forward(xs, base, false)
    }

    /// [`LoraLayer::apply`], with dropout on the adapter's input when `train`. The update is
    /// computed in the matrices' compute dtype: f32 for loaded adapters and f32 training,
    /// bf16 under mixed precision.
    pub fn forward(&self, xs: &Tensor, base: Tensor, train: bool) -> Result<Tensor> {
        let dtype = base.dtype();
        let x = xs.to_dtype(self.a.compute_dtype())?;
        let x = if train && self.dropout > 0.0 {
            self.dropout(&x)?
        } else {
            x
        };
        let a = self.a.value()?;
        // `[n, out]` is the largest tensor here: scaling the `[out, r]` matrix B first costs
        // r/n as much, forward and backward. When `scaling` is a power of two (PEFT's alpha/r
        // usually is) that is exact, so the bits are PEFT's (and a mixed B is scaled in f32,
        // before its cast); otherwise f32 keeps PEFT's order, and bf16 (where candle's `affine`
        // is a scalar loop) takes the cheaper order and one rounding moves.
        let delta = if is_power_of_two(self.scaling) {
            let b = self.b.value_times_power_of_two(self.scaling)?;
            times_t(&times_t(&x, &a)?, &b)?
        } else if self.b.compute_dtype() == DType::BF16 {
            let b = self.b.value()?;
            times_t(&times_t(&x, &a)?, &(b * self.scaling)?)?
        } else {
            (times_t(&times_t(&x, &a)?, &self.b.value()?)? * self.scaling)?
        };
        if dtype == DType::F32 {
            // An f32 base output (bf16 inference's f32 residual path): the update joins it in
            // f32, as torch promotes `result + lora_B(lora_A(x)) * scaling`. (`kernels::add`:
            // the same sum, on rayon's threads on the CPU.)
            return Ok(sightline_kernels::add(&base, &delta.to_dtype(DType::F32)?)?);
        }
        Ok((base.to_dtype(delta.dtype())? + delta)?.to_dtype(dtype)?)
    }

    /// `ΔW = scaling · B·A` as `[out, in]` f32, what merging adds to the base weight (computed
    /// as the unmerged path computes `x·ΔWᵀ` at `x = I`, so a merge reproduces it).
    pub fn delta_weight(&self) -> Result<Tensor> {
        let (a, b) = (self.a.tensor(), self.b.tensor());
        Ok((a.t()?.matmul(&b.t()?)? * self.scaling)?
            .t()?
            .contiguous()?)
    }

    /// A and B under PEFT's saved keys for `module` (`base_model.model.<module>.lora_A.weight`).
    pub fn named_params(&self, module: &str) -> [NamedParam; 2] {
        [("lora_A", &self.a), ("lora_B", &self.b)].map(|(which, p)| NamedParam {
            name: peft_key(module, which),
            param: p.clone(),
        })
    }

    /// Where the shared dropout stream stands (ChaCha word position), for resuming a run; 0
    /// for a loaded adapter.
    pub fn rng_position(&self) -> Result<u128> {
        match &self.rng {
            Some(r) => Ok(lock_rng(r)?.get_word_pos()),
            None => Ok(0),
        }
    }

    /// Moves the shared dropout stream to a saved position.
    pub fn set_rng_position(&self, pos: u128) -> Result<()> {
        if let Some(r) = &self.rng {
            lock_rng(r)?.set_word_pos(pos);
        }
        Ok(())
    }

    /// Inverted dropout as torch does it: keep with probability 1-p, scale kept by 1/(1-p).
    fn dropout(&self, xs: &Tensor) -> Result<Tensor> {
        let Some(rng) = &self.rng else {
            return Ok(xs.clone());
        };
        let p = self.dropout;
        let n = xs.elem_count();
        let mask: Vec<f32> = {
            let mut g = lock_rng(rng)?;
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

/// Whether `s` is a power of two (a normal f64 with an empty mantissa, positive): scaling by it
/// commutes with rounding, so where it is applied does not change a bit.
fn is_power_of_two(s: f64) -> bool {
    s.is_normal() && s > 0.0 && s.to_bits() & ((1u64 << 52) - 1) == 0
}

/// `x · Wᵀ`: on the bf16 GEMM (with its backward) for CPU bf16 rows, else
/// [`sightline_kernels::trained_linear`].
fn times_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(
        match sightline_kernels::bf16_linear_trainable(x, w, true)? {
            Some(y) => y,
            None => sightline_kernels::trained_linear(x, w)?,
        },
    )
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
        let l = LoraLayer::new_trainable(&spec, 10, 64, shared_rng(1), &Device::Cpu)?;
        let a = l.a.tensor().flatten_all()?.to_vec1::<f32>()?;
        let bound = 1.0 / 8.0; // 1/sqrt(64)
        assert!(a.iter().all(|x| x.abs() <= bound));
        assert!(a.iter().any(|x| x.abs() > 0.9 * bound));
        let b = l.b.tensor().flatten_all()?.to_vec1::<f32>()?;
        assert!(b.iter().all(|&x| x == 0.0));
        assert_eq!(l.scaling, 2.0);
        Ok(())
    }

    #[test]
    fn powers_of_two_are_recognised() {
        for s in [0.25, 0.5, 1.0, 2.0, 1024.0, 2f64.powi(-20)] {
            assert!(is_power_of_two(s), "{s}");
        }
        for s in [
            0.0,
            -0.5,
            0.3,
            1.5,
            3.0,
            16.0 / 48.0,
            f64::INFINITY,
            f64::NAN,
        ] {
            assert!(!is_power_of_two(s), "{s}");
        }
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
        let l = LoraLayer::new_trainable(&spec, 1, 1, shared_rng(5), &Device::Cpu)?;
        let xs = Tensor::ones((4000, 1), DType::F32, &Device::Cpu)?;
        let d = l.dropout(&xs)?.to_vec2::<f32>()?;
        let mean: f32 = d.iter().map(|r| r[0]).sum::<f32>() / 4000.0;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        Ok(())
    }

    /// Merging adds what the unmerged path adds: `x·ΔWᵀ` equals the update at `x`.
    #[test]
    fn delta_weight_is_the_unmerged_update() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0.5f32, -1.0], [0.25, 2.0]], &dev)?;
        let b = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev)?;
        let d = LoraLayer::from_peft(&a, &b, 0.5)?;
        let x = Tensor::new(&[[1.0f32, 1.0]], &dev)?;
        let merged: Vec<Vec<f32>> = x.matmul(&d.delta_weight()?.t()?)?.to_vec2()?;
        assert_eq!(merged, [[-0.25, 1.125, 0.875]]);
        Ok(())
    }

    #[test]
    fn delta_runs_in_f32_and_rounds_once() -> Result<()> {
        // f16 base: PEFT adds an f32 update to the upcast result and rounds once.
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0.5f32, -1.0], [0.25, 2.0]], &dev)?; // r=2, in=2
        let b = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev)?; // out=3
        let d = LoraLayer::from_peft(&a, &b, 0.5)?;
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
