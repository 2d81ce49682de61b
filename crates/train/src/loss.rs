//! Causal-LM cross-entropy as transformers 4.46.3 computes it (`loss/loss_utils.py`
//! `ForCausalLMLoss`): logits at position `i` predict label `i + 1`, labels equal to -100 are
//! ignored, and the sum is divided by the caller's count (the mean over targets by default,
//! `num_items_in_batch` under HF Trainer's gradient accumulation).
//!
//! Only the rows that have a target go through the LM head: the loss is the same and a long
//! padded batch does not materialise `[b·t, vocab]` logits it never uses.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use sightline_model::Llama;

pub use sightline_vision::splice::IGNORE_INDEX;

/// A batch's summed loss and the counts the normalisations need.
pub struct LossParts {
    /// Σ −log p(target) over the shifted targets: a differentiable scalar.
    pub sum: Tensor,
    /// Shifted targets (positions `1..t` whose label is not -100): the mean's divisor.
    pub targets: usize,
    /// Labels that are not -100 before the shift (what HF 4.46.3 `get_batch_samples` counts
    /// as `num_items_in_batch`; includes a row's first label, which is never a target).
    pub labels: usize,
}

/// Labels `[b, t]` (i64) as host rows, checked against the vocabulary.
pub fn label_rows(labels: &Tensor, vocab: usize) -> Result<Vec<Vec<i64>>> {
    let rows = labels.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    for r in &rows {
        if let Some(bad) = r
            .iter()
            .find(|&&l| l != IGNORE_INDEX && (l < 0 || l as usize >= vocab))
        {
            return Err(Error::Batch(format!(
                "label {bad} is neither -100 nor a token id below vocab_size {vocab}"
            )));
        }
    }
    Ok(rows)
}

/// Shifted next-token cross-entropy of final hidden states `[b, t, hidden]` against label rows.
pub fn causal_lm_loss(model: &Llama, hidden: &Tensor, labels: &[Vec<i64>]) -> Result<LossParts> {
    let (b, t, hs) = hidden.dims3()?;
    if labels.len() != b || labels.iter().any(|r| r.len() != t) {
        return Err(Error::Batch(format!(
            "labels must be [{b}, {t}] like the inputs"
        )));
    }
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut n_labels = 0;
    for (bi, row) in labels.iter().enumerate() {
        n_labels += row.iter().filter(|&&l| l != IGNORE_INDEX).count();
        for j in 0..t.saturating_sub(1) {
            let l = row[j + 1];
            if l != IGNORE_INDEX {
                rows.push((bi * t + j) as u32);
                targets.push(l as u32);
            }
        }
    }
    let dev = hidden.device();
    if rows.is_empty() {
        return Ok(LossParts {
            sum: Tensor::zeros((), DType::F32, dev)?,
            targets: 0,
            labels: n_labels,
        });
    }
    let n = rows.len();
    let idx = Tensor::from_vec(rows, n, dev)?;
    let h = hidden.reshape((b * t, hs))?.index_select(&idx, 0)?;
    let logits = model.logits(&h)?.to_dtype(DType::F32)?; // [n, vocab]

    // One pass per row forward and back, no [n, vocab] log-probabilities kept (`sightline_kernels`).
    let nll = sightline_kernels::cross_entropy_rows(&logits, &targets)?; // [n]
    Ok(LossParts {
        sum: nll.sum_all()?,
        targets: n,
        labels: n_labels,
    })
}
