//! The image splice of LLaVA (`llava_arch.py` `prepare_inputs_labels_for_multimodal`, spec
//! llava-model.md M7): each image marker's row of the input embeddings is replaced by the
//! image's projected feature rows. One implementation for evaluation ([`splice_rows`], used by
//! `Llava::splice`) and training ([`splice_batch`], which also moves the labels).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// transformers' `ignore_index`: the label of positions that carry no loss (image rows,
/// padding).
pub const IGNORE_INDEX: i64 = -100;

/// `embeds: [t, h]` with the rows at `positions` (ascending, distinct) replaced by the matching
/// feature blocks `[n_i, h]` → `[t + Σ(n_i − 1), h]`.
pub fn splice_rows(embeds: &Tensor, positions: &[usize], feats: &[Tensor]) -> Result<Tensor> {
    let t = embeds.dim(0)?;
    if positions.len() != feats.len() || positions.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Request(format!(
            "{} image positions {positions:?} for {} feature blocks",
            positions.len(),
            feats.len()
        )));
    }
    let mut parts = Vec::with_capacity(2 * positions.len() + 1);
    let mut next = 0;
    for (&p, f) in positions.iter().zip(feats) {
        if p >= t {
            return Err(Error::Request(format!(
                "image position {p} is outside a row of {t} tokens"
            )));
        }
        if p > next {
            parts.push(embeds.narrow(0, next, p - next)?);
        }
        parts.push(f.clone());
        next = p + 1;
    }
    if next < t {
        parts.push(embeds.narrow(0, next, t - next)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Replaces row `r`'s embedding at `positions[r]` with `feats[r]` (rows with `None` keep
/// their text): embeds `[b, t, h]`, feats `[b, n, h]` → `[b, t + n - 1, h]` (or `t` when no
/// row has an image), labels likewise with -100 for the image rows; shorter rows are
/// right-padded with zeros and -100 (causal attention keeps them away from every real
/// position).
///
/// `stage1_branch` is LLaVA's branch for `tune_mm_mlp_adapter` with `mm_use_im_start_end`
/// (spec M7.4): only the embeddings right before and after the image keep their gradient
/// (everything else is detached, so stage 1 trains just those rows of `embed_tokens`), and the
/// label after the image is replaced by the one at the marker, as LLaVA's code does.
pub fn splice_batch(
    embeds: &Tensor,
    feats: &Tensor,
    positions: &[Option<usize>],
    labels: &[Vec<i64>],
    stage1_branch: bool,
) -> Result<(Tensor, Vec<Vec<i64>>)> {
    let (b, t, h) = embeds.dims3()?;
    let (fb, n, fh) = feats.dims3()?;
    if fb != b || positions.len() != b || labels.len() != b || fh != h {
        return Err(Error::Request(format!(
            "{b} rows of width {h} but {fb} feature sets of width {fh}, {} image positions and \
             {} label rows",
            positions.len(),
            labels.len()
        )));
    }
    // Features join the text rows in their dtype (bf16 training's embeddings are f32 rows of
    // the master; LLaVA's `torch.cat` promotes the bf16 features likewise).
    let feats = feats.to_dtype(embeds.dtype())?;
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
            return Err(Error::Request(format!(
                "image position {p} is outside a row of {t} tokens"
            )));
        }
        let mut l = labels[r][..p].to_vec();
        l.extend(std::iter::repeat_n(IGNORE_INDEX, n));
        if stage1_branch && p > 0 && p + 1 < t {
            let mut parts = Vec::with_capacity(5);
            if p > 1 {
                parts.push(e.narrow(0, 0, p - 1)?.detach());
            }
            parts.push(e.narrow(0, p - 1, 1)?);
            parts.push(feats.get(r)?);
            parts.push(e.narrow(0, p + 1, 1)?);
            if p + 2 < t {
                parts.push(e.narrow(0, p + 2, t - p - 2)?.detach());
            }
            rows.push(Tensor::cat(&parts, 0)?);
            l.push(labels[r][p]);
            l.extend_from_slice(&labels[r][p + 2..]);
        } else {
            rows.push(splice_rows(&e, &[p], &[feats.get(r)?])?);
            l.extend_from_slice(&labels[r][p + 1..]);
        }
        out_labels.push(l);
    }
    let max = rows
        .iter()
        .map(|x| x.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
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
    use candle_core::Device;

    #[test]
    fn splice_pads_rows_without_images_and_follows_the_stage1_branch() -> Result<()> {
        let dev = Device::Cpu;
        let embeds = Tensor::arange(0f32, 8.0, &dev)?.reshape((2, 4, 1))?;
        let feats = Tensor::full(-1f32, (2, 2, 1), &dev)?;
        let labels = vec![vec![-100, -100, 12, 13], vec![-100, 21, 22, 23]];
        let (e, l) = splice_batch(&embeds, &feats, &[Some(1), None], &labels, false)?;
        assert_eq!(
            e.squeeze(2)?.to_vec2::<f32>()?,
            vec![vec![0., -1., -1., 2., 3.], vec![4., 5., 6., 7., 0.]]
        );
        assert_eq!(
            l,
            vec![vec![-100, -100, -100, 12, 13], vec![-100, 21, 22, 23, -100]]
        );
        // Stage-1 branch: the label after the image is the marker's (12 is lost).
        let (_, l) = splice_batch(&embeds, &feats, &[Some(1), Some(1)], &labels, true)?;
        assert_eq!(l[0], vec![-100, -100, -100, -100, 13]);
        Ok(())
    }

    #[test]
    fn splice_rows_replaces_each_marker_in_order() -> Result<()> {
        let dev = Device::Cpu;
        let e = Tensor::arange(0f32, 5.0, &dev)?.reshape((5, 1))?;
        let a = Tensor::full(-1f32, (2, 1), &dev)?;
        let b = Tensor::full(-2f32, (3, 1), &dev)?;
        let y = splice_rows(&e, &[0, 3], &[a, b])?;
        assert_eq!(
            y.squeeze(1)?.to_vec1::<f32>()?,
            vec![-1., -1., 1., 2., -2., -2., -2., 4.]
        );
        assert!(splice_rows(&e, &[3, 0], &[e.clone(), e.clone()]).is_err());
        Ok(())
    }
}
