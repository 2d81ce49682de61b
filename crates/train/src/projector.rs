//! LLaVA's multimodal projector (`mm_projector_type` `linear`, the paper's, or `mlp2x_gelu`,
//! LLaVA-1.5's) and the splice of projected image features into a row's input embeddings.
//!
//! LLaVA (`llava_arch.py` `prepare_inputs_labels_for_multimodal`, spec llava-model.md M7)
//! replaces the image marker token of each row with the image's projected features and gives
//! them label -100; here the marker is a position of the row (its id is ignored). Rows without
//! an image, and rows whose image adds fewer positions, are right-padded with zero embeddings
//! and label -100, which causal attention keeps away from every real position.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::loss::IGNORE_INDEX;
use crate::param::{NamedParam, Param};

/// Checkpoint names of the linear projector, as LLaVA's `mm_projector.bin` has them.
pub const WEIGHT: &str = "model.mm_projector.weight";
pub const BIAS: &str = "model.mm_projector.bias";

/// Which projector (LLaVA's `mm_projector_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorType {
    /// `nn.Linear(vision_dim, hidden)`.
    Linear,
    /// `Linear(vision_dim, hidden), GELU, Linear(hidden, hidden)` (`mlp2x_gelu`).
    Mlp2xGelu,
}

impl ProjectorType {
    /// `linear` / `mlp2x_gelu`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "mlp2x_gelu" => Ok(Self::Mlp2xGelu),
            other => Err(Error::Config(format!(
                "mm_projector_type `{other}` is not supported (expected linear or mlp2x_gelu)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Mlp2xGelu => "mlp2x_gelu",
        }
    }

    /// The checkpoint prefix of each linear layer (`nn.Sequential` indices skip the GELU).
    fn layer_names(self) -> &'static [&'static str] {
        match self {
            Self::Linear => &["model.mm_projector"],
            Self::Mlp2xGelu => &["model.mm_projector.0", "model.mm_projector.2"],
        }
    }
}

/// The projector's linear layers `y = x·Wᵀ + b` (`W: [out, in]`), all trained; GELU (erf, torch
/// `nn.GELU()`'s default) between them for `mlp2x_gelu`.
pub struct Projector {
    pub kind: ProjectorType,
    /// (weight, bias) per linear layer.
    pub layers: Vec<(Var, Var)>,
}

impl Projector {
    /// torch `nn.Linear`'s default init, per layer: W and b ~ U(-1/√in, 1/√in), from a seeded
    /// stream (torch's generator cannot be reproduced; the seed is the run's).
    pub fn new_random(
        kind: ProjectorType,
        in_dim: usize,
        out_dim: usize,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        let mut g = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::new();
        for (i, _) in kind.layer_names().iter().enumerate() {
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
        Self::from_layers(kind, &layers)
    }

    /// A linear projector with trainable copies of `w: [out, in]` and `b: [out]`.
    pub fn from_tensors(w: &Tensor, b: &Tensor) -> Result<Self> {
        Self::from_layers(ProjectorType::Linear, &[(w.clone(), b.clone())])
    }

    /// Trainable copies of given (weight, bias) layers.
    pub fn from_layers(kind: ProjectorType, layers: &[(Tensor, Tensor)]) -> Result<Self> {
        if layers.len() != kind.layer_names().len() {
            return Err(Error::Config(format!(
                "a {} projector has {} linear layers, got {}",
                kind.name(),
                kind.layer_names().len(),
                layers.len()
            )));
        }
        let mut out = Vec::with_capacity(layers.len());
        let mut prev_out = None;
        for (w, b) in layers {
            let (out_dim, in_dim) = w.dims2()?;
            if b.dims1()? != out_dim || prev_out.is_some_and(|p| p != in_dim) {
                return Err(Error::Config(format!(
                    "projector layer shapes do not chain: weight {:?}, bias {:?}",
                    w.dims(),
                    b.dims()
                )));
            }
            prev_out = Some(out_dim);
            out.push((
                Var::from_tensor(&w.to_dtype(DType::F32)?)?,
                Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            ));
        }
        Ok(Self { kind, layers: out })
    }

    /// Reads `model.mm_projector.*` from a stage-1 file (`pretrain_mm_mlp_adapter`); the
    /// tensors decide the type, and must be `[hidden, vision_dim]`(, `[hidden, hidden]`).
    pub fn from_file(path: &Path, vision_dim: usize, hidden: usize, dev: &Device) -> Result<Self> {
        let w = sightline_model::Weights::from_file(path, DType::F32, dev)?;
        Self::from_weights(&w, path, vision_dim, hidden)
    }

    /// [`Projector::from_file`] on a stage-1 file that is already open (`path` names it in
    /// errors).
    pub fn from_weights(
        w: &sightline_model::Weights,
        path: &Path,
        vision_dim: usize,
        hidden: usize,
    ) -> Result<Self> {
        let kind = if w.contains(WEIGHT) {
            ProjectorType::Linear
        } else if w.contains("model.mm_projector.0.weight") {
            ProjectorType::Mlp2xGelu
        } else {
            return Err(Error::Config(format!(
                "{}: no `model.mm_projector.weight` or `model.mm_projector.0.weight` \
                 (expected a stage-1 mm_projector file)",
                path.display()
            )));
        };
        let mut layers = Vec::new();
        for (i, name) in kind.layer_names().iter().enumerate() {
            let in_dim = if i == 0 { vision_dim } else { hidden };
            layers.push((
                w.get(&[hidden, in_dim], &format!("{name}.weight"))?,
                w.get(&[hidden], &format!("{name}.bias"))?,
            ));
        }
        Self::from_layers(kind, &layers)
    }

    /// The first layer's weight `[hidden, vision_dim]`.
    pub fn weight(&self) -> &Var {
        &self.layers[0].0
    }

    /// Named trainable parameters, LLaVA's checkpoint names.
    pub fn params(&self) -> Vec<NamedParam> {
        let mut out = Vec::new();
        for (name, (w, b)) in self.kind.layer_names().iter().zip(&self.layers) {
            for (suffix, v) in [("weight", w), ("bias", b)] {
                out.push(NamedParam {
                    name: format!("{name}.{suffix}"),
                    param: Param::Trainable(v.clone()),
                });
            }
        }
        out
    }

    /// `[..., in]` → `[..., out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            if i > 0 {
                xs = xs.gelu_erf()?;
            }
            xs = xs
                .broadcast_matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
        }
        Ok(xs)
    }
}

