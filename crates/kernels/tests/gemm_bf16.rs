//! The bf16 GEMM against its scalar statement (`gemm_bf16::reference`): equal bits on odd
//! shapes, tile edges, long rows and the LLaMA-2-7B shapes; and within bf16-product / f32-sum
//! error of an f64 product. On a CPU without AVX512-BF16 (or with `SIGHTLINE_BF16_GEMM=off`)
//! `matmul_nt` declines and these tests check only that.

use half::bf16;
use sightline_kernels::gemm_bf16::{
    matmul_nt, reference::matmul_nt_bf16_reference, Bf16Gemm, AMX_MIN_ROWS, SMALL_K,
};

/// Deterministic values in about ±2 with all 8 bits of a bf16 significand in use.
fn values(len: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        })
        .collect()
}

fn check(n: usize, k: usize, m: usize) {
    let (x, w) = (values(n * k, 1 + n as u64), values(m * k, 7 + m as u64));
    let mut y = vec![0f32; n * m];
    let ran = matmul_nt(&x, &w, (n, k, m), &mut y).expect("shapes match");
    assert_eq!(ran, Bf16Gemm::detect().is_available());
    if !ran {
        return;
    }
    let want = matmul_nt_bf16_reference(&x, &w, n, k, m);
    for (at, (a, b)) in y.iter().zip(&want).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{n}x{k}x{m}: y[{}][{}] = {a}, reference {b}",
            at / m,
            at % m
        );
    }
    // And the reference itself is an f32-accumulated product of the bf16 values.
    for (at, got) in want.iter().enumerate().step_by(97) {
        let (i, j) = (at / m, at % m);
        let (exact, mag) = (0..k).fold((0f64, 0f64), |(s, a), e| {
            let p = x[i * k + e].to_f64() * w[j * k + e].to_f64();
            (s + p, a + p.abs())
        });
        // Rounding steps along the longest chain of additions: a tree of 16 lanes, or one lane
        // in order for short rows (the pair-broadcast kernel), chunk after chunk on AMX.
        let depth = if Bf16Gemm::detect() == Bf16Gemm::Amx && n >= AMX_MIN_ROWS {
            // Per chunk of 32: 16 in a chain, then 2 more; chunks in a chain.
            (18 + k.div_ceil(32)) as f64
        } else if k <= SMALL_K {
            k as f64
        } else {
            (k as f64).log2().ceil().max(1.0) * 2.0
        };
        let bound = mag * depth * f32::EPSILON as f64;
        assert!(
            (*got as f64 - exact).abs() <= bound + 1e-30,
            "{n}x{k}x{m} [{i}][{j}]: {got} vs exact {exact}"
        );
    }
}

#[test]
fn odd_shapes_equal_the_reference_bit_for_bit() {
    for &(n, k, m) in &[
        (1, 1, 1),
        (17, 33, 65),
        (1, 31, 1),
        (2, 32, 16),
        (3, 63, 17),
        (4, 64, 4),
        (5, 65, 33),
        (7, 1000, 23),
        (9, 576, 192),
        (1, 2, 100),
        // Both sides of the AVX512-BF16 kernels' boundary, and LoRA's rank products (on an AMX
        // CPU these run the tiles from 4 rows on, rows shorter than one tile step included).
        (8, 16, 20),
        (33, 1, 40),
        (6, 127, 70),
        (5, 128, 33),
        (4, 129, 17),
        (70, 64, 300),
    ] {
        check(n, k, m);
    }
}

/// The AMX kernel's blocks of 32 × 32 outputs and their halves: rows and columns of 16, 17,
/// 31, 32, 33, 48 and more, rows of a multiple of 32 (weights read in place) and not (a padded
/// copy; odd, packed word by word), both sides of the few-rows boundary, the passes over long
/// rows whose running sums wait in memory between passes, and batches long enough that all
/// weights are copied into tiles once. On a CPU without AMX these run the other kernel, as they
/// should.
#[test]
fn tile_edges_equal_the_reference_bit_for_bit() {
    for &(n, k, m) in &[
        (1, 160, 16),
        (3, 160, 40),
        (4, 160, 40),
        (16, 160, 16),
        (17, 160, 17),
        (31, 192, 31),
        (32, 256, 32),
        (33, 256, 48),
        (65, 130, 50),
        (20, 161, 33),
        (40, 2048, 256),
        (1, 5632, 64),
        // Rows longer than one pass over k (2,048 values), several panels and row blocks,
        // products split into several tasks.
        (40, 4096, 48),
        (300, 2080, 40),
        (70, 4128, 150),
        // Enough rows that the weights are copied into tiles once for all tasks.
        (1030, 160, 40),
        (1025, 2080, 20),
    ] {
        check(n, k, m);
    }
}

/// `SIGHTLINE_AMX=off` (this test reruns the others in a child process with it) keeps an AMX
/// CPU on the AVX512-BF16 kernel, whose sums the reference then states: a machine without AMX
/// computes what it computed before AMX existed here.
#[test]
fn amx_off_runs_the_avx512_kernel() {
    if std::env::var_os("SIGHTLINE_AMX").is_some() {
        // The child: the kernel must not be AMX (the other tests check its sums).
        assert_ne!(Bf16Gemm::detect(), Bf16Gemm::Amx);
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .env("SIGHTLINE_AMX", "off")
        .args(["--test-threads", "1"])
        .output()
        .expect("runs");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("amx_off_runs_the_avx512_kernel ... ok"),
        "{log}"
    );
    assert!(
        log.contains("llama2_7b_shapes_equal_the_reference ... ok"),
        "{log}"
    );
}

#[test]
fn empty_shapes_are_fine() {
    check(0, 8, 8);
    check(3, 0, 5);
    check(3, 8, 0);
}

/// LLaMA-2-7B's projections (hidden 4096, MLP 11008) at a few rows: the blocking over weight
/// rows and `x` rows changes nothing in the sums.
#[test]
fn llama2_7b_shapes_equal_the_reference() {
    check(3, 4096, 4096);
    check(2, 4096, 11008);
    check(2, 11008, 4096);
}

#[test]
fn bf16_output_is_the_rounded_f32_result() {
    let (n, k, m) = (6, 200, 37);
    let (x, w) = (values(n * k, 3), values(m * k, 4));
    let mut y16 = vec![bf16::ZERO; n * m];
    let mut y32 = vec![0f32; n * m];
    let ran = matmul_nt(&x, &w, (n, k, m), &mut y16).expect("shapes match");
    if !ran {
        return;
    }
    matmul_nt(&x, &w, (n, k, m), &mut y32).expect("shapes match");
    for (a, b) in y16.iter().zip(&y32) {
        assert_eq!(a.to_bits(), bf16::from_f32(*b).to_bits());
    }
}

#[test]
fn mismatched_lengths_are_an_error() {
    let x = values(6, 1);
    let mut y = vec![0f32; 4];
    let err = matmul_nt(&x, &x, (2, 4, 2), &mut y).unwrap_err();
    assert!(err.contains("n=2 k=4 m=2"), "{err}");
}
