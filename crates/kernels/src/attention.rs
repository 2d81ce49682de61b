//! Causal self-attention `softmax(q·kᵀ·scale + causal) · v` for the LLaMA decoder.
//!
//! The entry points pick among: the tiled, flash-style kernel of `flash/` (forward for scoring,
//! prefill after a cached prefix and decoding; with its tiled backward for training, where the
//! forward keeps one log-sum-exp per query row instead of the `[b, heads, t, t]`
//! probabilities); a forward-only fused kernel for small heads (CPU f32, no AVX-512F); and a
//! causal softmax with a backward between candle's matmuls where neither applies. Why: candle's
//! composed path (matmul → mask add → softmax → matmul) spends most of a pass on memory traffic
//! and `exp` of masked entries, keeps the whole score matrix for its backward, and its fused
//! softmax has no backward (spec `candle-autograd.md`).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, D,
};
use half::bf16;
use rayon::prelude::*;

use crate::cpu::{
    bf16_forward, rows_per_task, slice, slice_of, tracks, with_f32, CResult, ForwardState, Path,
};
use crate::flash::{self, Dims, Elem, Segment};
use crate::math::{exp_nonpositive, max8, sum8};

/// `q: [b, heads, t, d]`, `k, v: [b, kv_heads, T, d]` (contiguous f32) → `[b, t, heads, d]`.
/// Query row `i` sits at position `offset + i` and sees keys `0..=offset + i`.
struct CausalAttention {
    scale: f32,
    offset: usize,
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

/// The f32 data of a contiguous tensor.
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
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
    ) -> CResult<(CpuStorage, Shape)> {
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

/// Row softmax of attention scores `[.., rows, t]` under the causal mask: row `r` is position
/// `r % t` (query heads sharing a KV head are folded into the rows) and sees keys `0..=r % t`;
/// the masked entries are exactly 0, as `exp(-inf)` gives in the composed mask + softmax. The
/// backward needs only the output `p`: `ds = p ⊙ (dp − Σ_j dp_j p_j)`.
struct CausalSoftmax;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let t = l.shape().dims().last().copied().unwrap_or(0);
        let x = slice(s, l)?;
        if t == 0 {
            return Ok((CpuStorage::F32(vec![]), l.shape().clone()));
        }
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len() / t) * t;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .enumerate()
            .for_each(|(c, (y, x))| {
                let first_row = c * chunk / t;
                for (k, (y, x)) in y.chunks_exact_mut(t).zip(x.chunks_exact(t)).enumerate() {
                    let seen = (first_row + k) % t + 1;
                    let (x, y) = (&x[..seen], &mut y[..seen]);
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = (x - max).exp();
                        sum += *y;
                    }
                    for y in y.iter_mut() {
                        *y /= sum;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, p: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let t = p.dim(D::Minus1)?;
        let mut ds = vec![0f32; p.elem_count()];
        let chunk = rows_per_task(ds.len() / t.max(1)) * t;
        with_f32(p, |p| {
            with_f32(grad, |g| {
                ds.par_chunks_mut(chunk)
                    .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
                    .enumerate()
                    .for_each(|(c, (ds, (p, g)))| {
                        let first_row = c * chunk / t;
                        for (k, ((ds, p), g)) in ds
                            .chunks_exact_mut(t)
                            .zip(p.chunks_exact(t))
                            .zip(g.chunks_exact(t))
                            .enumerate()
                        {
                            let seen = (first_row + k) % t + 1;
                            let dot: f32 =
                                p[..seen].iter().zip(&g[..seen]).map(|(a, b)| a * b).sum();
                            for j in 0..seen {
                                ds[j] = p[j] * (g[j] - dot);
                            }
                        }
                    });
                Ok(())
            })
        })?;
        Ok(Some(Tensor::from_vec(ds, p.shape(), p.device())?))
    }
}

/// Additive mask `[rows, total]`: row `r` is query position `offset + r % t`, which may see
/// keys `0..=offset + r % t`.
fn causal_mask(
    rows: usize,
    t: usize,
    offset: usize,
    total: usize,
    dtype: DType,
    dev: &Device,
) -> CResult<Tensor> {
    let mut m = vec![0f32; rows * total];
    for r in 0..rows {
        let i = offset + r % t;
        for v in &mut m[r * total + i + 1..(r + 1) * total] {
            *v = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (rows, total), dev)?.to_dtype(dtype)
}

/// `softmax(scores + causal mask)` over the last dimension of `[.., rows, t]`, row `r` seeing
/// keys `0..=r % t`. Fused on CPU f32 (forward only or with backward), else the composed
/// mask-add and softmax (candle's forward-only `softmax_last_dim` when nothing tracks).
/// bf16/f16 scores with gradients (mixed-precision training) go through f32 and back, as
/// transformers' attention does (`softmax(..., dtype=torch.float32).to(query.dtype)`).
pub fn causal_softmax(scores: &Tensor) -> CResult<Tensor> {
    match Path::of(&[scores]) {
        Path::Forward => scores.contiguous()?.apply_op1_no_bwd(&CausalSoftmax),
        Path::WithBackward => scores.contiguous()?.apply_op1(CausalSoftmax),
        Path::Candle if scores.track_op() && matches!(scores.dtype(), DType::BF16 | DType::F16) => {
            causal_softmax(&scores.to_dtype(DType::F32)?)?.to_dtype(scores.dtype())
        }
        Path::Candle => {
            let dims = scores.dims();
            let (rows, t) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let mask = causal_mask(rows, t, 0, t, scores.dtype(), scores.device())?;
            let masked = scores.broadcast_add(&mask)?;
            if scores.track_op() {
                candle_nn::ops::softmax(&masked, D::Minus1)
            } else {
                candle_nn::ops::softmax_last_dim(&masked)
            }
        }
    }
}

/// Largest head dimension for which the fused forward attention beats candle's gemm (measured:
/// head_dim 8, stories260K, 23 vs 35 ms per 280-token pass; at head_dim 64, 134M model, gemm
/// wins, ~1.15 vs ~1.25 s per 450-token pass).
pub const FUSED_ATTENTION_MAX_HEAD_DIM: usize = 32;

/// Causal attention of `q: [b, h, t, d]` (positions `offset..offset + t`) over
/// `k, v: [b, kvh, T, d]` (positions `0..T`) → `[b·t, h·d]` (o_proj's input rows).
///
/// Query heads sharing a KV head are folded into the row dimension, so GQA needs no copy of
/// K/V: `q: [b, kvh, n_rep·t, d]` against `k: [b, kvh, T, d]`. Paths:
/// - nothing tracks, CPU f32 or bf16 (bf16 where [`bf16_forward`] holds), `T = offset + t`,
///   AVX-512F: the tiled kernel of `flash/` (no score matrix);
/// - nothing tracks, CPU f32, `d ≤` [`FUSED_ATTENTION_MAX_HEAD_DIM`]: the fused kernel;
/// - nothing tracks otherwise: matmul, mask, candle's forward-only softmax, matmul;
/// - with gradients and no cached prefix, CPU f32 or bf16 (bf16 where the bf16 GEMM is on),
///   AVX-512F: the tiled kernel with its tiled backward (`flash/backward.rs`);
/// - with gradients and no cached prefix otherwise: matmul, [`causal_softmax`], matmul;
/// - with gradients after a cached prefix: matmul, mask, differentiable softmax, matmul.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    scale: f64,
) -> CResult<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, total, _) = k.dims4()?;
    if total == offset + t {
        if let Some(out) = flash_attention(q, None, k, v, scale)? {
            return Ok(out);
        }
    }
    if offset == 0 && total == t && flash_training_applies(&[q, k, v]) {
        let op = FlashTraining {
            scale: scale as f32,
            lse: ForwardState::new("flash-attention"),
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?
            .reshape((b * t, h * d));
    }
    if bf16_forward(&[q, k, v]) {
        // bf16 scoring: in f32 (PyTorch's bf16 attention rounds the scores and probabilities
        // to bf16 between its steps; computing them in f32 is at least as close to the f32
        // result), then one rounding of the output.
        let up = |t: &Tensor| t.to_dtype(DType::F32);
        return causal_attention(&up(q)?, &up(k)?, &up(v)?, offset, scale)?.to_dtype(DType::BF16);
    }
    if Path::of(&[q, k, v]) == Path::Forward && d <= FUSED_ATTENTION_MAX_HEAD_DIM {
        let op = CausalAttention {
            scale: scale as f32,
            offset,
        };
        // [b, t, h, d]: the kernel writes o_proj's input layout directly.
        return q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?
            .reshape((b * t, h * d));
    }
    let n_rep = h / kvh;
    let q = (q * scale)?.reshape((b, kvh, n_rep * t, d))?;
    let scores = q.matmul(&k.t()?)?; // [b, kvh, n_rep*t, total]
    let att = if offset == 0 && total == t {
        causal_softmax(&scores)?
    } else {
        // A single new row (generation) sees every cached key: no mask to add.
        let masked = if t > 1 {
            let mask = causal_mask(n_rep * t, t, offset, total, scores.dtype(), scores.device())?;
            scores.broadcast_add(&mask)?
        } else {
            scores
        };
        if tracks(&[&masked]) {
            candle_nn::ops::softmax(&masked, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&masked)?
        }
    };
    let ys = att.matmul(&v.contiguous()?)?; // [b, kvh, n_rep*t, d]
    ys.reshape((b, h, t, d))?
        .transpose(1, 2)?
        .reshape((b * t, h * d))
}

