//! Backward of the tiled causal attention, for training: `dQ`, `dK`, `dV` from the forward's
//! output `O`, its gradient `dO` and each query row's log-sum-exp (saved by the forward), by
//! FlashAttention-2's recurrence. Per block of [`KEY_BLOCK`] keys and block of [`QUERY_BLOCK`]
//! query rows that sees it: rebuild `P = exp(scale·QKᵀ − lse)` (0 where masked), then
//! `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`, `dQ += scale·dS·K`, `dV += Pᵀ·dO`,
//! `dK += scale·dSᵀ·Q`.
//!
//! Why: the composed backward (matmul, causal softmax, matmul, each with its backward) keeps the
//! `[b, heads, t, t]` probabilities from the forward and writes three more matrices of that size
//! per layer in the backward; at 1×1024 tokens they are most of a small model's activations and
//! memory traffic, and half of each is the masked triangle. Here no score matrix exists beyond a
//! `32 × 64` block in cache, and masked blocks are never computed.
//!
//! One task per (sequence, KV head): it owns every gradient row it writes (the query heads that
//! share the KV head, and that head's keys and values), so tasks need no atomics and no
//! reduction, and the result has the same bits on any number of threads.
//!
//! Arithmetic as the forward: inputs widened to f32, f32 products and sums, one rounding of each
//! gradient to the input dtype at the end (autocast's rounding of the bf16 attention's gradients).

use rayon::prelude::*;

use super::{available, Dims, Elem, KEY_BLOCK, QUERY_BLOCK};

/// What the backward reads: the forward's inputs `q: [b, h, t, d]`, `k, v: [b, kvh, t, d]`, its
/// output `o: [b, t, h, d]` and that output's gradient `d_o` (same layout), and `lse: [b, h, t]`.
pub(crate) struct Saved<'a, T> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub o: &'a [T],
    pub d_o: &'a [T],
    pub lse: &'a [f32],
}

/// Gradients of causal self-attention (keys = the `t` query positions, no cached prefix) with
/// respect to `q`, `k` and `v`, in their layouts. Checks the slice lengths; the caller checks
/// that [`available`] holds.
#[allow(clippy::type_complexity)]
pub(crate) fn attention_backward<T: Elem>(
    saved: &Saved<'_, T>,
    n: Dims,
    scale: f32,
) -> Result<(Vec<T>, Vec<T>, Vec<T>), String> {
    let Dims { b, h, t, d, kvh } = n;
    let q_len = b * h * t * d;
    let kv_len = b * kvh * t * d;
    let ok = kvh > 0
        && d > 0
        && h % kvh == 0
        && saved.q.len() == q_len
        && saved.k.len() == kv_len
        && saved.v.len() == kv_len
        && saved.o.len() == q_len
        && saved.d_o.len() == q_len
        && saved.lse.len() == b * h * t;
    if !ok {
        return Err(format!(
            "flash attention backward: q {}, k {}, v {}, o {}, dO {}, lse {} values for {n:?}",
            saved.q.len(),
            saved.k.len(),
            saved.v.len(),
            saved.o.len(),
            saved.d_o.len(),
            saved.lse.len()
        ));
    }
    if !available() {
        return Err("flash attention: not available on this CPU".into());
    }
    let zero = T::from_f32(0.0);
    let (mut dq, mut dk, mut dv) = (vec![zero; q_len], vec![zero; kv_len], vec![zero; kv_len]);
    if q_len == 0 {
        return Ok((dq, dk, dv));
    }
    let n_rep = h / kvh;
    dq.par_chunks_mut(n_rep * t * d)
        .zip(dk.par_chunks_mut(t * d))
        .zip(dv.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(task, ((dq, dk), dv))| {
            let (bi, g) = (task / kvh, task % kvh);
            // SAFETY: AVX-512F was checked by `available`; the task reads the slices whose
            // lengths were checked above and writes only its own chunks.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                task_avx512(saved, n, scale, (bi, g), (dq, dk, dv))
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (bi, g, dq, dk, dv, scale);
        });
    Ok((dq, dk, dv))
}

