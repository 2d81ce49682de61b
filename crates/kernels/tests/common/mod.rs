//! What several test files of this crate share.

use anyhow::Result;
use candle_core::{Device, Tensor, D};

/// Values in [-1, 1) from a seed.
pub fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    // A small LCG: fixed values on every machine, no dependency on candle's RNG.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Dense causal attention, the composed candle ops: K/V repeated per query head, the whole
/// `[b, h, t, T]` score matrix, the causal mask (query `i` sees keys `0..=offset + i`), a
/// differentiable softmax and `p·v` → `[b·t, h·d]`.
pub fn dense_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let total = k.dim(2)?;
    let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
        let (b, kvh, n, d) = x.dims4()?;
        x.unsqueeze(2)?
            .expand((b, kvh, h / kvh, n, d))?
            .reshape((b, h, n, d))
    };
    let att = (q.matmul(&rep(k)?.t()?)? * scale)?;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let att = att.broadcast_add(&Tensor::from_vec(mask, (t, total), &Device::Cpu)?)?;
    Ok(candle_nn::ops::softmax(&att, D::Minus1)?
        .matmul(&rep(v)?)?
        .transpose(1, 2)?
        .reshape((b * t, h * d))?)
}
