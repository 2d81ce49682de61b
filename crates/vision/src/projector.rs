//! The vision→language projector: CLIP features `[n, mm_hidden]` → decoder width `[n, hidden]`.
//!
//! Types follow LLaVA's `build_vision_projector` (`multimodal_projector/builder.py`): `linear`
//! (the only one in Sight-Beyond-Text), `mlp{N}x_gelu` (a Linear, then N−1 × [exact GELU,
//! Linear]) and `identity`. Tensor names follow the checkpoint layout: original LLaVA keeps an
//! `nn.Sequential` under `model.mm_projector` (`.0`, `.2`, … for MLPs; no index for `linear`),
//! llava-hf has `multi_modal_projector.linear_1` / `linear_2` with `projector_hidden_act`.

use std::path::Path;

use candle_core::Tensor;
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
        if s == "linear" {
            return Ok(Self::Linear);
        }
        if s == "identity" {
            return Ok(Self::Identity);
        }
        let depth = s
            .strip_prefix("mlp")
            .and_then(|r| r.strip_suffix("x_gelu"))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&d| d >= 1);
        match depth {
            Some(depth) => Ok(Self::MlpGelu { depth }),
            None => Err(Error::format(
                path,
                format!(
                    "mm_projector_type `{s}` is not supported (expected linear, mlp<N>x_gelu or identity)"
                ),
            )),
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
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn load(w: &Weights, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[out_dim, in_dim], "weight")?,
            bias: if bias {
                Some(w.get(&[out_dim], "bias")?)
            } else {
                None
            },
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.broadcast_matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        })
    }
}

/// A loaded projector.
#[derive(Clone)]
pub struct Projector {
    layers: Vec<Dense>,
    act: Act,
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
            in_dim,
            out_dim,
        })
    }

    /// `[..., in_dim]` → `[..., out_dim]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
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
}