/// Causal attention of `q: [b, h, t, d]` (positions `P..P + t`) over a cached prefix that is
/// only read, `prefix: [1 or b, kvh, P, d]` keys and values, followed by this step's
/// `k, v: [b, kvh, t, d]` → `[b·t, h·d]`. A prefix of batch 1 serves every sequence: a batch of
/// continuations scored on one cached context. The tiled kernel reads the prefix in place;
/// other paths broadcast and concatenate it, then run [`causal_attention`].
pub fn causal_attention_after_prefix(
    q: &Tensor,
    prefix: (&Tensor, &Tensor),
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> CResult<Tensor> {
    if let Some(out) = flash_attention(q, Some(prefix), k, v, scale)? {
        return Ok(out);
    }
    let (pk, pv) = prefix;
    let (_, kvh, len, d) = pk.dims4()?;
    let shape = (q.dim(0)?, kvh, len, d);
    let k = Tensor::cat(&[&pk.broadcast_as(shape)?, k], 2)?.contiguous()?;
    let v = Tensor::cat(&[&pv.broadcast_as(shape)?, v], 2)?.contiguous()?;
    causal_attention(q, &k, &v, len, scale)
}

/// The tiled kernel when it applies (CPU, nothing tracks, all f32, or all bf16 with the bf16
/// kernels on, AVX-512F): `Some([b·t, h·d])`, else `None`.
fn flash_attention(
    q: &Tensor,
    prefix: Option<(&Tensor, &Tensor)>,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> CResult<Option<Tensor>> {
    let mut all = vec![q, k, v];
    all.extend(prefix.iter().flat_map(|(pk, pv)| [*pk, *pv]));
    let on_cpu = all.iter().all(|t| t.device().is_cpu());
    let dtype = q.dtype();
    let same = all.iter().all(|t| t.dtype() == dtype);
    let kind = dtype == DType::F32 || (dtype == DType::BF16 && bf16_forward(&all));
    if !flash::available() || !on_cpu || !same || !kind || tracks(&all) {
        return Ok(None);
    }
    let (b, h, t, d) = q.dims4()?;
    let (kb, kvh, len, kd) = k.dims4()?;
    let prefix_dims = prefix.map(|(pk, _)| pk.dims4()).transpose()?;
    let fits = |(pb, pkvh, _, pd): (usize, usize, usize, usize)| {
        (pb == 1 || pb == b) && pkvh == kvh && pd == d
    };
    let prefix_pairs = prefix.is_none_or(|(pk, pv)| pk.dims() == pv.dims());
    if kb != b || kd != d || v.dims() != k.dims() || !prefix_dims.is_none_or(fits) || !prefix_pairs
    {
        candle_core::bail!(
            "causal-attention: q {:?}, k {:?}, v {:?}, prefix {:?}",
            q.shape(),
            k.shape(),
            v.shape(),
            prefix.map(|(pk, pv)| (pk.shape().clone(), pv.shape().clone()))
        );
    }
    let all: Vec<Tensor> = all.iter().map(|t| t.contiguous()).collect::<CResult<_>>()?;
    let dims = Dims { b, h, t, d, kvh };
    let segments = (len, prefix_dims.map(|(pb, _, p, _)| (pb, p)));
    let out = match dtype {
        DType::F32 => run_flash::<f32>(&all, dims, segments, scale)?,
        _ => run_flash::<bf16>(&all, dims, segments, scale)?,
    };
    Ok(Some(out))
}

/// The contiguous values, as `T`, behind each of `storage_and_layout()`'s guards (an error
/// naming `op` for a tensor that is not on the CPU).
fn cpu_slices<'a, T: candle_core::WithDType, G: std::ops::Deref<Target = Storage>>(
    guards: &'a [(G, &Layout)],
    op: &str,
) -> CResult<Vec<&'a [T]>> {
    guards
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(c) => slice_of::<T>(c, l),
            _ => candle_core::bail!("{op}: tensor is not on the CPU"),
        })
        .collect()
}

