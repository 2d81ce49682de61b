//! GFLOP/s of the bf16 GEMM (`y = x·Wᵀ`, bf16 in, bf16 out) and of candle's f32 and bf16
//! matmuls on the same shapes; `bench/gemm_bf16_vs_torch.py` runs it beside PyTorch.
//!
//!     cargo run --release -p sightline-kernels --example gemm_bf16_timing -- [--sightline-only] N,K,M [N,K,M ...]
//!
//! `--sightline-only` skips candle's matmuls (their fields are then absent), for quick A/B runs
//! of the kernel alone.
//!
//! First the per-core ceilings (`VDPBF16PS`; `TDPBF16PS` where the kernel is AMX) and the
//! kernel in use (`SIGHTLINE_AMX=off` for the AVX512-BF16 one on an AMX CPU), then one JSON
//! line per shape: {"shape": [n, k, m], "sightline_bf16": GFLOP/s,
//! "candle_f32": ..., "candle_bf16": ...} (the best of several timed repeats of ~0.3 s each).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use sightline_kernels::gemm_bf16::matmul_nt;

fn best_gflops(flops: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let (start, mut reps) = (Instant::now(), 0u32);
        while start.elapsed().as_secs_f64() < 0.3 {
            f();
            reps += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / reps as f64);
    }
    flops / best / 1e9
}

/// The `VDPBF16PS` ceiling of one core: 16 independent accumulators, operands in registers
/// (64 FLOP per instruction). Multiply by the cores in use for the machine's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dp_peak_gflops() -> f64 {
    use std::arch::x86_64::*;
    let seed = std::hint::black_box(1.0e-3f32);
    let a: __m512bh = std::mem::transmute(_mm512_set1_ps(seed));
    let b: __m512bh = std::mem::transmute(_mm512_set1_ps(seed * 2.0));
    let mut acc = [_mm512_setzero_ps(); 16];
    let iters = 20_000_000u64;
    let start = Instant::now();
    for _ in 0..iters / 16 {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, a, b);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(acc);
    iters as f64 * 64.0 / secs / 1e9
}

fn main() -> anyhow::Result<()> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the instructions were just detected.
        let peak = unsafe { dp_peak_gflops() };
        println!(
            "{{\"vdpbf16ps_peak_per_core\": {peak:.1}, \"threads\": {}, \"kernel\": \"{:?}\"}}",
            rayon::current_num_threads(),
            sightline_kernels::gemm_bf16::Bf16Gemm::detect()
        );
        if let Some(tiles) = sightline_kernels::gemm_bf16::amx_tile_peak_gflops() {
            println!("{{\"tdpbf16ps_peak_per_core\": {tiles:.1}}}");
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only_ours = args.iter().any(|a| a == "--sightline-only");
    for arg in args.iter().filter(|a| *a != "--sightline-only") {
        let dims: Vec<usize> = arg.split(',').map(str::parse).collect::<Result<_, _>>()?;
        let [n, k, m] = dims[..] else {
            anyhow::bail!("{arg}: expected N,K,M");
        };
        let flops = 2.0 * (n * k * m) as f64;
        let x32 = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let w32 = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let (x16, w16) = (x32.to_dtype(DType::BF16)?, w32.to_dtype(DType::BF16)?);
        let xv: Vec<bf16> = x16.flatten_all()?.to_vec1()?;
        let wv: Vec<bf16> = w16.flatten_all()?.to_vec1()?;
        let mut y = vec![bf16::ZERO; n * m];
        let ours = best_gflops(flops, || {
            let _ = matmul_nt(&xv, &wv, (n, k, m), &mut y);
        });
        if only_ours {
            println!("{{\"shape\": [{n}, {k}, {m}], \"sightline_bf16\": {ours:.1}}}");
            continue;
        }
        let f32_ = best_gflops(flops, || {
            let _ = x32.matmul(&w32.t().expect("2-D")).expect("matmul");
        });
        let b16 = best_gflops(flops, || {
            let _ = x16.matmul(&w16.t().expect("2-D")).expect("matmul");
        });
        println!(
            "{{\"shape\": [{n}, {k}, {m}], \"sightline_bf16\": {ours:.1}, \"candle_f32\": {f32_:.1}, \"candle_bf16\": {b16:.1}}}"
        );
    }
    Ok(())
}
