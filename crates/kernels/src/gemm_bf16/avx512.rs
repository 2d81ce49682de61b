//! The AVX512-BF16 micro-kernel: `VDPBF16PS` dot products of bf16 rows with f32 accumulation.
//!
//! Both operands are read in their stored row-major layout (`x: [n, k]`, `w: [m, k]`, the HF
//! layout of a linear weight): one 512-bit load takes 32 consecutive bf16 of one row, and
//! `VDPBF16PS` multiplies them pairwise with 32 of another row, adding pairs into 16 f32 lanes.
//! So an output `y[i][j] = x[i]·w[j]` is 16 lane sums reduced at the end of the row, and no
//! weight is ever re-packed or copied: the loaded checkpoint is what the kernel reads.
//!
//! The order of every addition is fixed (see [`super::reference`]), so results are the same
//! bits whatever the tile shape, the blocking or the thread count.

use std::arch::x86_64::*;
use std::ops::Range;

use half::bf16;

use super::GemmOut;

/// Most accumulators of a tile: 4 × 6 = 24 zmm registers, plus 6 weight loads and 1 x load.
const TILE: usize = 24;

/// Rows `r` × columns `c` of `y = x · wᵀ` (`x: [_, k]`, `w: [m, k]`, `y: [_, m]`): tiles of
/// 4 rows × 6 columns, then 2×8 and 1×16 for the last rows (a lone row — decoding — would
/// waste three quarters of a 4-row tile). A partial tile repeats its last row or column and
/// stores only the real ones.
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW and AVX512-BF16; `x` and `w` must hold the rows named,
/// `y` must point at `[_, m]` values that cover rows `r` and columns `c`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn block<O: GemmOut>(
    x: &[bf16],
    w: &[bf16],
    k: usize,
    m: usize,
    r: Range<usize>,
    c: Range<usize>,
    y: *mut O,
) {
    let mut i = r.start;
    while i < r.end {
        let left = r.end - i;
        let mr = if left >= 4 {
            4
        } else if left >= 2 {
            2
        } else {
            1
        };
        let mut j = c.start;
        while j < c.end {
            let (nr, sums) = match mr {
                4 => (
                    6,
                    tile::<4, 6>(rows_at(x, k, i, r.end), rows_at(w, k, j, c.end), k),
                ),
                2 => (
                    8,
                    tile::<2, 8>(rows_at(x, k, i, r.end), rows_at(w, k, j, c.end), k),
                ),
                _ => (
                    16,
                    tile::<1, 16>(rows_at(x, k, i, r.end), rows_at(w, k, j, c.end), k),
                ),
            };
            let mask: __mmask16 = (1u32 << nr.min(c.end - j)).wrapping_sub(1) as __mmask16;
            for a in 0..mr.min(r.end - i) {
                let row = _mm512_maskz_loadu_ps(mask, sums.as_ptr().add(a * nr));
                store_sums(y.add((i + a) * m + j), mask, row);
            }
            j += nr;
        }
        i += mr;
    }
}

/// Writes the `mask`ed lanes of 16 output sums at `out`: rounded to bf16 (VCVTNEPS2BF16:
/// nearest-even, denormal results flushed to zero) or as f32.
///
/// # Safety
/// As [`block`]; `out` must be valid for the masked lanes' writes of `O`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn store_sums<O: GemmOut>(out: *mut O, mask: __mmask16, sums: __m512) {
    if O::BF16 {
        let packed: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(sums));
        _mm256_mask_storeu_epi16(out as *mut i16, mask, packed);
    } else {
        _mm512_mask_storeu_ps(out as *mut f32, mask, sums);
    }
}

/// Pointers to rows `from..from + N` of a `[_, k]` matrix, repeating the last row before `end`.
#[inline(always)]
fn rows_at<const N: usize>(t: &[bf16], k: usize, from: usize, end: usize) -> [*const u16; N] {
    std::array::from_fn(|a| {
        let row = (from + a).min(end - 1);
        t[row * k..].as_ptr() as *const u16
    })
}

/// `y[i][j] = x_rows[i] · w_rows[j]` over `k` bf16 values for an `MR × NR` tile
/// (`MR·NR ≤ 24`, a multiple of 4), returned row-major in the first `MR·NR` values.
///
/// # Safety
/// As [`block`]; every pointer must be valid for `k` reads of `u16`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const MR: usize, const NR: usize>(
    x_rows: [*const u16; MR],
    w_rows: [*const u16; NR],
    k: usize,
) -> [f32; TILE] {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut kk = 0;
    while kk + 32 <= k {
        let mut wv = [_mm512_setzero_si512(); NR];
        for j in 0..NR {
            wv[j] = _mm512_loadu_si512(w_rows[j].add(kk) as *const __m512i);
        }
        for i in 0..MR {
            let xv = as_bh(_mm512_loadu_si512(x_rows[i].add(kk) as *const __m512i));
            for j in 0..NR {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, as_bh(wv[j]));
            }
        }
        kk += 32;
    }
    if kk < k {
        // The tail: masked loads read only the `k - kk` valid values and zero the rest.
        let mask: __mmask32 = (1u32 << (k - kk)).wrapping_sub(1);
        let mut wv = [_mm512_setzero_si512(); NR];
        for j in 0..NR {
            wv[j] = _mm512_maskz_loadu_epi16(mask, w_rows[j].add(kk) as *const i16);
        }
        for i in 0..MR {
            let xv = as_bh(_mm512_maskz_loadu_epi16(
                mask,
                x_rows[i].add(kk) as *const i16,
            ));
            for j in 0..NR {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, as_bh(wv[j]));
            }
        }
    }
    let mut flat = [_mm512_setzero_ps(); TILE];
    for i in 0..MR {
        for j in 0..NR {
            flat[i * NR + j] = acc[i][j];
        }
    }
    reduce(&flat, MR * NR)
}

