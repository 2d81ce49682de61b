//! Milliseconds of the f32 SwiGLU forward and backward (`sightline_kernels::swiglu`) on a
//! TinyLlama-shaped MLP activation (3600 × 5632 by default).
//!
//!     cargo run --release -p sightline-kernels --example swiglu_timing -- [ROWS COLS]

use std::time::Instant;

use candle_core::{Device, Tensor, Var};

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match args[..] {
        [r, c] => (r, c),
        _ => (3600, 5632),
    };
    let dev = &Device::Cpu;
    let g = (Tensor::randn(0f32, 1.0, (rows, cols), dev)? * 3.0)?;
    let u = Tensor::randn(0f32, 1.0, (rows, cols), dev)?;
    let best = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        f()?;
        let mut best = f64::INFINITY;
        for _ in 0..10 {
            let t = Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best * 1e3)
    };
    let fwd = best(&mut || {
        std::hint::black_box(sightline_kernels::swiglu(&g, &u)?);
        Ok(())
    })?;
    let gv = Var::from_tensor(&g)?;
    let y = sightline_kernels::swiglu(gv.as_tensor(), &u)?;
    let loss = y.sum_all()?;
    let both = best(&mut || {
        std::hint::black_box(loss.backward()?);
        Ok(())
    })?;
    println!("swiglu {rows}x{cols}: forward {fwd:.2} ms, backward {both:.2} ms");
    Ok(())
}
