//! Times causal self-attention with gradients (forward + backward of q, k, v) at one shape, as
//! a training step runs it: `attention_timing B H KVH T D [f32|bf16] [reps]`. Run it with
//! `SIGHTLINE_FLASH_ATTENTION=off` for the composed path (matmul, causal softmax, matmul).

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<usize> {
        args.get(i)
            .context("usage: attention_timing B H KVH T D [f32|bf16] [reps]")?
            .parse()
            .context("a number")
    };
    let (b, h, kvh, t, d) = (num(0)?, num(1)?, num(2)?, num(3)?, num(4)?);
    let dtype = match args.get(5).map(String::as_str) {
        Some("bf16") => DType::BF16,
        _ => DType::F32,
    };
    let reps = args
        .get(6)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5usize);
    let dev = Device::Cpu;
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?.to_dtype(dtype)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, kvh, t, d), &dev)?.to_dtype(dtype)?)?;
    let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, kvh, t, d), &dev)?.to_dtype(dtype)?)?;
    let r = Tensor::randn(0f32, 1.0, (b * t, h * d), &dev)?.to_dtype(dtype)?;
    let scale = 1.0 / (d as f64).sqrt();
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..reps + 1 {
        let t0 = Instant::now();
        let y = sightline_kernels::causal_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            0,
            scale,
        )?;
        let loss = (y * &r)?.to_dtype(DType::F32)?.sum_all()?;
        let fwd = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let g = loss.backward()?;
        let bwd = t1.elapsed().as_secs_f64();
        let _ = g.get(q.as_tensor()).context("dq")?;
        best = (best.0.min(fwd), best.1.min(bwd));
    }
    // Causal: half the score matrix; forward 2 products, backward 5 (FlashAttention-2 counts).
    let flops = 2.0 * (b * h) as f64 * (t * t) as f64 / 2.0 * d as f64;
    println!(
        "b {b} h {h} kvh {kvh} t {t} d {d} {dtype:?}: forward {:.1} ms ({:.1} GFLOP/s), backward {:.1} ms ({:.1} GFLOP/s)",
        best.0 * 1e3,
        2.0 * flops / best.0 / 1e9,
        best.1 * 1e3,
        5.0 * flops / best.1 / 1e9
    );
    Ok(())
}
