//! The vision→language projector: CLIP features `[n, mm_hidden]` → decoder width `[n, hidden]`.
//!
//! Types follow LLaVA's `build_vision_projector` (`multimodal_projector/builder.py`): `linear`
//! (the only one in Sight-Beyond-Text), `mlp{N}x_gelu` (a Linear, then N−1 × [exact GELU,
//! Linear]) and `identity`. Tensor names follow the checkpoint layout: original LLaVA keeps an
//! `nn.Sequential` under `model.mm_projector` (`.0`, `.2`, … for MLPs; no index for `linear`),
//! llava-hf has `multi_modal_projector.linear_1` / `linear_2` with `projector_hidden_act`.
//!
//! One projector for evaluation and training: loaded ones are frozen ([`Param::Frozen`]),
//! [`Projector::new_random`] and [`Projector::trainable`] make trainable ones (`Var`s, LLaVA's
//! checkpoint names from [`Projector::params`]). It lives here, not in `sightline-model`,
//! because it maps CLIP features (this crate's) into the decoder; `sightline-train` uses it.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sightline_model::param::{NamedParam, Param};
use sightline_model::Weights;

use crate::error::{Error, Result};

/// The projector architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorKind {
    Linear,
    /// `mlp{depth}x_gelu`: `depth` Linear layers with exact GELU between them.
    MlpGelu {
        depth: usize,
    },
    Identity,
}

impl ProjectorKind {
    /// Parses `mm_projector_type` (absent = `linear`, as LLaVA's `getattr(config,
    /// 'mm_projector_type', 'linear')`); `path` names config.json in errors.
    pub fn parse(s: Option<&str>, path: &Path) -> Result<Self> {
        let s = s.unwrap_or("linear");
        Self::parse_name(s).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "mm_projector_type `{s}` is not supported (expected linear, mlp<N>x_gelu or identity)"
                ),
            )
        })
    }

    /// `linear`, `mlp<N>x_gelu` or `identity`; None for anything else.
    pub fn parse_name(s: &str) -> Option<Self> {
        match s {
            "linear" => Some(Self::Linear),
            "identity" => Some(Self::Identity),
            _ => s
                .strip_prefix("mlp")
                .and_then(|r| r.strip_suffix("x_gelu"))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&d| d >= 1)
                .map(|depth| Self::MlpGelu { depth }),
        }
    }

    /// The `mm_projector_type` string.
    pub fn name(self) -> String {
        match self {
            Self::Linear => "linear".into(),
            Self::MlpGelu { depth } => format!("mlp{depth}x_gelu"),
            Self::Identity => "identity".into(),
        }
    }

    /// Original LLaVA's checkpoint prefix of each linear layer (`nn.Sequential` indices skip
    /// the GELUs).
    fn layer_names(self) -> Vec<String> {
        match self {
            Self::Linear => vec!["model.mm_projector".into()],
            Self::MlpGelu { depth } => (0..depth)
                .map(|i| format!("model.mm_projector.{}", 2 * i))
                .collect(),
            Self::Identity => vec![],
        }
    }
}

/// The activation between llava-hf's two projector layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Exact (erf) GELU: `nn.GELU()` and HF's `gelu`.
    Gelu,
    /// tanh-approximated GELU (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    Relu,
    Silu,
    QuickGelu,
}

impl Act {
    fn parse(s: &str, path: &Path) -> Result<Self> {
        Ok(match s {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "quick_gelu" => Self::QuickGelu,
            other => {
                return Err(Error::format(
                    path,
                    format!("projector_hidden_act `{other}` is not supported (expected gelu, gelu_pytorch_tanh, relu, silu or quick_gelu)"),
                ))
            }
        })
    }

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => xs.gelu_erf()?,
            Self::GeluTanh => xs.gelu()?,
            Self::Relu => xs.relu()?,
            Self::Silu => xs.silu()?,
            Self::QuickGelu => (xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?)?,
        })
    }
}

/// `x @ Wᵀ + b` with an HF `[out, in]` weight.
#[derive(Clone)]
struct Dense {
    weight: Param,
    bias: Option<Param>,
}

impl Dense {
    fn load(w: &Weights, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: Param::Frozen(w.get(&[out_dim, in_dim], "weight")?),
            bias: if bias {
                Some(Param::Frozen(w.get(&[out_dim], "bias")?))
            } else {
                None
            },
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.broadcast_matmul(&self.weight.value()?.t()?)?;
        Ok(match &self.bias {
            Some(b) => ys.broadcast_add(&b.value()?)?,
            None => ys,
        })
    }

    fn computed_in(self, compute: DType) -> Result<Self> {
        Ok(Self {
            weight: self.weight.computed_in(compute)?,
            bias: self.bias.map(|b| b.computed_in(compute)).transpose()?,
        })
    }
}

