//! The vendored candle-core's CPU matmul runs a product with a small right operand and many
//! rows as one single-threaded gemm per band of rows (vendor/README.md, patch 4). That must not
//! change a bit: the product on 1 thread (one gemm, no bands) and on 2 and 3 threads (bands)
//! are compared here, for `x·Wᵀ`, `dY·W` and `dYᵀ·X` layouts, on shapes on both sides of the
//! thresholds (rows, right-operand size).
//!
//! candle reads its thread count from `RAYON_NUM_THREADS` on every matmul, so this file holds
//! a single test that sets it.

use candle_core::{Device, Result, Tensor};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// The three products of a linear layer with x `[m, k]`, W `[n, k]`, dY `[m, n]`.
fn products(m: usize, k: usize, n: usize) -> Result<Vec<Vec<f32>>> {
    let dev = Device::Cpu;
    let x = Tensor::from_vec(values(m * k, 1), (m, k), &dev)?;
    let w = Tensor::from_vec(values(n * k, 2), (n, k), &dev)?;
    let dy = Tensor::from_vec(values(m * n, 3), (m, n), &dev)?;
    let y = x.matmul(&w.t()?)?;
    let dx = dy.matmul(&w)?;
    let dw = dy.t()?.matmul(&x)?;
    [y, dx, dw]
        .iter()
        .map(|t| t.flatten_all()?.to_vec1::<f32>())
        .collect()
}

#[test]
fn row_bands_give_the_same_bits_as_one_gemm() -> Result<()> {
    let shapes = [
        (512, 64, 96), // banded on 2 threads and 3
        (300, 33, 17), // uneven bands
        (1000, 576, 192),
        (255, 40, 40),     // too few rows for 2 bands
        (512, 1100, 1000), // right operand above 2^20 values
        (7, 5, 3),
    ];
    for &(m, k, n) in &shapes {
        let mut runs = Vec::new();
        for threads in ["1", "2", "3"] {
            // SAFETY: this test binary has this one test, so no other thread reads the
            // environment while it is written.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", threads) };
            runs.push(products(m, k, n)?);
        }
        for (threads, run) in ["2", "3"].iter().zip(&runs[1..]) {
            for (which, (a, b)) in ["x·Wᵀ", "dY·W", "dYᵀ·X"]
                .iter()
                .zip(runs[0].iter().zip(run))
            {
                let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(
                    same,
                    "{which} of {m}x{k}x{n} on {threads} threads differs from 1 thread"
                );
            }
        }
    }
    Ok(())
}