/// [`flash::attention`] on contiguous CPU tensors `[q, k, v, (prefix k, prefix v)]` of element
/// type `T`; `segments` = (new keys, (prefix batch, prefix length)) → `[b·t, h·d]`.
fn run_flash<T: Elem + candle_core::WithDType>(
    tensors: &[Tensor],
    dims: Dims,
    (len, prefix): (usize, Option<(usize, usize)>),
    scale: f64,
) -> CResult<Tensor> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let data = cpu_slices::<T, _>(&guards, "causal-attention")?;
    let new = Segment {
        k: data[1],
        v: data[2],
        batch: dims.b,
        len,
    };
    let prefix = prefix.map(|(batch, len)| Segment {
        k: data[3],
        v: data[4],
        batch,
        len,
    });
    let mut out = vec![T::from_f32(0.0); data[0].len()];
    flash::attention(data[0], prefix, new, dims, scale as f32, &mut out, None)
        .map_err(candle_core::Error::Msg)?;
    let Dims { b, h, t, d, .. } = dims;
    Tensor::from_vec(out, (b * t, h * d), tensors[0].device())
}

/// Whether self-attention with gradients runs on the tiled kernel and its tiled backward: every
/// input on the CPU, one dtype, f32 or (with the bf16 GEMM on, as for bf16 scoring) bf16, some
/// input tracking a gradient, and AVX-512F.
fn flash_training_applies(inputs: &[&Tensor]) -> bool {
    let dtype = inputs[0].dtype();
    let kind = dtype == DType::F32
        || (dtype == DType::BF16 && crate::gemm_bf16::Bf16Gemm::detect().is_available());
    flash::available()
        && kind
        && tracks(inputs)
        && inputs
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == dtype)
}