/// A projector: loaded (frozen) for evaluation, or trainable.
#[derive(Clone)]
pub struct Projector {
    layers: Vec<Dense>,
    act: Act,
    pub kind: ProjectorKind,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Projector {
    /// Original-LLaVA tensors under `w` (positioned at `model.mm_projector`, or at the root of
    /// a stripped stage-1 file): `weight`/`bias` for `linear`, `{0,2,4,…}.weight` for MLPs.
    pub fn load_original(
        kind: ProjectorKind,
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let layers = match kind {
            ProjectorKind::Identity => {
                if in_dim != out_dim {
                    return Err(Error::Request(format!(
                        "an identity projector needs mm_hidden_size ({in_dim}) equal to the decoder's hidden_size ({out_dim})"
                    )));
                }
                vec![]
            }
            ProjectorKind::Linear => vec![Dense::load(w, out_dim, in_dim, true)?],
            ProjectorKind::MlpGelu { depth } => (0..depth)
                .map(|i| {
                    let d_in = if i == 0 { in_dim } else { out_dim };
                    Dense::load(&w.pp(&(2 * i).to_string()), out_dim, d_in, true)
                })
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            layers,
            act: Act::Gelu,
            kind,
            in_dim,
            out_dim,
        })
    }

    /// llava-hf's `LlavaMultiModalProjector` under `w` (positioned at `multi_modal_projector`):
    /// `linear_1` → act → `linear_2`, with biases unless `bias` is false
    /// (`multimodal_projector_bias`).
    pub fn load_hf(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        act: &str,
        bias: bool,
        config_path: &Path,
    ) -> Result<Self> {
        Ok(Self {
            layers: vec![
                Dense::load(&w.pp("linear_1"), out_dim, in_dim, bias)?,
                Dense::load(&w.pp("linear_2"), out_dim, out_dim, bias)?,
            ],
            act: Act::parse(act, config_path)?,
            kind: ProjectorKind::MlpGelu { depth: 2 },
            in_dim,
            out_dim,
        })
    }

