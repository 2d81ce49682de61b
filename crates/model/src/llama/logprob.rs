//! Reading a logits row: the log-probability of a target token (log-softmax at one index) and
//! the argmax, as scoring and greedy decoding need them.
//!
//! Why the row is not left to libm: scoring computes `log Σ exp(x − max)` over the whole
//! vocabulary (32,000–49,152 values) for every continuation token, and libm's scalar f64 `exp`
//! made that ~0.5 ms per token, on one thread between two forwards: 6% of a bf16 TruthfulQA
//! evaluation of the 134M bench model. The `exp` below is branch-free and vectorises (8 f64
//! lanes), within a few f64 ulp of libm's, so the sums stay f64-exact to ~1e-15.

/// Log-softmax of one logits row at `target`, and whether `target` is its (first) argmax.
/// Accumulates in f64; torch does it in f32, which differs by ~1e-7 relative. A NaN logit
/// makes the log-probability NaN (NaNs never count as the maximum).
pub fn logprob_and_greedy(row: &[f32], target: u32) -> (f64, bool) {
    let norm = LogSoftmax::of(row);
    let first = row.iter().position(|&x| x == norm.max).unwrap_or(0);
    (norm.logprob(row[target as usize]), first == target as usize)
}

/// A logits row's log-softmax, as its maximum (NaNs skipped) and `ln Σ exp(x − max)` (NaN if
/// any logit is): one pass over the row, then any entry's log-probability. What reports
/// several entries of a row (an API's target and top tokens) reads them all from one of these,
/// with [`logprob_and_greedy`]'s formula.
#[derive(Clone, Copy, Debug)]
pub struct LogSoftmax {
    max: f32,
    ln_sum: f64,
}

impl LogSoftmax {
    pub fn of(row: &[f32]) -> Self {
        let max = max_skipping_nan(row);
        let mut lanes = [0f64; 8];
        let (chunks, rest) = row.as_chunks::<8>();
        for c in chunks {
            for l in 0..8 {
                lanes[l] += exp_nonpositive(f64::from(c[l] - max));
            }
        }
        let sum = lanes.iter().sum::<f64>()
            + rest
                .iter()
                .map(|&x| exp_nonpositive(f64::from(x - max)))
                .sum::<f64>();
        LogSoftmax {
            max,
            ln_sum: sum.ln(),
        }
    }

    /// The log-probability of an entry whose logit is `x`.
    pub fn logprob(&self, x: f32) -> f64 {
        f64::from(x - self.max) - self.ln_sum
    }
}

/// Index of the (first) largest value (numpy's `argmax` where nothing is NaN): logits for
/// greedy decoding, log-likelihoods for a multiple-choice answer.
pub fn argmax<T: PartialOrd>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    best
}

/// The largest value, NaNs skipped (−∞ for an empty or all-NaN row), in 8 lanes.
fn max_skipping_nan(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let (chunks, rest) = row.as_chunks::<8>();
    for c in chunks {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `exp(x)` for `x <= 0` (a logit minus the row's maximum), in f64: fdlibm's two-part `ln 2`
/// range reduction to `|r| <= ln2 / 2`, the Taylor series to `r^13` (truncation below 1e-17
/// relative), and `2^n` built from the bits of the rounded `n` (the 1.5·2^52 trick). Arguments
/// below −708 are taken as −708 (`exp` ≈ 3e-308 instead of a smaller or zero term, invisible in
/// a sum that holds `exp(0) = 1`); NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    const LN2_HI: f64 = 0.6931471803691238;
    const LN2_LO: f64 = 1.9082149292705877e-10;
    // 1.5 · 2^52: adding it rounds to an integer kept in the low mantissa bits.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    // 1/k! for k = 13 down to 2.
    const INV_FACT: [f64; 12] = [
        1.6059043836821613e-10,
        2.08767569878681e-09,
        2.505210838544172e-08,
        2.755731922398589e-07,
        2.7557319223985893e-06,
        2.48015873015873e-05,
        0.0001984126984126984,
        0.001388888888888889,
        0.008333333333333333,
        0.041666666666666664,
        0.16666666666666666,
        0.5,
    ];
    let x = if x < -708.0 { -708.0 } else { x };
    let shifted = x.mul_add(std::f64::consts::LOG2_E, MAGIC);
    let n = shifted - MAGIC;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = INV_FACT[0];
    for c in &INV_FACT[1..] {
        p = p.mul_add(r, *c);
    }
    let p = p.mul_add(r, 1.0).mul_add(r, 1.0);
    // The low mantissa bits of `shifted` hold n (two's complement): 2^n = (n + 1023) << 52.
    let two_n = f64::from_bits(
        (shifted
            .to_bits()
            .wrapping_sub(MAGIC.to_bits())
            .wrapping_add(1023))
            << 52,
    );
    p * two_n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within a few ulp of libm's `exp` over the range scoring sees.
    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        for i in 0..200_000 {
            let x = -(i as f64) * 3.7e-3;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!(
                (got - want).abs() <= 4.0 * f64::EPSILON * want + 1e-300,
                "{x}: {got:e} vs {want:e}"
            );
        }
        assert!(exp_nonpositive(f64::NAN).is_nan());
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f64::NEG_INFINITY) < 1e-307);
    }

    /// The straightforward f64 log-softmax with libm's `exp`, in order.
    fn reference(row: &[f32], target: u32) -> (f64, bool) {
        let mut argmax = 0usize;
        let mut max = f32::NEG_INFINITY;
        for (i, &x) in row.iter().enumerate() {
            if x > max {
                max = x;
                argmax = i;
            }
        }
        let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
        (
            f64::from(row[target as usize] - max) - sum.ln(),
            argmax == target as usize,
        )
    }

    #[test]
    fn logprob_matches_the_libm_reference() {
        // Rows of assorted lengths (not multiples of 8), spreads and ties at the maximum.
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for &(len, spread) in &[
            (1, 1.0),
            (7, 5.0),
            (33, 30.0),
            (32_000, 12.0),
            (49_157, 80.0),
        ] {
            let mut row: Vec<f32> = (0..len).map(|_| next() * spread).collect();
            if len > 10 {
                let m = max_skipping_nan(&row);
                row[3] = m; // a tie: the first index is the argmax
            }
            for target in [0, (len / 2) as u32, (len - 1) as u32, 3.min(len as u32 - 1)] {
                let (got, greedy) = logprob_and_greedy(&row, target);
                let (want, want_greedy) = reference(&row, target);
                assert!(
                    (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                    "len {len} target {target}: {got} vs {want}"
                );
                assert_eq!(greedy, want_greedy, "len {len} target {target}");
            }
        }
    }

    #[test]
    fn nan_and_infinite_logits_behave_as_before() {
        let row = [1.0, f32::NAN, 3.0, 2.0];
        assert!(logprob_and_greedy(&row, 2).0.is_nan());
        assert!(!logprob_and_greedy(&row, 1).1);
        let row = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        let (lp, greedy) = logprob_and_greedy(&row, 1);
        assert_eq!((lp, greedy), (0.0, true));
        assert_eq!(logprob_and_greedy(&row, 0).0, f64::NEG_INFINITY);
        assert_eq!(argmax(&[1.0, 5.0, 5.0, 2.0]), 1);
    }
}
