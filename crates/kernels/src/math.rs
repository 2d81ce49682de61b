//! Scalar helpers several kernels share (leaf module: it uses no other module of the crate).

/// `1/sqrt(mean(x²) + eps)` of one row.
pub(crate) fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// `exp` for `x <= 0` (softmax after max subtraction), branch-free and free of float→int
/// casts so that it vectorises: Cephes `expf` range reduction and polynomial (within 2 ulp of
/// libm). `round(x·log2 e)` comes from the 1.5·2²³ magic-number trick, and `2^n` from the same
/// bits.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.max(-87.0);
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    // The low mantissa bits of `shifted` hold n (two's complement): 2^n = (n + 127) << 23.
    let two_n = f32::from_bits(
        (shifted
            .to_bits()
            .wrapping_sub(MAGIC.to_bits())
            .wrapping_add(127))
            << 23,
    );
    p * two_n
}

/// σ(x) from exp(−|x|): never overflows, vectorises (unlike libm's exp), a few f32 ulp from
/// `1 / (1 + exp(−x))`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Sum with 8 independent accumulators (vectorises).
#[inline(always)]
pub(crate) fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (c, r) = xs.as_chunks::<8>();
    for x in c {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + r.iter().sum::<f32>()
}

/// Maximum with 8 independent lanes (vectorises; a NaN input is skipped, so inputs should be finite).
#[inline(always)]
pub(crate) fn max8(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let (c, r) = xs.as_chunks::<8>();
    for x in c {
        for l in 0..8 {
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    let m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    r.iter().fold(m, |m, &x| if x > m { x } else { m })
}

#[cfg(test)]
mod tests {
    use super::exp_nonpositive;

    /// The vectorisable `exp` of the fused attention is within a few ulp of libm's.
    #[test]
    fn fast_exp_is_within_a_few_ulp() {
        for i in 0..100_000 {
            let x = -(i as f32) * 8.7e-4;
            let (a, b) = (exp_nonpositive(x), x.exp());
            assert!(
                (a - b).abs() <= 3e-7 * b.max(1e-30) + 1e-37,
                "{x}: {a} vs {b}"
            );
        }
    }
}
