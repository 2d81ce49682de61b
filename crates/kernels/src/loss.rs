//! Token cross-entropy on rows of logits: the training loss.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{slice, with_f32, CResult, ForwardState, Path};
use crate::math::{exp_nonpositive, max8, sum8};

/// Per-row `−log softmax(logits)[target]` of `[n, vocab]` logits. The forward keeps each row's
/// `(max, lse)` (8 bytes a row), and the backward rebuilds the softmax from the logits with them
/// rather than keeping an `[n, vocab]` copy: `d logits = g_row · (softmax − onehot(target))`.
///
/// The exponentials are [`exp_nonpositive`] (every argument here is ≤ 0), which vectorises:
/// libm's scalar `expf` over the LM head's `[tokens, vocab]` logits, three times per step, was
/// ~3% of a training step of the 20M bench model (32,000-token vocabulary).
struct CrossEntropy {
    targets: Vec<u32>,
    /// Each row's `(max, lse)` from the forward, for the backward.
    stats: ForwardState<Vec<(f32, f32)>>,
}

/// `(max, log Σ exp(x − max))` of one row: `logsumexp = max + lse`. A NaN or infinite logit
/// makes `lse` NaN, as libm's `exp` would (the vectorised `exp` clamps its argument instead).
fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = max8(x);
    let (mut acc, mut raw) = ([0f32; 16], [0f32; 16]);
    let (chunks, rest) = x.as_chunks::<16>();
    for c in chunks {
        for l in 0..16 {
            acc[l] += exp_nonpositive(c[l] - max);
            raw[l] += c[l];
        }
    }
    let tail: f32 = rest.iter().map(|v| exp_nonpositive(v - max)).sum();
    if !(sum8(&raw) + rest.iter().sum::<f32>()).is_finite() {
        return (max, f32::NAN);
    }
    (max, (sum8(&acc) + tail).ln())
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
        let stats: Vec<(f32, f32)> = x.par_chunks(v.max(1)).map(log_sum_exp).collect();
        let nll: Vec<f32> = stats
            .iter()
            .zip(x.chunks(v.max(1)).zip(&self.targets))
            .map(|(&(max, lse), (x, &t))| -(x[t as usize] - max - lse))
            .collect();
        self.stats.set(stats)?;
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, v) = logits.dims2()?;
        let g = grad.to_vec1::<f32>()?;
        let stats = self.stats.get()?;
        if stats.len() != n || g.len() != n || self.targets.len() != n || v == 0 {
            candle_core::bail!("cross-entropy: backward of [{n}, {v}] logits without its forward");
        }
        // Every value is written below, so the `[n, vocab]` buffer is not zeroed first (a
        // memset of the LM head's whole gradient every step).
        let mut dx: Vec<f32> = Vec::with_capacity(n * v);
        with_f32(logits, |x| {
            if x.len() != n * v {
                candle_core::bail!("cross-entropy: {} logits for [{n}, {v}]", x.len());
            }
            dx.spare_capacity_mut()
                .par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(self.targets.par_iter().zip(g.par_iter()))
                .zip(stats.par_iter())
                .for_each(|(((dx, x), (&t, &g)), &(max, lse))| {
                    let shift = max + lse;
                    for (d, x) in dx.iter_mut().zip(x) {
                        d.write(g * exp_nonpositive((x - shift).min(0.0)));
                    }
                    // SAFETY: the loop above wrote every value of the row, and `t < v`
                    // (checked in the forward).
                    unsafe { *dx[t as usize].assume_init_mut() -= g };
                });
            Ok(())
        })?;
        // SAFETY: the `n` rows (`x`, `targets`, `g` and `stats` all have `n`, checked above)
        // cover all `n * v` values, and each was written above.
        unsafe { dx.set_len(n * v) };
        Ok(Some(Tensor::from_vec(dx, (n, v), logits.device())?))
    }
}

/// `−log softmax(logits)[target]` per row of `[n, vocab]` logits → `[n]`, differentiable in
/// the logits (log_softmax + gather when not on the CPU in f32).
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> CResult<Tensor> {
    let op = CrossEntropy {
        targets: targets.to_vec(),
        stats: ForwardState::new("cross-entropy"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The loss of a 32,000-wide row equals the libm formula to f32 rounding, and a NaN or
    /// infinite logit anywhere in a row makes that row's loss NaN (not a finite number that
    /// hides it), as with libm's `exp`.
    #[test]
    fn rows_match_libm_and_bad_logits_give_nan() -> candle_core::Result<()> {
        let v = 32_000;
        let mut s = 7u32;
        let mut row: Vec<f32> = (0..v)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 20.0 - 10.0
            })
            .collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
        let want = -(row[123] as f64 - max - lse);
        let mut logits = row.clone();
        row[5] = f32::NAN;
        logits.extend(&row);
        row[5] = f32::INFINITY;
        logits.extend(&row);
        let t = Tensor::from_vec(logits, (3, v), &Device::Cpu)?;
        let nll = cross_entropy_rows(&t, &[123, 123, 123])?.to_vec1::<f32>()?;
        assert!(
            (nll[0] as f64 - want).abs() <= 2e-6 * want.abs(),
            "{} vs {want}",
            nll[0]
        );
        assert!(nll[1].is_nan() && nll[2].is_nan(), "{nll:?}");
        Ok(())
    }
}