    /// A trainable projector with torch `nn.Linear`'s default init per layer: W and b ~
    /// U(-1/√in, 1/√in), from a seeded stream (torch's generator cannot be reproduced; the seed
    /// is the run's).
    pub fn new_random(
        kind: ProjectorKind,
        in_dim: usize,
        out_dim: usize,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        let mut g = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::new();
        for i in 0..kind.layer_names().len() {
            let fan_in = if i == 0 { in_dim } else { out_dim };
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| g.random_range(-bound..bound) as f32)
                    .collect()
            };
            let w = Tensor::from_vec(draw(out_dim * fan_in), (out_dim, fan_in), dev)?;
            let b = Tensor::from_vec(draw(out_dim), out_dim, dev)?;
            layers.push((w, b));
        }
        Self::trainable(kind, &layers)
    }

    /// A trainable projector (f32 `Var` copies) of given (weight `[out, in]`, bias `[out]`)
    /// layers, exact GELU between them.
    pub fn trainable(kind: ProjectorKind, layers: &[(Tensor, Tensor)]) -> Result<Self> {
        let expected = kind.layer_names().len();
        if layers.len() != expected || expected == 0 {
            return Err(Error::Request(format!(
                "a {} projector has {expected} linear layers, got {}",
                kind.name(),
                layers.len()
            )));
        }
        let mut dense = Vec::with_capacity(layers.len());
        let mut prev_out = None;
        for (w, b) in layers {
            let (out_dim, in_dim) = w.dims2()?;
            if b.dims1()? != out_dim || prev_out.is_some_and(|p| p != in_dim) {
                return Err(Error::Request(format!(
                    "projector layer shapes do not chain: weight {:?}, bias {:?}",
                    w.dims(),
                    b.dims()
                )));
            }
            prev_out = Some(out_dim);
            dense.push(Dense {
                weight: Param::new(w.to_dtype(DType::F32)?, true)?,
                bias: Some(Param::new(b.to_dtype(DType::F32)?, true)?),
            });
        }
        let (in_dim, out_dim) = (layers[0].0.dim(1)?, layers[layers.len() - 1].0.dim(0)?);
        Ok(Self {
            layers: dense,
            act: Act::Gelu,
            kind,
            in_dim,
            out_dim,
        })
    }

    /// A trainable projector from a stage-1 file (`pretrain_mm_mlp_adapter`, `model.mm_projector.*`
    /// as LLaVA saves it) that is already open; the tensors decide the type and must be
    /// `[hidden, vision_dim]`(, `[hidden, hidden]`...). `path` names the file in errors.
    pub fn trainable_from_stage1(
        w: &Weights,
        path: &Path,
        vision_dim: usize,
        hidden: usize,
    ) -> Result<Self> {
        let depth = (0..)
            .take_while(|i| w.contains(&format!("model.mm_projector.{}.weight", 2 * i)))
            .count();
        let kind = if w.contains("model.mm_projector.weight") {
            ProjectorKind::Linear
        } else if depth > 0 {
            ProjectorKind::MlpGelu { depth }
        } else {
            return Err(Error::format(
                path,
                "no `model.mm_projector.weight` or `model.mm_projector.0.weight` (expected a \
                 stage-1 mm_projector file)",
            ));
        };
        let mut layers = Vec::new();
        for (i, name) in kind.layer_names().iter().enumerate() {
            let in_dim = if i == 0 { vision_dim } else { hidden };
            layers.push((
                w.get(&[hidden, in_dim], &format!("{name}.weight"))?,
                w.get(&[hidden], &format!("{name}.bias"))?,
            ));
        }
        Self::trainable(kind, &layers)
    }

    /// [`Projector::trainable_from_stage1`] on a file not yet open.
    pub fn trainable_from_file(
        path: &Path,
        vision_dim: usize,
        hidden: usize,
        dev: &Device,
    ) -> Result<Self> {
        let w = Weights::from_file(path, DType::F32, dev)?;
        Self::trainable_from_stage1(&w, path, vision_dim, hidden)
    }

    /// This projector's trainable layers computed in `compute` (bf16 mixed precision: f32
    /// masters cast at each use, see `sightline_model::param`); inputs are cast to it too.
    /// A loaded (frozen) projector is unchanged.
    pub fn computed_in(self, compute: DType) -> Result<Self> {
        let layers = self
            .layers
            .into_iter()
            .map(|d| d.computed_in(compute))
            .collect::<Result<_>>()?;
        Ok(Self { layers, ..self })
    }

    /// The first layer's weight `[out, in]` (None for `identity`).
    pub fn weight(&self) -> Option<&Tensor> {
        self.layers.first().map(|d| d.weight.tensor())
    }

    /// The weights and biases under original LLaVA's checkpoint names
    /// (`model.mm_projector[.i].{weight,bias}`), frozen or trainable as built.
    pub fn params(&self) -> Vec<NamedParam> {
        let mut out = Vec::new();
        for (name, d) in self.kind.layer_names().iter().zip(&self.layers) {
            let bias = d.bias.iter().map(|b| ("bias", b));
            for (suffix, p) in std::iter::once(("weight", &d.weight)).chain(bias) {
                out.push(NamedParam {
                    name: format!("{name}.{suffix}"),
                    param: p.clone(),
                });
            }
        }
        out
    }

    /// `[..., in_dim]` → `[..., out_dim]`, in the layers' compute dtype (the input is cast to
    /// it: CLIP features computed in f32 enter a bf16 run's projector in bf16).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = match self.layers.first() {
            Some(d) => xs.to_dtype(d.weight.compute_dtype())?,
            None => xs.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                xs = self.act.apply(&xs)?;
            }
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn projector_types_parse_like_llava() {
        let p = Path::new("config.json");
        assert_eq!(
            ProjectorKind::parse(None, p).unwrap(),
            ProjectorKind::Linear
        );
        assert_eq!(
            ProjectorKind::parse(Some("mlp2x_gelu"), p).unwrap(),
            ProjectorKind::MlpGelu { depth: 2 }
        );
        let err = ProjectorKind::parse(Some("mlp2x_relu"), p).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn mlp_applies_exact_gelu_between_layers() -> Result<()> {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert("0.weight".into(), Tensor::new(&[[2f32]], &dev)?);
        t.insert("0.bias".into(), Tensor::new(&[-1f32], &dev)?);
        t.insert("2.weight".into(), Tensor::new(&[[1f32]], &dev)?);
        t.insert("2.bias".into(), Tensor::new(&[0.5f32], &dev)?);
        let w = Weights::from_tensors(t, "p".into(), DType::F32, &dev);
        let p = Projector::load_original(ProjectorKind::MlpGelu { depth: 2 }, &w, 1, 1)?;
        let y: Vec<f32> = p
            .forward(&Tensor::new(&[[1.5f32]], &dev)?)?
            .flatten_all()?
            .to_vec1()?;
        // gelu(2) = 2 * Φ(2) = 1.954499736...
        assert!((y[0] - (1.954_499_7 + 0.5)).abs() < 1e-5, "{y:?}");
        Ok(())
    }

    #[test]
    fn mlp2x_gelu_has_llava_names_and_shapes() -> Result<()> {
        let p = Projector::new_random(ProjectorKind::MlpGelu { depth: 2 }, 6, 4, 1, &Device::Cpu)?;
        let names: Vec<String> = p.params().into_iter().map(|n| n.name).collect();
        assert_eq!(
            names,
            [
                "model.mm_projector.0.weight",
                "model.mm_projector.0.bias",
                "model.mm_projector.2.weight",
                "model.mm_projector.2.bias"
            ]
        );
        let y = p.forward(&Tensor::ones((3, 2, 6), DType::F32, &Device::Cpu)?)?;
        assert_eq!(y.dims(), &[3, 2, 4]);
        Ok(())
    }
}
