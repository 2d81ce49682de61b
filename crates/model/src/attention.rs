//! Fused causal attention for inference on CPU (f32): `softmax(q·kᵀ·scale + causal) · v`
//! without materialising the `[b, heads, t, T]` score matrix, computing only the unmasked
//! scores, with GQA heads reading their shared K/V in place.
//!
//! Why: candle's composed path (matmul → mask add → softmax → matmul) spends most of a
//! scoring pass on memory traffic and `exp` of masked entries; PyTorch's SDPA avoids both.
//! Forward-only (no gradient): training uses the differentiable composed ops.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

/// `q: [b, heads, t, d]`, `k, v: [b, kv_heads, T, d]` (contiguous f32) → `[b, t, heads, d]`.
/// Query row `i` sits at position `offset + i` and sees keys `0..=offset + i`.
pub struct CausalAttention {
    pub scale: f32,
    pub offset: usize,
}

/// Dot products of `q` with four keys at once: four independent 8-lane FMA chains, so the
/// loop vectorises and the chains overlap (a single short dot is latency-bound).
#[inline(always)]
fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let (cq, rq) = q.as_chunks::<8>();
    let ck = k.map(|k| k.as_chunks::<8>().0);
    for (c, x) in cq.iter().enumerate() {
        for r in 0..4 {
            let y = &ck[r][c];
            for l in 0..8 {
                acc[r][l] += x[l] * y[l];
            }
        }
    }
    let tail = q.len() - rq.len();
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = acc[r].iter().sum::<f32>()
            + rq.iter()
                .zip(&k[r][tail..])
                .map(|(a, b)| a * b)
                .sum::<f32>();
    }
    out
}

/// `out = scale · Σ_j p[j] · row(j)`, eight output lanes at a time held in registers, with four
/// independent FMA chains over the rows (accumulating in memory would serialise every row on a
/// store-to-load round trip).
#[inline(always)]
fn weighted_rows<'a>(p: &[f32], row: impl Fn(usize) -> &'a [f32], scale: f32, out: &mut [f32]) {
    let d = out.len();
    let lanes = d / 8 * 8;
    for c in (0..lanes).step_by(8) {
        let mut acc = [[0f32; 8]; 4];
        let mut j = 0;
        while j + 4 <= p.len() {
            for r in 0..4 {
                let v = &row(j + r)[c..c + 8];
                for l in 0..8 {
                    acc[r][l] += p[j + r] * v[l];
                }
            }
            j += 4;
        }
        while j < p.len() {
            let v = &row(j)[c..c + 8];
            for l in 0..8 {
                acc[0][l] += p[j] * v[l];
            }
            j += 1;
        }
        for l in 0..8 {
            out[c + l] = (acc[0][l] + acc[1][l] + acc[2][l] + acc[3][l]) * scale;
        }
    }
    for (c, o) in out.iter_mut().enumerate().skip(lanes) {
        *o = p
            .iter()
            .enumerate()
            .map(|(j, &pj)| pj * row(j)[c])
            .sum::<f32>()
            * scale;
    }
}

/// Sum with 8 independent accumulators (vectorises).
#[inline(always)]
fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (c, r) = xs.as_chunks::<8>();
    for x in c {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + r.iter().sum::<f32>()
}

/// `exp` for `x <= 0` (softmax after max subtraction), branch-free and free of float→int
/// casts so that it vectorises: Cephes `expf` range reduction and polynomial (within 2 ulp of
/// libm). `round(x·log2 e)` comes from the 1.5·2²³ magic-number trick, and `2^n` from the same
/// bits.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
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

