//! One task of the tiled attention on AVX-512F: widen the task's query rows once, then per block
//! of [`KEY_BLOCK`] keys (packed once per call, see `Packed`): scores of 4 rows × 64 keys in 16
//! registers, the online-softmax update of each row, and `o += p·v` for 4 rows at a time.

use std::arch::x86_64::*;

use super::{Dims, Elem, Job, KEY_BLOCK};

/// Runs `job`, writing its rows of `out: [b, t, h, d]` and, where `lse` is not null, each row's
/// log-sum-exp of its scaled scores to `lse: [b, h, t]` (what the backward needs to rebuild the
/// probabilities).
///
/// # Safety
/// The CPU must have AVX-512F; `out` (and `lse` unless null) must be valid for the rows of `job`
/// (see `attention`).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn run<T: Elem>(job: &Job<T>, out: *mut T, lse: *mut f32) {
    let Dims { h, t, d, .. } = job.n;
    let dp = d.next_multiple_of(16);
    let rows: Vec<(usize, usize, usize)> = job.rows().collect();
    let nr = rows.len();
    if nr == 0 {
        return;
    }
    // Rows are padded to a multiple of 4 with copies of the last row's visibility (their
    // results are dropped) and zero queries.
    let nr4 = nr.next_multiple_of(4);
    let mut qf = vec![0f32; nr4 * dp];
    for (r, &(_, _, at)) in rows.iter().enumerate() {
        for (o, x) in qf[r * dp..r * dp + d].iter_mut().zip(&job.q[at..at + d]) {
            *o = x.to_f32();
        }
    }
    // Keys of the new segment each row sees (padding rows: the last row's).
    let visible: Vec<usize> = (0..nr4)
        .map(|r| job.visible_new(rows[r.min(nr - 1)].1))
        .collect();
    let seen = visible.iter().copied().max().unwrap_or(0);

    let mut o = vec![0f32; nr4 * dp];
    let mut max = vec![f32::NEG_INFINITY; nr4];
    let mut sum = vec![0f32; nr4];
    let mut s = vec![0f32; nr4 * KEY_BLOCK];
    let segments = job
        .prefix
        .into_iter()
        .map(|p| (p, false))
        .chain([(job.new, true)]);
    for (seg, causal) in segments {
        for blk in 0..seg.blocks {
            let start = blk * KEY_BLOCK;
            if causal && start >= seen {
                break;
            }
            let (kt, vb, nk) = seg.block(job.bi, job.g, blk);
            for r0 in (0..nr4).step_by(4) {
                let q4 = qf.as_ptr().add(r0 * dp);
                scores4(q4, dp, d, kt.as_ptr(), s.as_mut_ptr().add(r0 * KEY_BLOCK));
            }
            for r in 0..nr4 {
                let valid = if causal {
                    visible[r].saturating_sub(start).min(nk)
                } else {
                    nk
                };
                let row = &mut s[r * KEY_BLOCK..(r + 1) * KEY_BLOCK];
                let corr = softmax_step(row, valid, job.scale, &mut max[r], &mut sum[r]);
                if corr != 1.0 {
                    for x in &mut o[r * dp..(r + 1) * dp] {
                        *x *= corr;
                    }
                }
            }
            for r0 in (0..nr4).step_by(4) {
                let o4 = o.as_mut_ptr().add(r0 * dp);
                pv4(
                    s.as_ptr().add(r0 * KEY_BLOCK),
                    KEY_BLOCK,
                    vb.as_ptr(),
                    dp,
                    nk,
                    o4,
                );
            }
        }
    }
    for (r, &(head, i, _)) in rows.iter().enumerate() {
        let inv = 1.0 / sum[r];
        let dst = out.add(((job.bi * t + i) * h + head) * d);
        for c in 0..d {
            *dst.add(c) = T::from_f32(o[r * dp + c] * inv);
        }
        if !lse.is_null() {
            *lse.add((job.bi * h + head) * t + i) = max[r] + sum[r].ln();
        }
    }
}