#[inline(always)]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The lane sums of the first `n` vectors (`n` a multiple of 4), as `reference::reduce_lanes`
/// orders them: lanes `l` and `l + 8` first, then `((y0 + y1) + (y2 + y3)) + ((y4 + y5) + (y6 +
/// y7))`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn reduce(v: &[__m512; TILE], n: usize) -> [f32; TILE] {
    let mut folded = [_mm256_setzero_ps(); TILE];
    for (f, a) in folded.iter_mut().zip(v).take(n) {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)));
        *f = _mm256_add_ps(_mm512_castps512_ps256(*a), hi);
    }
    let mut out = [0f32; TILE];
    for g in 0..n / 4 {
        let f = &folded[g * 4..g * 4 + 4];
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
        let h01 = _mm256_hadd_ps(f[0], f[1]);
        let h23 = _mm256_hadd_ps(f[2], f[3]);
        // [(a0+a1)+(a2+a3), (b..), (c..), (d..) | (a4+a5)+(a6+a7), ...]
        let h = _mm256_hadd_ps(h01, h23);
        let sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        _mm_storeu_ps(out.as_mut_ptr().add(g * 4), sums);
    }
    out
}

/// Rows `r` of `y = x · wᵀ` for a short inner dimension (`k ≤` [`super::SMALL_K`]: LoRA's
/// products through the rank), from `w` packed by [`super::pack_pairs`]: each output lane
/// accumulates the pairs of `k` in order, the broadcast pair of `x` against 16 columns' pairs,
/// so no lane sums are reduced at the end (the dot-product tile above spends most of a short
/// row on that reduction). Tiles of 4 rows (then single rows) × 64 columns.
///
/// # Safety
/// As [`block`]; `wp` holds `k.div_ceil(2)` groups of `mp` pairs (`mp` a multiple of 16, ≥ m),
/// and `y` covers rows `r` of `[_, m]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn block_small_k<O: GemmOut>(
    x: &[bf16],
    wp: &[u32],
    mp: usize,
    k: usize,
    m: usize,
    r: Range<usize>,
    y: *mut O,
) {
    let mut i = r.start;
    while i < r.end {
        if r.end - i >= 4 {
            pairs_tile::<4, O>(x, wp, mp, k, m, i, y);
            i += 4;
        } else {
            pairs_tile::<1, O>(x, wp, mp, k, m, i, y);
            i += 1;
        }
    }
}

/// Rows `i..i + MR` of [`block_small_k`], every column.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pairs_tile<const MR: usize, O: GemmOut>(
    x: &[bf16],
    wp: &[u32],
    mp: usize,
    k: usize,
    m: usize,
    i: usize,
    y: *mut O,
) {
    let kp = k.div_ceil(2);
    let x_row = |a: usize| &x[(i + a) * k..(i + a + 1) * k];
    let mut j0 = 0;
    while j0 < m {
        let nv = (m - j0).div_ceil(16).min(4);
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        for p in 0..kp {
            let base = wp.as_ptr().add(p * mp + j0);
            let wv: [__m512i; 4] = std::array::from_fn(|v| {
                if v < nv {
                    _mm512_loadu_si512(base.add(v * 16) as *const __m512i)
                } else {
                    _mm512_setzero_si512()
                }
            });
            for (a, acc) in acc.iter_mut().enumerate() {
                // The pair of x, encoded as the packed weights are.
                let xb = as_bh(_mm512_set1_epi32(super::pair_word(x_row(a), p) as i32));
                for v in 0..nv {
                    acc[v] = _mm512_dpbf16_ps(acc[v], xb, as_bh(wv[v]));
                }
            }
        }
        for (a, acc) in acc.iter().enumerate() {
            for (v, row) in acc.iter().enumerate().take(nv) {
                let j = j0 + v * 16;
                let mask: __mmask16 = (1u32 << (m - j).min(16)).wrapping_sub(1) as __mmask16;
                store_sums(y.add((i + a) * m + j), mask, *row);
            }
        }
        j0 += 64;
    }
}
