//! Rotate-half RoPE (transformers' LLaMA), with the `[b, t, h, d] → [b, h, t, d]` transpose
//! that attention needs fused into the forward-only kernel.
//!
//! Tables are `[positions, d/2]` (cos and sin of `pos · inv_freq`); HF's `[.., d]` tables repeat
//! each half, so only one half is ever read.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{slice, with_f32, CResult, Path};

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
        let mut y = vec![0f32; x.len()];
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                // One task per (batch, head): t·d values.
                y.par_chunks_mut(t * d)
                    .zip(x.par_chunks(t * d))
                    .for_each(|(y, x)| {
                        for p in 0..t {
                            let (c, sn) = (&cos[p * half..][..half], &sin[p * half..][..half]);
                            let (x, y) = (&x[p * d..(p + 1) * d], &mut y[p * d..(p + 1) * d]);
                            let (x1, x2) = x.split_at(half);
                            let (y1, y2) = y.split_at_mut(half);
                            for i in 0..half {
                                let s = sign * sn[i];
                                y1[i] = x1[i] * c[i] - x2[i] * s;
                                y2[i] = x2[i] * c[i] + x1[i] * s;
                            }
                        }
                    });
                Ok(())
            })
        })?;
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
        let (x, cos, sin) = (slice(sx, lx)?, slice(sc, lc)?, slice(ss, ls)?);
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

/// Rotates projections `xs: [b, t, heads, d]` for positions `offset..offset + t` and returns
/// them head-major, `[b, heads, t, d]`; `cos`, `sin` are the whole tables `[max_positions, d/2]`.
///
/// Forward-only CPU f32: one vectorised pass does rotation and transpose. With gradients: the
/// transposed copy, then [`rope`] (whose backward is the inverse rotation).
pub fn rope_to_heads(xs: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> CResult<Tensor> {
    if Path::of(&[xs, cos, sin]) == Path::Forward {
        return xs
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &RopeToHeads { offset });
    }
    let t = xs.dim(1)?;
    let cos = cos.narrow(0, offset, t)?;
    let sin = sin.narrow(0, offset, t)?;
    rope(&xs.transpose(1, 2)?.contiguous()?, &cos, &sin)
}
