//! Tiled causal attention, flash-style, for forward passes on the CPU (scoring, prefill after a
//! cached prefix, decoding), f32 or bf16 in and out, any head dimension.
//!
//! Why: the composed path (`q·kᵀ` matmul → mask → softmax → `p·v` matmul) writes the whole
//! `[b, heads, t, T]` score matrix to memory and reads it back three times, computes the masked
//! half of it, and in bf16 first widens q, k and v to f32 copies. Here each task takes a block of
//! query rows of one KV head (the query heads sharing it under GQA fold into the rows), sweeps the
//! keys it may see in blocks of [`KEY_BLOCK`], and keeps a running maximum and sum per row
//! (online softmax), so scores live only in a `rows × 64` buffer in L1 and masked blocks are never
//! computed. The keys may come in two segments — a cached prefix, shared by every sequence of the
//! batch when it has batch 1, and the keys of the tokens being run — so a batch of continuations
//! attends to one cached context without copying it per sequence.
//!
//! Arithmetic: every value is widened to f32 (bf16 products are exact in f32), scores, the
//! softmax and `p·v` are f32, and the output is rounded once to the input dtype: what the
//! composed f32 path computes, in another summation order. `exp` is the vectorisable
//! [`exp_nonpositive`](crate::math) (within 2 ulp of libm).
//!
//! Runs on CPUs with AVX-512F (`avx512.rs`, the two block products); elsewhere, or with
//! `SIGHTLINE_FLASH_ATTENTION=off`, callers keep the composed path ([`available`]).

#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod backward;

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

use crate::par::SharedOut;
use crate::switch::switched_off;

/// Keys per block: four 16-lane vectors of scores per row.
pub(crate) const KEY_BLOCK: usize = 64;
/// Query positions per task (times the query heads sharing the KV head).
const QUERY_BLOCK: usize = 32;

/// Whether this process runs the tiled kernel: a CPU with AVX-512F, and not switched off with
/// `SIGHTLINE_FLASH_ATTENTION=off` (or `0`/`false`). Decided once.
pub(crate) fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !switched_off("SIGHTLINE_FLASH_ATTENTION") && cpu_has_avx512f())
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512f() -> bool {
    is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512f() -> bool {
    false
}

/// An element type attention reads and writes. (Not candle's `WithDType::from_f64`: half's
/// f64 → bf16 drops the low 32 bits before rounding, which can misround; f32 → bf16 does not.)
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Round to nearest-even (bf16), as candle's and PyTorch's casts do.
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Keys or values `[batch, kv_heads, len, d]`, contiguous; `batch` is the caller's batch or 1
/// (one prefix shared by every sequence).
#[derive(Clone, Copy)]
pub(crate) struct Segment<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub batch: usize,
    pub len: usize,
}

impl<T> Segment<'_, T> {
    /// Offset of row `j` of sequence `bi`, KV head `g`.
    fn row(&self, bi: usize, g: usize, kvh: usize, j: usize, d: usize) -> usize {
        let bi = if self.batch == 1 { 0 } else { bi };
        ((bi * kvh + g) * self.len + j) * d
    }
}

/// The shapes of one call: `q: [b, h, t, d]`, KV heads `kvh` (`h % kvh == 0`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub h: usize,
    pub t: usize,
    pub d: usize,
    pub kvh: usize,
}