/// Causal self-attention `q: [b, h, t, d]`, `k, v: [b, kvh, t, d]` → `[b, t, h, d]` on the tiled
/// kernel, with the tiled backward. The forward keeps each query row's log-sum-exp (`[b, h, t]`,
/// 4 bytes a row) for the backward, in place of the `[b, h, t, t]` probabilities the composed
/// path keeps; candle holds the op (and so that buffer) in the graph until the backward.
struct FlashTraining {
    scale: f32,
    lse: ForwardState<Vec<f32>>,
}

impl FlashTraining {
    fn dims(lq: &Layout, lk: &Layout, lv: &Layout) -> CResult<Dims> {
        let (b, h, t, d) = lq.shape().dims4()?;
        let (bk, kvh, tk, dk) = lk.shape().dims4()?;
        if bk != b || tk != t || dk != d || lv.shape() != lk.shape() || kvh == 0 || h % kvh != 0 {
            candle_core::bail!(
                "flash-attention: shapes q {:?} k {:?} v {:?}",
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        Ok(Dims { b, h, t, d, kvh })
    }

    fn forward<T: Elem + candle_core::WithDType>(
        &self,
        (sq, lq): (&CpuStorage, &Layout),
        (sk, lk): (&CpuStorage, &Layout),
        (sv, lv): (&CpuStorage, &Layout),
        n: Dims,
    ) -> CResult<Vec<T>> {
        let (q, k, v) = (
            slice_of::<T>(sq, lq)?,
            slice_of::<T>(sk, lk)?,
            slice_of::<T>(sv, lv)?,
        );
        let mut out = vec![T::from_f32(0.0); q.len()];
        let mut lse = vec![0f32; n.b * n.h * n.t];
        let keys = Segment {
            k,
            v,
            batch: n.b,
            len: n.t,
        };
        flash::attention(q, None, keys, n, self.scale, &mut out, Some(&mut lse))
            .map_err(candle_core::Error::Msg)?;
        self.lse.set(lse)?;
        Ok(out)
    }

    fn backward<T: Elem + candle_core::WithDType>(
        &self,
        tensors: [&Tensor; 5],
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dtype = tensors[0].dtype();
        let [q, k, v, o, d_o] = tensors.map(|t| t.contiguous());
        // (A gradient arriving in another dtype is cast to the inputs'.)
        let (q, k, v, o, d_o) = (q?, k?, v?, o?, d_o?.to_dtype(dtype)?);
        let n = Self::dims(q.layout(), k.layout(), v.layout())?;
        let guards = [&q, &k, &v, &o, &d_o].map(|t| t.storage_and_layout());
        let data = cpu_slices::<T, _>(&guards, "flash-attention")?;
        let lse = self.lse.get()?;
        let saved = flash::backward::Saved {
            q: data[0],
            k: data[1],
            v: data[2],
            o: data[3],
            d_o: data[4],
            lse: &lse,
        };
        let (dq, dk, dv) = flash::backward::attention_backward(&saved, n, self.scale)
            .map_err(candle_core::Error::Msg)?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

impl CustomOp3 for FlashTraining {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let n = Self::dims(lq, lk, lv)?;
        let args = ((sq, lq), (sk, lk), (sv, lv));
        let out = match (sq, sk, sv) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(self.forward::<f32>(args.0, args.1, args.2, n)?)
            }
            (CpuStorage::BF16(_), CpuStorage::BF16(_), CpuStorage::BF16(_)) => {
                CpuStorage::BF16(self.forward::<bf16>(args.0, args.1, args.2, n)?)
            }
            _ => candle_core::bail!("flash-attention: q, k and v must all be f32 or all bf16"),
        };
        Ok((out, Shape::from((n.b, n.t, n.h, n.d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match q.dtype() {
            DType::F32 => self.backward::<f32>([q, k, v, res, grad]),
            DType::BF16 => self.backward::<bf16>([q, k, v, res, grad]),
            dt => candle_core::bail!("flash-attention: no backward for {dt:?}"),
        }
    }
}