/// The gradients of sequence `bi`'s KV head `g`: `dq` of its `n_rep` query heads
/// (`[n_rep, t, d]`), `dk` and `dv` (`[t, d]`).
///
/// # Safety
/// The CPU must have AVX-512F; the slices have the lengths `attention_backward` checked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn task_avx512<T: Elem>(
    s: &Saved<'_, T>,
    n: Dims,
    scale: f32,
    (bi, g): (usize, usize),
    (dq, dk, dv): (&mut [T], &mut [T], &mut [T]),
) {
    use super::avx512::{pv4, scores4};
    let Dims { h, t, d, kvh, .. } = n;
    let n_rep = h / kvh;
    let dp = d.next_multiple_of(16);
    // Query-side rows, head-major: query head g·n_rep + r at position i is row r·t4 + i (rows
    // past t are zero padding, so that every block has a multiple of 4 rows).
    let t4 = t.next_multiple_of(4);
    let rows = n_rep * t4;
    let (mut qf, mut dof, mut dqf) = (
        vec![0f32; rows * dp],
        vec![0f32; rows * dp],
        vec![0f32; rows * dp],
    );
    let (mut lse, mut delta) = (vec![0f32; rows], vec![0f32; rows]);
    for r in 0..n_rep {
        let head = g * n_rep + r;
        for i in 0..t {
            let (qa, oa, row) = (
                ((bi * h + head) * t + i) * d,
                ((bi * t + i) * h + head) * d,
                r * t4 + i,
            );
            let mut dot = 0f32;
            for c in 0..d {
                qf[row * dp + c] = s.q[qa + c].to_f32();
                let go = s.d_o[oa + c].to_f32();
                dof[row * dp + c] = go;
                dot += go * s.o[oa + c].to_f32();
            }
            delta[row] = dot;
            lse[row] = s.lse[(bi * h + head) * t + i];
        }
    }
    // Keys as rows (for `dS·K`) and, per block, keys and values transposed as the forward packs
    // them (`kt[c·64 + j]`, for the block products `Q·Kᵀ` and `dO·Vᵀ`).
    let blocks = t.div_ceil(KEY_BLOCK);
    let t64 = blocks * KEY_BLOCK;
    let (mut kf, mut kt, mut vt) = (
        vec![0f32; t64 * dp],
        vec![0f32; t64 * dp],
        vec![0f32; t64 * dp],
    );
    for j in 0..t {
        let at = ((bi * kvh + g) * t + j) * d;
        let packed = (j / KEY_BLOCK) * KEY_BLOCK * dp + j % KEY_BLOCK;
        for c in 0..d {
            let x = s.k[at + c].to_f32();
            kf[j * dp + c] = x;
            kt[packed + c * KEY_BLOCK] = x;
            vt[packed + c * KEY_BLOCK] = s.v[at + c].to_f32();
        }
    }
    let (mut dkf, mut dvf) = (vec![0f32; t64 * dp], vec![0f32; t64 * dp]);
    // One block pair's probabilities and scaled score gradients, row-major and transposed.
    let block = QUERY_BLOCK * KEY_BLOCK;
    let (mut p, mut ds) = (vec![0f32; block], vec![0f32; block]);
    let (mut pt, mut dst) = (vec![0f32; block], vec![0f32; block]);
    for blk in 0..blocks {
        let j0 = blk * KEY_BLOCK;
        let nk = (t - j0).min(KEY_BLOCK);
        let nk4 = nk.next_multiple_of(4);
        let kt_b = kt.as_ptr().add(j0 * dp);
        let vt_b = vt.as_ptr().add(j0 * dp);
        let k_rows = kf.as_ptr().add(j0 * dp);
        let dk_b = dkf.as_mut_ptr().add(j0 * dp);
        let dv_b = dvf.as_mut_ptr().add(j0 * dp);
        for r in 0..n_rep {
            // Query blocks before j0 see none of these keys (QUERY_BLOCK divides KEY_BLOCK).
            for qb in j0 / QUERY_BLOCK..t.div_ceil(QUERY_BLOCK) {
                let p0 = qb * QUERY_BLOCK;
                let nq = (t - p0).min(QUERY_BLOCK);
                let nq4 = nq.next_multiple_of(4);
                let row0 = r * t4 + p0;
                for x in (0..nq4).step_by(4) {
                    scores4(
                        qf.as_ptr().add((row0 + x) * dp),
                        dp,
                        d,
                        kt_b,
                        p.as_mut_ptr().add(x * KEY_BLOCK),
                    );
                    scores4(
                        dof.as_ptr().add((row0 + x) * dp),
                        dp,
                        d,
                        vt_b,
                        ds.as_mut_ptr().add(x * KEY_BLOCK),
                    );
                }
                for x in 0..nq4 {
                    let valid = if x < nq {
                        (p0 + x + 1).saturating_sub(j0).min(nk)
                    } else {
                        0
                    };
                    let at = x * KEY_BLOCK;
                    probabilities_and_score_grads(
                        p.as_mut_ptr().add(at),
                        ds.as_mut_ptr().add(at),
                        valid,
                        scale,
                        lse[row0 + x],
                        delta[row0 + x],
                    );
                }
                for x in (0..nq4).step_by(4) {
                    let dq_rows = dqf.as_mut_ptr().add((row0 + x) * dp);
                    pv4(
                        ds.as_ptr().add(x * KEY_BLOCK),
                        KEY_BLOCK,
                        k_rows,
                        dp,
                        nk,
                        dq_rows,
                    );
                }
                for x in 0..nq4 {
                    for j in 0..nk4 {
                        pt[j * nq4 + x] = p[x * KEY_BLOCK + j];
                        dst[j * nq4 + x] = ds[x * KEY_BLOCK + j];
                    }
                }
                let (do_rows, q_rows) = (dof.as_ptr().add(row0 * dp), qf.as_ptr().add(row0 * dp));
                for j in (0..nk4).step_by(4) {
                    pv4(
                        pt.as_ptr().add(j * nq4),
                        nq4,
                        do_rows,
                        dp,
                        nq4,
                        dv_b.add(j * dp),
                    );
                    pv4(
                        dst.as_ptr().add(j * nq4),
                        nq4,
                        q_rows,
                        dp,
                        nq4,
                        dk_b.add(j * dp),
                    );
                }
            }
        }
    }
    for r in 0..n_rep {
        for i in 0..t {
            let (src, dst) = (
                &dqf[(r * t4 + i) * dp..][..d],
                &mut dq[(r * t + i) * d..][..d],
            );
            for (o, x) in dst.iter_mut().zip(src) {
                *o = T::from_f32(*x);
            }
        }
    }
    for j in 0..t {
        for c in 0..d {
            dk[j * d + c] = T::from_f32(dkf[j * dp + c]);
            dv[j * d + c] = T::from_f32(dvf[j * dp + c]);
        }
    }
}

