//! Rotate-half RoPE (transformers' LLaMA), with the `[b, t, h, d] → [b, h, t, d]` transpose
//! that attention needs fused into the forward-only kernel.
//!
//! Tables are `[positions, d/2]` (cos and sin of `pos · inv_freq`); HF's `[.., d]` tables repeat
//! each half, so only one half is ever read.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use half::bf16;

use crate::cpu::{bf16_forward, slice, slice_of, with_f32, CResult, Path};

/// Rope on `[b, heads, t, d]` with tables `[t, d/2]`. The map rotates each pair
/// `(x_i, x_{i+d/2})`; its transpose (the backward) is the rotation by the opposite angle,
/// i.e. the same op with `sin` negated.
struct Rope {
    /// `[t, d/2]`, contiguous.
    cos: Tensor,
    sin: Tensor,
    /// Rotate by the negative angle (the backward).
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (_, _, t, d) = l.shape().dims4()?;
        let half = d / 2;
        if self.cos.dims2()? != (t, half) || d % 2 != 0 {
            candle_core::bail!("rope: tables {:?} for rows of ({t}, {d})", self.cos.shape());
        }
        let x = slice(s, l)?;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        // Written without zeroing first: every (batch, head) block of t·d values is written
        // whole, position by position, both halves.
        let mut y: Vec<f32> = Vec::with_capacity(x.len());
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                // One task per (batch, head): t·d values.
                y.spare_capacity_mut()
                    .par_chunks_mut((t * d).max(1))
                    .zip(x.par_chunks((t * d).max(1)))
                    .for_each(|(y, x)| {
                        for p in 0..t {
                            let (c, sn) = (&cos[p * half..][..half], &sin[p * half..][..half]);
                            let (x, y) = (&x[p * d..(p + 1) * d], &mut y[p * d..(p + 1) * d]);
                            let (x1, x2) = x.split_at(half);
                            let (y1, y2) = y.split_at_mut(half);
                            for i in 0..half {
                                let s = sign * sn[i];
                                y1[i].write(x1[i] * c[i] - x2[i] * s);
                                y2[i].write(x2[i] * c[i] + x1[i] * s);
                            }
                        }
                    });
                Ok(())
            })
        })?;
        // SAFETY: `x` is `[b, h, t, d]` (checked by `dims4`) with `d = 2·half`, so the blocks
        // above cover all of `y` and wrote each value.
        unsafe { y.set_len(x.len()) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        })?))
    }
}

/// `x·cos + rotate_half(x)·sin` on `[b, heads, t, d]` with tables `[t, d/2]`.
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    match Path::of(&[xs, cos, sin]) {
        Path::Forward => candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin),
        Path::WithBackward => xs.contiguous()?.apply_op1(Rope {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            inverse: false,
        }),
        Path::Candle if !xs.track_op() => {
            candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos.contiguous()?, &sin.contiguous()?)
        }
        Path::Candle => candle_nn::rotary_emb::rope_slow(xs, cos, sin),
    }
}

/// RoPE fused with the `[b, t, h, d] → [b, h, t, d]` transpose, forward only: inputs are the
/// projection `[b, t, h, d]` and the whole tables `[max_positions, d/2]`; row `i` is rotated
/// for position `offset + i`. (candle's rope kernel is scalar and needs the transposed copy
/// first.)
struct RopeToHeads {
    offset: usize,
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
    ) -> CResult<(CpuStorage, Shape)> {
        if let CpuStorage::BF16(_) = sx {
            let (x, cos, sin) = (
                slice_of::<bf16>(sx, lx)?,
                slice_of::<bf16>(sc, lc)?,
                slice_of::<bf16>(ss, ls)?,
            );
            let shape = self.shape(lx, lc, ls)?;
            let out = self.rotate(x, cos, sin, shape, rotate_bf16);
            return Ok((CpuStorage::BF16(out), heads_first(shape)));
        }
        let (x, cos, sin) = (slice(sx, lx)?, slice(sc, lc)?, slice(ss, ls)?);
        let shape = self.shape(lx, lc, ls)?;
        let out = self.rotate(x, cos, sin, shape, rotate_f32);
        Ok((CpuStorage::F32(out), heads_first(shape)))
    }
}