/// Online-softmax update of one row of raw scores (`valid` of them visible, the rest masked):
/// `row` becomes `exp(scale·s − m)` (0 where masked) for the new running maximum `m`; returns
/// the factor `exp(m_old − m)` the row's output and sum were rescaled by (`sum` is updated).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_step(
    row: &mut [f32],
    valid: usize,
    scale: f32,
    max: &mut f32,
    sum: &mut f32,
) -> f32 {
    if valid == 0 {
        row.fill(0.0);
        return 1.0;
    }
    let p = row.as_mut_ptr();
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    for v in 0..KEY_BLOCK / 16 {
        let m = lanes(valid, v);
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_loadu_ps(p.add(v * 16)));
    }
    // scale > 0, so max(scale·s) = scale·max(s).
    let new_max = max.max(_mm512_reduce_max_ps(mx) * scale);
    let corr = if *max == new_max {
        1.0
    } else {
        crate::math::exp_nonpositive(*max - new_max)
    };
    let (sv, mv) = (_mm512_set1_ps(scale), _mm512_set1_ps(new_max));
    let mut acc = _mm512_setzero_ps();
    for v in 0..KEY_BLOCK / 16 {
        let m = lanes(valid, v);
        let x = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p.add(v * 16)), sv), mv);
        let e = _mm512_maskz_mov_ps(m, exp_nonpositive(x));
        _mm512_storeu_ps(p.add(v * 16), e);
        acc = _mm512_add_ps(acc, e);
    }
    *sum = *sum * corr + _mm512_reduce_add_ps(acc);
    *max = new_max;
    corr
}

/// Mask of the lanes of vector `v` (keys `16v..16v + 16`) below `valid`.
#[inline(always)]
pub(super) fn lanes(valid: usize, v: usize) -> __mmask16 {
    let n = valid.saturating_sub(v * 16).min(16);
    ((1u32 << n) - 1) as __mmask16
}

/// `s[r][j] = q[r] · kt[·][j]` for 4 query rows (stride `dp`, `d` values) and 64 keys.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scores4(q: *const f32, dp: usize, d: usize, kt: *const f32, s: *mut f32) {
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    for c in 0..d {
        let k: [__m512; 4] =
            std::array::from_fn(|x| _mm512_loadu_ps(kt.add(c * KEY_BLOCK + x * 16)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let qb = _mm512_set1_ps(*q.add(r * dp + c));
            for x in 0..4 {
                acc[x] = _mm512_fmadd_ps(qb, k[x], acc[x]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (x, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(s.add(r * KEY_BLOCK + x * 16), *a);
        }
    }
}

/// `o[r] += Σ_j p[r][j] · v[j]` for 4 rows (`p` stride `ps`, `v` and `o` stride `dp`), `nk`
/// terms. The forward's `p·v`; the backward's `dS·K`, `Pᵀ·dO` and `dSᵀ·Q`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pv4(
    p: *const f32,
    ps: usize,
    v: *const f32,
    dp: usize,
    nk: usize,
    o: *mut f32,
) {
    let mut c0 = 0;
    while c0 < dp {
        match (dp - c0) / 16 {
            1 => pv_chunk::<1>(p, ps, v, dp, nk, o, c0),
            2 => pv_chunk::<2>(p, ps, v, dp, nk, o, c0),
            3 => pv_chunk::<3>(p, ps, v, dp, nk, o, c0),
            _ => pv_chunk::<4>(p, ps, v, dp, nk, o, c0),
        }
        c0 += 64;
    }
}

/// [`pv4`] on columns `c0..c0 + 16·NV`, the accumulators held in registers over the keys.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pv_chunk<const NV: usize>(
    p: *const f32,
    ps: usize,
    v: *const f32,
    dp: usize,
    nk: usize,
    o: *mut f32,
    c0: usize,
) {
    let mut acc: [[__m512; NV]; 4] = std::array::from_fn(|r| {
        std::array::from_fn(|x| _mm512_loadu_ps(o.add(r * dp + c0 + x * 16)))
    });
    for j in 0..nk {
        let vv: [__m512; NV] =
            std::array::from_fn(|x| _mm512_loadu_ps(v.add(j * dp + c0 + x * 16)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let pb = _mm512_set1_ps(*p.add(r * ps + j));
            for x in 0..NV {
                acc[x] = _mm512_fmadd_ps(pb, vv[x], acc[x]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (x, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.add(r * dp + c0 + x * 16), *a);
        }
    }
}

/// [`crate::math::exp_nonpositive`] on 16 lanes, operation for operation (the same bits).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_nonpositive(x: __m512) -> __m512 {
    let c = _mm512_set1_ps;
    let magic = c(12_582_912.0);
    let x = _mm512_max_ps(x, c(-87.0));
    let shifted = _mm512_add_ps(_mm512_mul_ps(x, c(std::f32::consts::LOG2_E)), magic);
    let n = _mm512_sub_ps(shifted, magic);
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, c(0.693_359_4))),
        _mm512_mul_ps(n, c(-2.121_944_4e-4)),
    );
    let mut p = c(1.987_569_1e-4);
    for k in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), c(k));
    }
    let p = _mm512_add_ps(
        _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
        c(1.0),
    );
    let bits = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(magic));
    let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        bits,
        _mm512_set1_epi32(127),
    )));
    _mm512_mul_ps(p, two_n)
}
