//! Times one bf16 linear layer with gradients, as mixed-precision training runs it: a frozen
//! base weight alone, and with an unmerged LoRA update (`x·Wᵀ + ((x·Aᵀ)·(s·B)ᵀ)`), forward and
//! backward: `lora_timing N IN OUT R [reps]`.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use sightline_kernels::bf16_linear_trainable;

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("a number"))
        .collect::<Result<_>>()?;
    let [n, din, dout, r] = args[..4] else {
        anyhow::bail!("usage: lora_timing N IN OUT R [reps]");
    };
    let reps = args.get(4).copied().unwrap_or(10);
    let dev = Device::Cpu;
    let bf = |t: Tensor| t.to_dtype(DType::BF16);
    let x = Var::from_tensor(&bf(Tensor::randn(0f32, 1.0, (n, din), &dev)?)?)?;
    let w = bf(Tensor::randn(0f32, 0.05, (dout, din), &dev)?)?;
    let a = Var::from_tensor(&Tensor::randn(0f32, 0.05, (r, din), &dev)?)?;
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.05, (dout, r), &dev)?)?;
    let g = bf(Tensor::randn(0f32, 1.0, (n, dout), &dev)?)?;
    let lin = |x: &Tensor, w: &Tensor, trained: bool| -> Result<Tensor> {
        bf16_linear_trainable(x, w, trained)?.context("no bf16 GEMM on this CPU")
    };
    // The loss's own ops (`Σ y ⊙ g` through f32), on y = x: what every case below includes.
    {
        let mut best = (f64::MAX, f64::MAX);
        let gx = bf(Tensor::randn(0f32, 1.0, (n, din), &dev)?)?;
        for _ in 0..reps + 1 {
            let t0 = Instant::now();
            let loss = (x.as_tensor() * &gx)?.to_dtype(DType::F32)?.sum_all()?;
            let fwd = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            loss.backward()?;
            best = (best.0.min(fwd), best.1.min(t1.elapsed().as_secs_f64()));
        }
        println!(
            "loss alone on [{n}, {din}]: forward {:.2} ms, backward {:.2} ms",
            best.0 * 1e3,
            best.1 * 1e3
        );
    }
    for lora in [false, true] {
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..reps + 1 {
            let t0 = Instant::now();
            let mut y = lin(x.as_tensor(), &w, false)?;
            if lora {
                let h = lin(x.as_tensor(), &a.as_tensor().to_dtype(DType::BF16)?, true)?;
                let sb = (b.as_tensor().to_dtype(DType::BF16)? * 0.25)?;
                y = (y + lin(&h, &sb, true)?)?;
            }
            let loss = (y * &g)?.to_dtype(DType::F32)?.sum_all()?;
            let fwd = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let grads = loss.backward()?;
            let bwd = t1.elapsed().as_secs_f64();
            grads.get(x.as_tensor()).context("dx")?;
            best = (best.0.min(fwd), best.1.min(bwd));
        }
        println!(
            "n {n} in {din} out {dout} r {r} lora {lora}: forward {:.2} ms, backward {:.2} ms",
            best.0 * 1e3,
            best.1 * 1e3
        );
    }
    Ok(())
}
