//! The inverse DCT, as libjpeg-turbo's `jpeg_idct_islow` computes it (the `JDCT_ISLOW` default
//! Pillow leaves on), to the last rounding.

use std::num::Wrapping;

/// libjpeg's `jpeg_idct_islow`: dequantise, then the LL&M 1-D IDCT on columns (results kept
/// with `PASS1_BITS` extra bits) and on rows, with `CONST_BITS`-bit fixed-point constants and
/// round-half-up descaling; the result is level-shifted by 128 and clamped to 0..=255 (as
/// libjpeg-turbo's SIMD versions do; the C version wraps values more than 384 out of range,
/// which valid files do not produce). Writes 8 rows of 8 samples, `stride` apart.
///
/// Kept whole: it is libjpeg's `jidctint.c` transcribed line for line (constants, column pass,
/// row pass), and comparing it against that file is how its exactness is checked.
pub(super) fn idct_islow(coef: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    const CONST_BITS: u32 = 13;
    const PASS1_BITS: u32 = 2;
    type W = Wrapping<i32>;
    // FIX(x) = round(x · 2^13).
    const F0_298: W = Wrapping(2446);
    const F0_390: W = Wrapping(3196);
    const F0_541: W = Wrapping(4433);
    const F0_765: W = Wrapping(6270);
    const F0_899: W = Wrapping(7373);
    const F1_175: W = Wrapping(9633);
    const F1_501: W = Wrapping(12299);
    const F1_847: W = Wrapping(15137);
    const F1_961: W = Wrapping(16069);
    const F2_053: W = Wrapping(16819);
    const F2_562: W = Wrapping(20995);
    const F3_072: W = Wrapping(25172);

    /// One 1-D pass on `x[0..8]`; returns the 8 outputs before descaling, and the rounding is
    /// left to the caller.
    #[inline(always)]
    fn idct1d(x: [W; 8]) -> [W; 8] {
        // Even part.
        let z1 = (x[2] + x[6]) * F0_541;
        let tmp2 = z1 - x[6] * F1_847;
        let tmp3 = z1 + x[2] * F0_765;
        let tmp0 = (x[0] + x[4]) << CONST_BITS as usize;
        let tmp1 = (x[0] - x[4]) << CONST_BITS as usize;
        let (t10, t13) = (tmp0 + tmp3, tmp0 - tmp3);
        let (t11, t12) = (tmp1 + tmp2, tmp1 - tmp2);
        // Odd part.
        let (o0, o1, o2, o3) = (x[7], x[5], x[3], x[1]);
        let (z1, z2, z3, z4) = (o0 + o3, o1 + o2, o0 + o2, o1 + o3);
        let z5 = (z3 + z4) * F1_175;
        let (o0, o1, o2, o3) = (o0 * F0_298, o1 * F2_053, o2 * F3_072, o3 * F1_501);
        let (z1, z2) = (-(z1 * F0_899), -(z2 * F2_562));
        let z3 = z5 - z3 * F1_961;
        let z4 = z5 - z4 * F0_390;
        let (o0, o1, o2, o3) = (o0 + z1 + z3, o1 + z2 + z4, o2 + z2 + z3, o3 + z1 + z4);
        [
            t10 + o3,
            t11 + o2,
            t12 + o1,
            t13 + o0,
            t13 - o0,
            t12 - o1,
            t11 - o2,
            t10 - o3,
        ]
    }

    // Descaling of pass 2 (with the 3 bits of the 8-point DCT's scale); the result is
    // level-shifted and clamped.
    const SHIFT: u32 = CONST_BITS + PASS1_BITS + 3;
    let sample = |v: W| {
        ((v + Wrapping(1 << (SHIFT - 1))) >> SHIFT as usize)
            .0
            .saturating_add(128)
            .clamp(0, 255) as u8
    };

    if coef[1..].iter().all(|&c| c == 0) {
        // DC only (common): both passes reduce to the DC term, the same arithmetic as below.
        let dc = Wrapping(i32::from(coef[0])) * Wrapping(i32::from(quant[0] as i16));
        let v = sample((dc << PASS1_BITS as usize) << CONST_BITS as usize);
        for r in 0..8 {
            out[r * stride..r * stride + 8].fill(v);
        }
        return;
    }

    let mut ws = [Wrapping(0i32); 64];
    // Pass 1: columns.
    for c in 0..8 {
        let x: [W; 8] = std::array::from_fn(|r| {
            // libjpeg keeps the multipliers as 16-bit signed values.
            Wrapping(i32::from(coef[r * 8 + c])) * Wrapping(i32::from(quant[r * 8 + c] as i16))
        });
        if (1..8).all(|r| coef[r * 8 + c] == 0) {
            // Same result as the full pass (nothing to round), as in libjpeg.
            let dc = x[0] << PASS1_BITS as usize;
            for r in 0..8 {
                ws[r * 8 + c] = dc;
            }
            continue;
        }
        let y = idct1d(x);
        const SHIFT1: u32 = CONST_BITS - PASS1_BITS;
        for r in 0..8 {
            ws[r * 8 + c] = (y[r] + Wrapping(1 << (SHIFT1 - 1))) >> SHIFT1 as usize;
        }
    }
    // Pass 2: rows.
    for r in 0..8 {
        let x: [W; 8] = ws[r * 8..r * 8 + 8].try_into().expect("8");
        let y = idct1d(x);
        for (o, v) in out[r * stride..r * stride + 8].iter_mut().zip(y) {
            *o = sample(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idct_of_a_flat_block() {
        let q = [1u16; 64];
        let mut out = [0u8; 64];
        for (dc, want) in [
            (80, 138),
            (-84, 118),
            (4, 129),
            (3, 128),
            (2000, 255),
            (-2000, 0),
        ] {
            let mut coef = [0i16; 64];
            coef[0] = dc;
            idct_islow(&coef, &q, &mut out, 8);
            assert!(out.iter().all(|&v| v == want), "dc {dc}: {out:?}");
        }
    }
}
