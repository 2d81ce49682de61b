//! The scalar statement of what the bf16 GEMM computes, addition by addition: the oracle of
//! its tests (equal bits, not a tolerance) and the specification of its rounding.
//!
//! `VDPBF16PS` (Intel SDM; AMD Zen 4 implements the same) adds, per f32 lane, the product of
//! the odd bf16 pair element and then that of the even one, each product exact in f32 (two
//! 8-bit significands) and each addition rounded to nearest-even, with bf16 denormal inputs read
//! as zero and denormal results flushed to zero. Lane `l` of a 32-value chunk takes elements
//! `2l` and `2l + 1`; the 16 lanes of a row are then reduced in a fixed tree. There, rows of at
//! most [`super::SMALL_K`] values run the pair-broadcast kernel instead, whose one lane per output
//! adds the pairs in order (odd element, then even, for each pair).
//!
//!
//! On a CPU with AMX ([`super::Bf16Gemm::Amx`]) every product of at least
//! [`super::AMX_MIN_ROWS`] rows, short rows included, runs `TDPBF16PS`, which
//! the SDM leaves loosely specified. Measured here (Xeon with AMX, 32,000 outputs per probe,
//! every one equal): per 32-value chunk of a row, the 16 even elements' products are added in
//! order into one f32 and the 16 odd elements' into another, both from zero; the two are
//! added, and that sum is added to the running one — each addition rounded to nearest-even.
//! Adding all 32 products in order, pair by pair (as `VDPBF16PS` does per lane), or exactly
//! and rounded once, each matched only 45–95% of the outputs.

use half::bf16;

/// `y[i][j] = Σ_k x[i][k]·w[j][k]` for `x: [n, k]`, `w: [m, k]` → `[n, m]` in f32, summed as
/// the kernel [`super::Bf16Gemm::detect`] picked on this CPU sums.
pub fn matmul_nt_bf16_reference(x: &[bf16], w: &[bf16], n: usize, k: usize, m: usize) -> Vec<f32> {
    matmul_nt_bf16_reference_for(super::Bf16Gemm::detect(), x, w, n, k, m)
}

/// [`matmul_nt_bf16_reference`] for the order of `kernel` (`Amx` from
/// [`super::AMX_MIN_ROWS`] rows on: the tiles' order; otherwise the AVX512-BF16 kernel's).
pub fn matmul_nt_bf16_reference_for(
    kernel: super::Bf16Gemm,
    x: &[bf16],
    w: &[bf16],
    n: usize,
    k: usize,
    m: usize,
) -> Vec<f32> {
    let amx = kernel == super::Bf16Gemm::Amx && n >= super::AMX_MIN_ROWS;
    let mut y = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
            y[i * m + j] = if amx {
                dot_tiles(xr, wr)
            } else if k <= super::SMALL_K {
                dot_in_order(xr, wr)
            } else {
                dot(xr, wr)
            };
        }
    }
    y
}

fn dot(x: &[bf16], w: &[bf16]) -> f32 {
    let mut lanes = [0f32; 16];
    for (c, (xc, wc)) in x.chunks(32).zip(w.chunks(32)).enumerate() {
        let _ = c;
        for (l, lane) in lanes.iter_mut().enumerate() {
            let at = |e: usize| -> f32 {
                match (xc.get(e), wc.get(e)) {
                    (Some(a), Some(b)) => daz(*a) * daz(*b),
                    _ => 0.0,
                }
            };
            *lane = ftz(*lane + at(2 * l + 1));
            *lane = ftz(*lane + at(2 * l));
        }
    }
    reduce_lanes(&lanes)
}

/// One output as `TDPBF16PS` sums it (see the module docs): per chunk of 32, evens and odds
/// apart, then together, then onto the running sum. The kernel's zero padding past the row's
/// end is added too (it can turn a -0 into +0).
fn dot_tiles(x: &[bf16], w: &[bf16]) -> f32 {
    let mut acc = 0f32;
    for (xc, wc) in x.chunks(32).zip(w.chunks(32)) {
        let (mut even, mut odd) = (0f32, 0f32);
        for e in 0..32 {
            let p = match (xc.get(e), wc.get(e)) {
                (Some(a), Some(b)) => daz(*a) * daz(*b),
                _ => 0.0,
            };
            if e % 2 == 0 {
                even = ftz(even + p);
            } else {
                odd = ftz(odd + p);
            }
        }
        acc = ftz(acc + ftz(even + odd));
    }
    acc
}

/// One lane over every pair of the row, in order (the pair-broadcast kernel).
fn dot_in_order(x: &[bf16], w: &[bf16]) -> f32 {
    let mut acc = 0f32;
    for (xp, wp) in x.chunks(2).zip(w.chunks(2)) {
        if let (Some(a), Some(b)) = (xp.get(1), wp.get(1)) {
            acc = ftz(acc + daz(*a) * daz(*b));
        } else {
            // The odd row's padding: + 0·0 (an f32 -0 sum becomes +0, as in the kernel).
            acc = ftz(acc + 0.0);
        }
        acc = ftz(acc + daz(xp[0]) * daz(wp[0]));
    }
    acc
}

/// The kernel's reduction tree of the 16 lanes of one output.
pub(crate) fn reduce_lanes(l: &[f32; 16]) -> f32 {
    let y: [f32; 8] = std::array::from_fn(|i| l[i] + l[i + 8]);
    ((y[0] + y[1]) + (y[2] + y[3])) + ((y[4] + y[5]) + (y[6] + y[7]))
}

fn daz(v: bf16) -> f32 {
    ftz(v.to_f32())
}

fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}
