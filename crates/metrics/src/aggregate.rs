//! Aggregation of per-document scores as lm-evaluation-harness does it
//! (`lm_eval/api/metrics.py`, lm_eval 0.4.9.1; the same code as the 0.3-era `lm_eval/metrics.py`):
//!
//! ```python
//! def mean(arr): return sum(arr) / len(arr)
//! def sample_stddev(arr):
//!     mu = mean(arr)
//!     return math.sqrt(sum([(x - mu) ** 2 for x in arr]) / (len(arr) - 1))
//! def mean_stderr(arr): return sample_stddev(arr) / math.sqrt(len(arr))
//! ```
//!
//! Sums are plain left-to-right float additions, as Python ≤ 3.11's `sum` (3.12 switched to a
//! compensated sum), and `(x - mu) ** 2` calls libm `pow` like CPython does (which differs from
//! `x * x` in the last bit now and then). Where Python raises `ZeroDivisionError` (empty input,
//! or one element for the standard error) these return NaN; where a squared deviation overflows
//! (|x − mean| > ~1.3e154) Python raises `OverflowError` and these return infinity.

/// Python's `sum(xs)` over floats (CPython ≤ 3.11): naive left-to-right.
fn py_sum(xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut s = 0.0;
    for x in xs {
        s += x;
    }
    s
}

/// lm-eval `mean`: `sum(arr) / len(arr)`; NaN for an empty slice.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    py_sum(xs.iter().copied()) / xs.len() as f64
}

/// lm-eval `sample_stddev`: standard deviation with the n − 1 denominator; NaN for n < 2.
pub fn sample_stddev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return f64::NAN;
    }
    let mu = mean(xs);
    // CPython's float `**` calls libm pow(); keep the exponent opaque so that LLVM does not
    // rewrite pow(d, 2.0) into d * d, which rounds differently in rare cases.
    let two = std::hint::black_box(2.0f64);
    let ss = py_sum(xs.iter().map(|&x| (x - mu).powf(two)));
    (ss / (xs.len() - 1) as f64).sqrt()
}

/// lm-eval `mean_stderr`: `sample_stddev(xs) / sqrt(n)`; NaN for n < 2.
pub fn mean_stderr(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return f64::NAN;
    }
    sample_stddev(xs) / (xs.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases() {
        assert!(mean(&[]).is_nan());
        assert_eq!(mean(&[2.0]), 2.0);
        assert_eq!(mean(&[1.0, 2.0, 4.0]), 7.0 / 3.0);
        assert!(mean_stderr(&[]).is_nan());
        assert!(mean_stderr(&[1.0]).is_nan());
        // lm_eval.api.metrics.mean_stderr([1.0, 2.0, 4.0])
        assert_eq!(mean_stderr(&[1.0, 2.0, 4.0]), 0.8819171036881969);
        assert_eq!(mean_stderr(&[0.0, 1.0]), 0.5);
        assert_eq!(mean_stderr(&[3.0, 3.0, 3.0]), 0.0);
    }
}