/// One row of a block pair, in place: raw scores `p` become `P = exp(scale·s − lse)` and `dP`
/// (in `ds`) becomes `scale·P ⊙ (dP − delta)`; keys at `valid` and beyond are masked (0).
///
/// # Safety
/// AVX-512F; `p` and `ds` valid for [`KEY_BLOCK`] values.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn probabilities_and_score_grads(
    p: *mut f32,
    ds: *mut f32,
    valid: usize,
    scale: f32,
    lse: f32,
    delta: f32,
) {
    use super::avx512::{exp_nonpositive, lanes};
    use std::arch::x86_64::*;
    let (sv, lv, dv) = (
        _mm512_set1_ps(scale),
        _mm512_set1_ps(lse),
        _mm512_set1_ps(delta),
    );
    for v in 0..KEY_BLOCK / 16 {
        let m = lanes(valid, v);
        // scale·s ≤ max ≤ lse up to rounding: clamp to the exp's domain.
        let x = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p.add(v * 16)), sv), lv);
        let pr = _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_min_ps(x, _mm512_setzero_ps())));
        let g = _mm512_mul_ps(
            _mm512_mul_ps(pr, _mm512_sub_ps(_mm512_loadu_ps(ds.add(v * 16)), dv)),
            sv,
        );
        _mm512_storeu_ps(p.add(v * 16), pr);
        _mm512_storeu_ps(ds.add(v * 16), g);
    }
}