/// `out: [b, t, h, d]` = causal attention of `q` over the keys `prefix ++ new`, scores scaled by
/// `scale`. The `t` queries are the last `t` positions of `new` (`new.len ≥ t`): query `i` sees
/// every prefix key and keys `0..=new.len - t + i` of `new`. With `lse: [b, h, t]`, also each
/// query row's log-sum-exp of its scaled scores (for [`backward::attention_backward`]). Checks
/// the slice lengths; the caller checks that [`available`] holds.
pub(crate) fn attention<T: Elem>(
    q: &[T],
    prefix: Option<Segment<'_, T>>,
    new: Segment<'_, T>,
    n: Dims,
    scale: f32,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<(), String> {
    let Dims { b, h, t, d, kvh } = n;
    let seg_ok = |s: &Segment<T>| {
        (s.batch == 1 || s.batch == b)
            && s.k.len() == s.batch * kvh * s.len * d
            && s.v.len() == s.k.len()
    };
    if kvh == 0
        || d == 0
        || h % kvh != 0
        || q.len() != b * h * t * d
        || out.len() != q.len()
        || new.len < t
        || !seg_ok(&new)
        || prefix.as_ref().is_some_and(|p| !seg_ok(p))
        || lse.as_ref().is_some_and(|l| l.len() != b * h * t)
    {
        return Err(format!(
            "flash attention: q has {} values for {n:?}, out {}, new keys {} of {} ({} values), prefix {:?}",
            q.len(),
            out.len(),
            new.len,
            t,
            new.k.len(),
            prefix.as_ref().map(|p| (p.batch, p.len, p.k.len()))
        ));
    }
    if !available() {
        return Err("flash attention: not available on this CPU".into());
    }
    let prefix = prefix.map(|p| Packed::new(&p, kvh, d));
    let new = Packed::new(&new, kvh, d);
    let blocks = t.div_ceil(QUERY_BLOCK);
    let shared = SharedOut(out.as_mut_ptr());
    let lse = SharedOut(lse.map_or(std::ptr::null_mut(), |l| l.as_mut_ptr()));
    (0..b * kvh * blocks).into_par_iter().for_each(|task| {
        let (bg, qb) = (task / blocks, task % blocks);
        let (bi, g) = (bg / kvh, bg % kvh);
        let positions = qb * QUERY_BLOCK..((qb + 1) * QUERY_BLOCK).min(t);
        let job = Job {
            q,
            prefix: prefix.as_ref(),
            new: &new,
            n,
            scale,
            bi,
            g,
            positions,
        };
        // SAFETY: AVX-512F was checked by `available`; task (bi, g, block) writes only the rows of
        // sequence bi, heads of KV head g, positions of its block: disjoint across tasks, inside
        // `out` and `lse` (their lengths were checked).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::run(&job, shared.ptr(), lse.ptr())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (job, shared, lse);
    });
    Ok(())
}

/// A segment's keys and values widened to f32 once per call, in blocks of [`KEY_BLOCK`] keys per
/// (sequence, KV head) as the block products read them: keys transposed (`kt[c·64 + j]`),
/// values row-major (`v[j·dp + c]`), head dimension padded to `dp` (a multiple of 16) and the
/// last block to 64 keys, with zeros. Widening once here, not in each task, matters when many
/// tasks read the same keys: every query block of a sequence, and every sequence of a batch
/// scored on one shared prefix.
pub(crate) struct Packed {
    kt: Vec<f32>,
    v: Vec<f32>,
    batch: usize,
    /// Keys in the segment.
    pub len: usize,
    /// Blocks per (sequence, KV head).
    pub blocks: usize,
    kvh: usize,
    dp: usize,
}

impl Packed {
    fn new<T: Elem>(seg: &Segment<'_, T>, kvh: usize, d: usize) -> Self {
        let dp = d.next_multiple_of(16);
        let blocks = seg.len.div_ceil(KEY_BLOCK);
        let size = seg.batch * kvh * blocks * KEY_BLOCK * dp;
        let (mut kt, mut v) = (vec![0f32; size], vec![0f32; size]);
        let each = KEY_BLOCK * dp;
        kt.par_chunks_mut(each)
            .zip(v.par_chunks_mut(each))
            .enumerate()
            .for_each(|(i, (kt, v))| {
                let (bg, blk) = (i / blocks, i % blocks);
                let (bi, g) = (bg / kvh, bg % kvh);
                let first = blk * KEY_BLOCK;
                for j in 0..KEY_BLOCK.min(seg.len - first) {
                    let at = seg.row(bi, g, kvh, first + j, d);
                    for c in 0..d {
                        kt[c * KEY_BLOCK + j] = seg.k[at + c].to_f32();
                        v[j * dp + c] = seg.v[at + c].to_f32();
                    }
                }
            });
        Packed {
            kt,
            v,
            batch: seg.batch,
            len: seg.len,
            blocks,
            kvh,
            dp,
        }
    }

    /// Block `blk` of sequence `bi`, KV head `g`: (keys transposed, values, keys in it).
    pub fn block(&self, bi: usize, g: usize, blk: usize) -> (&[f32], &[f32], usize) {
        let bi = if self.batch == 1 { 0 } else { bi };
        let each = KEY_BLOCK * self.dp;
        let at = ((bi * self.kvh + g) * self.blocks + blk) * each;
        let keys = (self.len - blk * KEY_BLOCK).min(KEY_BLOCK);
        (&self.kt[at..at + each], &self.v[at..at + each], keys)
    }
}

/// One task: query positions `positions` of sequence `bi`, for the query heads of KV head `g`.
pub(crate) struct Job<'a, T> {
    pub q: &'a [T],
    pub prefix: Option<&'a Packed>,
    pub new: &'a Packed,
    pub n: Dims,
    pub scale: f32,
    pub bi: usize,
    pub g: usize,
    pub positions: std::ops::Range<usize>,
}

impl<T: Elem> Job<'_, T> {
    /// Keys of the new segment visible to query position `i` (all prefix keys are):
    /// `new[..=new.len - t + i]`.
    pub fn visible_new(&self, i: usize) -> usize {
        self.new.len - self.n.t + i + 1
    }

    /// This task's rows as `(head, position, offset of the row in q)`: the query heads of its
    /// KV head, head-major, `positions.len()` rows per head.
    pub fn rows(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let Dims { h, t, d, kvh, .. } = self.n;
        let n_rep = h / kvh;
        (0..n_rep).flat_map(move |r| {
            let head = self.g * n_rep + r;
            self.positions
                .clone()
                .map(move |i| (head, i, ((self.bi * h + head) * t + i) * d))
        })
    }
}
