//! LLaVA's `linear` multimodal projector (`mm_projector_type` linear, the paper's) and the
//! splice of projected image features into a row's input embeddings.
//!
//! LLaVA (`llava_arch.py` `prepare_inputs_labels_for_multimodal`) replaces the image marker
//! token of each row with the image's projected features and gives them label -100; here the
//! marker is a position of the row (its id is ignored), and rows of a batch stay equally long.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::loss::IGNORE_INDEX;
use crate::param::{NamedParam, Param};

/// Checkpoint names, as LLaVA's `mm_projector.bin` has them.
pub const WEIGHT: &str = "model.mm_projector.weight";
pub const BIAS: &str = "model.mm_projector.bias";

/// `y = x·Wᵀ + b`, `W: [hidden, vision_dim]`, both trained.
pub struct Projector {
    pub weight: Var,
    pub bias: Var,
}

impl Projector {
    /// torch `nn.Linear`'s default init: W and b ~ U(-1/√in, 1/√in), from a seeded stream.
    pub fn new_random(in_dim: usize, out_dim: usize, seed: u64, dev: &Device) -> Result<Self> {
        let mut g = ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (in_dim as f64).sqrt();
        let mut draw = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| g.random_range(-bound..bound) as f32)
                .collect()
        };
        let w = Tensor::from_vec(draw(out_dim * in_dim), (out_dim, in_dim), dev)?;
        let b = Tensor::from_vec(draw(out_dim), out_dim, dev)?;
        Self::from_tensors(&w, &b)
    }

    /// Trainable copies of given weights `[out, in]` and bias `[out]`.
    pub fn from_tensors(w: &Tensor, b: &Tensor) -> Result<Self> {
        let (out_dim, _) = w.dims2()?;
        if b.dims1()? != out_dim {
            return Err(Error::Config(format!(
                "projector bias has {} entries, weight has {out_dim} rows",
                b.dims1()?
            )));
        }
        Ok(Self {
            weight: Var::from_tensor(&w.to_dtype(DType::F32)?)?,
            bias: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
        })
    }

    /// Reads `model.mm_projector.{weight,bias}` from a stage-1 file (`--pretrain_mm_mlp_adapter`).
    pub fn from_file(path: &Path, vision_dim: usize, hidden: usize, dev: &Device) -> Result<Self> {
        let w = sightline_model::Weights::from_file(path, DType::F32, dev)?;
        Self::from_tensors(
            &w.get(&[hidden, vision_dim], WEIGHT)?,
            &w.get(&[hidden], BIAS)?,
        )
    }

    /// Named trainable parameters (weight, bias).
    pub fn params(&self) -> Vec<NamedParam> {
        vec![
            NamedParam {
                name: WEIGHT.into(),
                param: Param::Trainable(self.weight.clone()),
            },
            NamedParam {
                name: BIAS.into(),
                param: Param::Trainable(self.bias.clone()),
            },
        ]
    }

    /// `[..., in]` → `[..., out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs
            .broadcast_matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

/// Replaces row `r`'s embedding at `positions[r]` with `feats[r]`:
/// embeds `[b, t, h]`, feats `[b, n, h]` → `[b, t + n - 1, h]`, and the labels likewise, with
/// -100 for the image rows.
pub fn splice(
    embeds: &Tensor,
    feats: &Tensor,
    positions: &[usize],
    labels: &[Vec<i64>],
) -> Result<(Tensor, Vec<Vec<i64>>)> {
    let (b, t, _) = embeds.dims3()?;
    let (fb, n, _) = feats.dims3()?;
    if fb != b || positions.len() != b || labels.len() != b {
        return Err(Error::Batch(format!(
            "{b} rows but {fb} feature sets, {} image positions and {} label rows",
            positions.len(),
            labels.len()
        )));
    }
    let mut rows = Vec::with_capacity(b);
    let mut out_labels = Vec::with_capacity(b);
    for (r, &p) in positions.iter().enumerate() {
        if p >= t {
            return Err(Error::Batch(format!(
                "image position {p} is outside a row of {t} tokens"
            )));
        }
        let e = embeds.get(r)?;
        let mut parts = Vec::with_capacity(3);
        if p > 0 {
            parts.push(e.narrow(0, 0, p)?);
        }
        parts.push(feats.get(r)?);
        if p + 1 < t {
            parts.push(e.narrow(0, p + 1, t - p - 1)?);
        }
        rows.push(Tensor::cat(&parts, 0)?);
        let mut l = labels[r][..p].to_vec();
        l.extend(std::iter::repeat_n(IGNORE_INDEX, n));
        l.extend_from_slice(&labels[r][p + 1..]);
        out_labels.push(l);
    }
    Ok((Tensor::stack(&rows, 0)?, out_labels))
}
