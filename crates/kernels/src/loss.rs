//! Token cross-entropy on rows of logits: the training loss.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{slice, with_f32, CResult, Path};

/// Per-row `−log softmax(logits)[target]` of `[n, vocab]` logits. The backward recomputes the
/// softmax from the logits (one pass) rather than keeping an `[n, vocab]` copy:
/// `d logits = g_row · (softmax − onehot(target))`.
struct CrossEntropy {
    targets: Vec<u32>,
}

/// `(max, log Σ exp(x − max))` of one row: `logsumexp = max + lse`.
fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: targets do not fit [{n}, {v}] logits");
        }
        let x = slice(s, l)?;
        let nll: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(x, &t)| {
                let (max, lse) = log_sum_exp(x);
                -(x[t as usize] - max - lse)
            })
            .collect();
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, v) = logits.dims2()?;
        let g = grad.to_vec1::<f32>()?;
        let mut dx = vec![0f32; n * v];
        with_f32(logits, |x| {
            dx.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(self.targets.par_iter().zip(g.par_iter()))
                .for_each(|((dx, x), (&t, &g))| {
                    let (max, lse) = log_sum_exp(x);
                    for (d, x) in dx.iter_mut().zip(x) {
                        *d = g * (x - max - lse).exp();
                    }
                    dx[t as usize] -= g;
                });
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, (n, v), logits.device())?))
    }
}

/// `−log softmax(logits)[target]` per row of `[n, vocab]` logits → `[n]`, differentiable in
/// the logits (log_softmax + gather when not on the CPU in f32).
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> CResult<Tensor> {
    let op = CrossEntropy {
        targets: targets.to_vec(),
    };
    match Path::of(&[logits]) {
        Path::Forward => logits.contiguous()?.apply_op1_no_bwd(&op),
        Path::WithBackward => logits.contiguous()?.apply_op1(op),
        Path::Candle => {
            let n = targets.len();
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let tgt = Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?;
            logp.gather(&tgt, 1)?.squeeze(1)?.neg()
        }
    }
}