/// Maximum with 8 independent lanes (vectorises; inputs are finite scores).
#[inline(always)]
fn max8(xs: &[f32]) -> f32 {
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

/// The f32 data of a contiguous tensor.
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("causal-attention: {what} must be contiguous"),
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = contiguous(sq, lq, "q")?;
        let k = contiguous(sk, lk, "k")?;
        let v = contiguous(sv, lv, "v")?;
        let (b, h, t, d) = lq.shape().dims4()?;
        let (bk, kvh, total, dk) = lk.shape().dims4()?;
        if bk != b || dk != d || lv.shape() != lk.shape() || h % kvh != 0 || total < self.offset + t
        {
            candle_core::bail!(
                "causal-attention: shapes q {:?} k {:?} v {:?} offset {}",
                lq.shape(),
                lk.shape(),
                lv.shape(),
                self.offset
            );
        }
        let n_rep = h / kvh;
        let mut out = vec![0f32; b * t * h * d];
        // One task per (batch, query position): all heads of that position, one output row.
        out.par_chunks_mut(h * d).enumerate().for_each(|(row, o)| {
            let (bi, i) = (row / t, row % t);
            let visible = self.offset + i + 1;
            let mut scores = vec![0f32; visible];
            for hi in 0..h {
                let kv = hi / n_rep;
                let qrow = &q[((bi * h + hi) * t + i) * d..][..d];
                let kbase = (bi * kvh + kv) * total * d;
                let key = |j: usize| &k[kbase + j * d..kbase + (j + 1) * d];
                let mut j = 0;
                while j + 4 <= visible {
                    let s4 = dot4(qrow, [key(j), key(j + 1), key(j + 2), key(j + 3)]);
                    scores[j..j + 4].copy_from_slice(&s4);
                    j += 4;
                }
                while j < visible {
                    scores[j] = dot4(qrow, [key(j); 4])[0];
                    j += 1;
                }
                let max = max8(&scores) * self.scale;
                for s in scores.iter_mut() {
                    *s = exp_nonpositive(*s * self.scale - max);
                }
                let sum = sum8(&scores);
                let inv = 1.0 / sum;
                weighted_rows(
                    &scores,
                    |j| &v[kbase + j * d..kbase + (j + 1) * d],
                    inv,
                    &mut o[hi * d..(hi + 1) * d],
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t, h, d))))
    }
}

/// RoPE (rotate-half, as transformers' LLaMA) fused with the `[b, t, h, d] -> [b, h, t, d]`
/// transpose: inputs are the projection `[b, t, h, d]` and the cos/sin tables
/// `[max_positions, d/2]`; row `i` is rotated for position `offset + i`.
pub struct RopeToHeads {
    pub offset: usize,
}

impl CustomOp3 for RopeToHeads {
    fn name(&self) -> &'static str {
        "rope-to-heads"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sc: &CpuStorage,
        lc: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(sx, lx, "x")?;
        let cos = contiguous(sc, lc, "cos")?;
        let sin = contiguous(ss, ls, "sin")?;
        let (b, t, h, d) = lx.shape().dims4()?;
        let (positions, half) = lc.shape().dims2()?;
        if 2 * half != d || ls.shape() != lc.shape() || self.offset + t > positions {
            candle_core::bail!(
                "rope-to-heads: x {:?}, tables {:?}, offset {}",
                lx.shape(),
                lc.shape(),
                self.offset
            );
        }
        let mut out = vec![0f32; b * h * t * d];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            for i in 0..t {
                let src = &x[((bi * t + i) * h + hi) * d..][..d];
                let pos = (self.offset + i) * half;
                let (c, s) = (&cos[pos..pos + half], &sin[pos..pos + half]);
                let (x1, x2) = src.split_at(half);
                let (o1, o2) = o[i * d..(i + 1) * d].split_at_mut(half);
                for j in 0..half {
                    o1[j] = x1[j] * c[j] - x2[j] * s[j];
                    o2[j] = x2[j] * c[j] + x1[j] * s[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_to_heads_matches_candle_rope() -> candle_core::Result<()> {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let (b, t, h, d, offset) = (2, 5, 3, 16, 4);
        let x = Tensor::randn(0f32, 1.0, (b, t, h, d), &dev)?;
        let cos = Tensor::randn(0f32, 1.0, (12, d / 2), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (12, d / 2), &dev)?;
        let fused = x.apply_op3_no_bwd(&cos, &sin, &RopeToHeads { offset })?;
        let want = candle_nn::rotary_emb::rope_slow(
            &x.transpose(1, 2)?.contiguous()?,
            &cos.narrow(0, offset, t)?,
            &sin.narrow(0, offset, t)?,
        )?;
        let diff = (fused - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "max diff {diff}");
        Ok(())
    }

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

    #[test]
    fn matches_composed_softmax_attention() -> candle_core::Result<()> {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let (b, h, kvh, t, d, offset) = (2, 4, 2, 5, 24, 3);
        let q = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, kvh, offset + t, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, kvh, offset + t, d), &dev)?;
        let scale = 1.0 / (d as f32).sqrt();
        let fused = q.apply_op3_no_bwd(&k, &v, &CausalAttention { scale, offset })?;
        // Reference: repeat K/V per query head, dense scores, mask, softmax.
        let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
            let (b, kvh, n, d) = x.dims4()?;
            x.unsqueeze(2)?
                .expand((b, kvh, h / kvh, n, d))?
                .reshape((b, h, n, d))
        };
        let att = (q.matmul(&rep(&k)?.t()?)? * scale as f64)?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..offset + t).map(move |j| {
                    if j > offset + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let att = att.broadcast_add(&Tensor::from_vec(mask, (t, offset + t), &dev)?)?;
        let want = candle_nn::ops::softmax_last_dim(&att)?
            .matmul(&rep(&v)?)?
            .transpose(1, 2)?;
        let diff = (fused - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }
}