/// Replaces row `r`'s embedding at `positions[r]` with `feats[r]` (rows with `None` keep
/// their text): embeds `[b, t, h]`, feats `[b, n, h]` → `[b, t + n - 1, h]` (or `t` when no
/// row has an image), labels likewise with -100 for the image rows; shorter rows are
/// right-padded with zeros and -100.
///
/// `stage1_branch` is LLaVA's branch for `tune_mm_mlp_adapter` with `mm_use_im_start_end`
/// (spec M7.4): only the embeddings right before and after the image keep their gradient
/// (everything else is detached, so stage 1 trains just those rows of `embed_tokens`), and the
/// label after the image is replaced by the one at the marker, as LLaVA's code does.
pub fn splice(
    embeds: &Tensor,
    feats: &Tensor,
    positions: &[Option<usize>],
    labels: &[Vec<i64>],
    stage1_branch: bool,
) -> Result<(Tensor, Vec<Vec<i64>>)> {
    let (b, t, h) = embeds.dims3()?;
    let (fb, n, fh) = feats.dims3()?;
    if fb != b || positions.len() != b || labels.len() != b || fh != h {
        return Err(Error::Batch(format!(
            "{b} rows of width {h} but {fb} feature sets of width {fh}, {} image positions and \
             {} label rows",
            positions.len(),
            labels.len()
        )));
    }
    let mut rows = Vec::with_capacity(b);
    let mut out_labels = Vec::with_capacity(b);
    for (r, pos) in positions.iter().enumerate() {
        let e = embeds.get(r)?;
        let Some(p) = *pos else {
            rows.push(e);
            out_labels.push(labels[r].clone());
            continue;
        };
        if p >= t {
            return Err(Error::Batch(format!(
                "image position {p} is outside a row of {t} tokens"
            )));
        }
        let mut parts = Vec::with_capacity(5);
        let mut l = labels[r][..p].to_vec();
        l.extend(std::iter::repeat_n(IGNORE_INDEX, n));
        if stage1_branch && p > 0 && p + 1 < t {
            if p > 1 {
                parts.push(e.narrow(0, 0, p - 1)?.detach());
            }
            parts.push(e.narrow(0, p - 1, 1)?);
            parts.push(feats.get(r)?);
            parts.push(e.narrow(0, p + 1, 1)?);
            if p + 2 < t {
                parts.push(e.narrow(0, p + 2, t - p - 2)?.detach());
            }
            l.push(labels[r][p]);
            l.extend_from_slice(&labels[r][p + 2..]);
        } else {
            if p > 0 {
                parts.push(e.narrow(0, 0, p)?);
            }
            parts.push(feats.get(r)?);
            if p + 1 < t {
                parts.push(e.narrow(0, p + 1, t - p - 1)?);
            }
            l.extend_from_slice(&labels[r][p + 1..]);
        }
        rows.push(Tensor::cat(&parts, 0)?);
        out_labels.push(l);
    }
    let len = rows
        .iter()
        .map(|x| x.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let max = len.iter().copied().max().unwrap_or(0);
    for (row, l) in rows.iter_mut().zip(out_labels.iter_mut()) {
        let have = row.dim(0)?;
        if have < max {
            let pad = Tensor::zeros((max - have, h), row.dtype(), row.device())?;
            *row = Tensor::cat(&[&*row, &pad], 0)?;
            l.extend(std::iter::repeat_n(IGNORE_INDEX, max - have));
        }
    }
    Ok((Tensor::stack(&rows, 0)?, out_labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_pads_rows_without_images_and_follows_the_stage1_branch() -> Result<()> {
        let dev = Device::Cpu;
        let embeds = Tensor::arange(0f32, 8.0, &dev)?.reshape((2, 4, 1))?;
        let feats = Tensor::full(-1f32, (2, 2, 1), &dev)?;
        let labels = vec![vec![-100, -100, 12, 13], vec![-100, 21, 22, 23]];
        let (e, l) = splice(&embeds, &feats, &[Some(1), None], &labels, false)?;
        assert_eq!(
            e.squeeze(2)?.to_vec2::<f32>()?,
            vec![vec![0., -1., -1., 2., 3.], vec![4., 5., 6., 7., 0.]]
        );
        assert_eq!(
            l,
            vec![vec![-100, -100, -100, 12, 13], vec![-100, 21, 22, 23, -100]]
        );
        // Stage-1 branch: the label after the image is the marker's (12 is lost).
        let (_, l) = splice(&embeds, &feats, &[Some(1), Some(1)], &labels, true)?;
        assert_eq!(l[0], vec![-100, -100, -100, -100, 13]);
        Ok(())
    }

    #[test]
    fn mlp2x_gelu_has_llava_names_and_shapes() -> Result<()> {
        let p = Projector::new_random(ProjectorType::Mlp2xGelu, 6, 4, 1, &Device::Cpu)?;
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