/// The output shape `[b, h, t, d]` of an input `[b, t, h, d]`.
fn heads_first((b, t, h, d): (usize, usize, usize, usize)) -> Shape {
    Shape::from((b, h, t, d))
}

/// One rotated pair in f32: `(x1·c − x2·s, x2·c + x1·s)`.
#[inline(always)]
fn rotate_f32(x1: f32, x2: f32, c: f32, s: f32) -> (f32, f32) {
    (x1 * c - x2 * s, x2 * c + x1 * s)
}

/// One rotated pair in bf16 with the roundings of PyTorch's `q·cos + rotate_half(q)·sin` on bf16
/// tensors (and of candle-nn's bf16 rope): each product rounded, then the sum.
#[inline(always)]
fn rotate_bf16(x1: bf16, x2: bf16, c: bf16, s: bf16) -> (bf16, bf16) {
    let r = bf16::from_f32;
    let (x1, x2, c, s) = (x1.to_f32(), x2.to_f32(), c.to_f32(), s.to_f32());
    let o1 = r(r(x1 * c).to_f32() - r(x2 * s).to_f32());
    let o2 = r(r(x1 * s).to_f32() + r(x2 * c).to_f32());
    (o1, o2)
}

impl RopeToHeads {
    /// `(b, t, h, d)` of the input, checked against the tables `[positions, d/2]`.
    fn shape(
        &self,
        lx: &Layout,
        lc: &Layout,
        ls: &Layout,
    ) -> CResult<(usize, usize, usize, usize)> {
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
        Ok((b, t, h, d))
    }

    /// `[b, t, h, d]` → rotated `[b, h, t, d]`, one task per (batch, head).
    fn rotate<T: Copy + Default + Send + Sync>(
        &self,
        x: &[T],
        cos: &[T],
        sin: &[T],
        (b, t, h, d): (usize, usize, usize, usize),
        pair: impl Fn(T, T, T, T) -> (T, T) + Sync,
    ) -> Vec<T> {
        let half = d / 2;
        let mut out = vec![T::default(); b * h * t * d];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            for i in 0..t {
                let src = &x[((bi * t + i) * h + hi) * d..][..d];
                let pos = (self.offset + i) * half;
                let (c, s) = (&cos[pos..pos + half], &sin[pos..pos + half]);
                let (x1, x2) = src.split_at(half);
                let (o1, o2) = o[i * d..(i + 1) * d].split_at_mut(half);
                for j in 0..half {
                    (o1[j], o2[j]) = pair(x1[j], x2[j], c[j], s[j]);
                }
            }
        });
        out
    }
}

/// Rotates projections `xs: [b, t, heads, d]` for positions `offset..offset + t` and returns
/// them head-major, `[b, heads, t, d]`; `cos`, `sin` are the whole tables `[max_positions, d/2]`.
///
/// Forward-only CPU f32, and CPU bf16 under the bf16 kernels (with PyTorch's roundings): one
/// pass does rotation and transpose. With gradients: the transposed copy, then [`rope`] (whose
/// backward is the inverse rotation).
pub fn rope_to_heads(xs: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> CResult<Tensor> {
    if Path::of(&[xs, cos, sin]) == Path::Forward || bf16_forward(&[xs, cos, sin]) {
        return xs
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &RopeToHeads { offset });
    }
    let t = xs.dim(1)?;
    let cos = cos.narrow(0, offset, t)?;
    let sin = sin.narrow(0, offset, t)?;
    rope(&xs.transpose(1, 2)?.contiguous()?, &cos, &sin)
}
