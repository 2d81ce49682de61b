//! The tests of `shared/spec/report-statistics.md`, each equal to its scipy/statsmodels/numpy
//! reference (checked by `scripts/reference/make_report_fixtures.py` and `tests/golden.rs`).
//!
//! Written by hand because they are a few lines each and no small, well-kept Rust crate gives
//! numpy's exact bootstrap index stream or statsmodels' Holm; the random stream itself is
//! sightline-random's numpy-equal `RandomState`.

use sightline_random::RandomState;

/// McNemar's exact test: `b` = #(baseline right, other wrong), `c` = #(baseline wrong, other
/// right). Two-sided, `min(1, 2·P[X ≤ min(b, c)])` for `X ~ Binomial(b + c, ½)` — equal to
/// `statsmodels...mcnemar(table, exact=True)` and `scipy.stats.binomtest(min(b,c), b+c)`. The
/// binomial sum runs in log space because `b + c` can be in the thousands.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    let ln2 = std::f64::consts::LN_2;
    // log C(n, i) - n·ln 2, built up term by term.
    let mut log_term = -(n as f64) * ln2;
    let mut terms = Vec::with_capacity(k as usize + 1);
    terms.push(log_term);
    for i in 0..k {
        log_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        terms.push(log_term);
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    (2.0 * (max + sum.ln()).exp()).min(1.0)
}

/// The result of a paired bootstrap of `mean(y − x)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// `mean(y − x)` over all documents.
    pub delta: f64,
    /// Two-sided `min(1, 2·min(#{d_k ≤ 0}, #{d_k ≥ 0}) / B)`.
    pub p_value: f64,
    /// 2.5% and 97.5% quantiles of the resampled deltas (numpy's linear interpolation).
    pub ci: (f64, f64),
}

/// Paired bootstrap (Koehn 2004) over documents: resample `k` takes the `n` indices of row `k` of
/// numpy's `RandomState(seed).randint(0, n, size=(B, n))` and computes `stat` on them. `stat`
/// gets the resampled indices and returns the delta; for means of per-document values use
/// [`paired_bootstrap`].
pub fn bootstrap_with(
    n: usize,
    b: usize,
    seed: u32,
    full: f64,
    mut stat: impl FnMut(&[usize]) -> f64,
) -> Bootstrap {
    let mut rng = RandomState::from_u32(seed);
    let mut idx = vec![0usize; n];
    let mut deltas = Vec::with_capacity(b);
    for _ in 0..b {
        for slot in idx.iter_mut() {
            *slot = rng.randint(0, n as i64) as usize;
        }
        deltas.push(stat(&idx));
    }
    let le = deltas.iter().filter(|&&d| d <= 0.0).count();
    let ge = deltas.iter().filter(|&&d| d >= 0.0).count();
    let p_value = (2.0 * le.min(ge) as f64 / b as f64).min(1.0);
    // A resample where the statistic is undefined (NaN) counts on neither side, and makes the
    // interval NaN, as numpy's comparisons and quantile do.
    let ci = if deltas.iter().any(|d| d.is_nan()) {
        (f64::NAN, f64::NAN)
    } else {
        deltas.sort_by(f64::total_cmp);
        (quantile(&deltas, 0.025), quantile(&deltas, 0.975))
    };
    Bootstrap {
        delta: full,
        p_value,
        ci,
    }
}

/// Precision, recall or F1 of yes/no answers (`(answered yes, label yes)` per document, taken
/// at `idx`), by sightline-metrics' POPE scorer (SBT's `get_pope_results`); NaN where undefined.
pub fn yes_no_metric(docs: &[(bool, bool)], idx: &[usize], metric: &str) -> f64 {
    let word = |b: bool| if b { "yes" } else { "no" };
    let preds: Vec<&str> = idx.iter().map(|&i| word(docs[i].0)).collect();
    let labels: Vec<bool> = idx.iter().map(|&i| docs[i].1).collect();
    match sightline_metrics::pope::score(&preds, &labels) {
        Ok(s) => match metric {
            "precision" => s.precision,
            "recall" => s.recall,
            "f1" => s.f1,
            "acc" => s.accuracy,
            _ => f64::NAN,
        },
        Err(_) => f64::NAN,
    }
}

/// Paired bootstrap of `mean(y − x)` for per-document values `x` (baseline) and `y`.
pub fn paired_bootstrap(x: &[f64], y: &[f64], b: usize, seed: u32) -> Bootstrap {
    let diff: Vec<f64> = y.iter().zip(x).map(|(a, b)| a - b).collect();
    let n = diff.len();
    let full = diff.iter().sum::<f64>() / n as f64;
    bootstrap_with(n, b, seed, full, |idx| {
        idx.iter().map(|&i| diff[i]).sum::<f64>() / n as f64
    })
}

/// numpy's `quantile(sorted, q)` with the default "linear" method, including its `_lerp`
/// (which interpolates from the upper point when the fraction is ≥ ½).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = h - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// Unpaired two-sample z-test of two reported values with their stderrs:
/// `z = (v2 − v1) / sqrt(se1² + se2²)`, two-sided normal p. `None` when both stderrs are 0 and
/// the values differ (no test is possible); p = 1 when the values are equal.
pub fn z_test(v1: f64, se1: f64, v2: f64, se2: f64) -> Option<f64> {
    let d = v2 - v1;
    let s = (se1 * se1 + se2 * se2).sqrt();
    if d == 0.0 {
        return Some(1.0);
    }
    if s.is_nan() || s <= 0.0 || !d.is_finite() {
        return None;
    }
    Some(normal_two_sided(d / s))
}

/// `2·P[Z > |z|]` = `erfc(|z|/√2)`, accurate in the far tail (scipy's `2·norm.sf(|z|)`).
pub fn normal_two_sided(z: f64) -> f64 {
    libm::erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

/// Holm's step-down adjustment, as `statsmodels.stats.multitest.multipletests(p,
/// method="holm")[1]`: sort ascending, multiply the i-th smallest by `m − i`, take the running
/// maximum, clip at 1, and put back in the input order.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(p[i] * (m - rank) as f64);
        out[i] = running.min(1.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_small_cases_match_binomial_sums() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b=1, c=5: 2·(1 + 6)/64.
        assert!((mcnemar_exact(1, 5) - 14.0 / 64.0).abs() < 1e-15);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // Large n stays finite (log space).
        let p = mcnemar_exact(1000, 1200);
        assert!(p > 0.0 && p < 1e-3, "{p}");
    }

    #[test]
    fn identical_runs_give_p_one_and_zero_delta() {
        let x = [0.2, 0.5, 0.9, 0.1];
        let bs = paired_bootstrap(&x, &x, 100, 1234);
        assert_eq!(bs.delta, 0.0);
        assert_eq!(bs.p_value, 1.0);
        assert_eq!(bs.ci, (0.0, 0.0));
    }

    #[test]
    fn holm_matches_hand_computation() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.5]);
        for (a, e) in adj.iter().zip([0.04, 0.09, 0.09, 0.5]) {
            assert!((a - e).abs() < 1e-12, "{adj:?}");
        }
    }

    #[test]
    fn z_test_edge_cases() {
        assert_eq!(z_test(0.5, 0.0, 0.5, 0.0), Some(1.0));
        assert_eq!(z_test(0.5, 0.0, 0.6, 0.0), None);
        let p = z_test(0.5, 0.01, 0.5196, 0.01).unwrap();
        assert!((p - 0.1658).abs() < 1e-3, "{p}");
    }
}
