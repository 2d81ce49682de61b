//! The tiled (flash-style) attention against dense attention: f32 within 1e-5 relative, bf16
//! within one bf16 rounding of the dense f32 result on the same bf16 inputs; head dimensions
//! that are and are not multiples of 16, query and key counts across the block edges (32 query
//! positions, 64 keys), GQA, decoding (one new token) and a cached prefix read in place (batch 1
//! shared by the whole batch, or one per sequence). The same checks run in a child process with
//! `SIGHTLINE_FLASH_ATTENTION=off` (the composed path), so both paths are held to the reference.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use sightline_kernels as fused;

mod common;
use common::dense_attention as dense;

/// Values in [-3, 3): scores spread enough that the softmax is not flat.
fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    Ok((common::randn(shape, seed)? * 3.0)?)
}

/// max |a − b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    ensure!(a.len() == b.len(), "lengths {} vs {}", a.len(), b.len());
    let scale = b.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f32::max))
}

/// Largest error of bf16 `a` against f32 `b` in units of b's own bf16 spacing, after allowing
/// the f32 summation-order noise of the reference (1e-5 of its largest value): ≤ 0.5 is a
/// correctly rounded result, ≤ 1 one rounding step.
fn bf16_steps(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    let noise = 1e-5 * b.iter().fold(0f32, |m, x| m.max(x.abs()));
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let ulp = (y.abs() * 2f32.powi(-7)).max(f32::MIN_POSITIVE);
            ((x - y).abs() - noise).max(0.0) / ulp
        })
        .fold(0.0, f32::max))
}

/// (b, h, kvh, t new queries, cached keys before them, d)
const CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 0, 8),
    (2, 4, 2, 5, 0, 24),
    (2, 4, 2, 5, 3, 64),
    (1, 6, 1, 33, 0, 64),
    (2, 4, 4, 70, 0, 64),
    (1, 4, 2, 1, 130, 64),
    (1, 2, 2, 9, 64, 80),
    (2, 8, 2, 40, 17, 128),
];

fn check_case(
    &(b, h, kvh, t, cached, d): &(usize, usize, usize, usize, usize, usize),
) -> Result<()> {
    let total = cached + t;
    let seed = (b * 1000 + t * 10 + d) as u64;
    let q = randn(&[b, h, t, d], seed)?;
    let k = randn(&[b, kvh, total, d], seed + 1)?;
    let v = randn(&[b, kvh, total, d], seed + 2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let want = dense(&q, &k, &v, cached, scale)?;
    let case = format!("b {b} h {h} kvh {kvh} t {t} cached {cached} d {d}");

    let got = fused::causal_attention(&q, &k, &v, cached, scale)?;
    let e = rel(&got, &want)?;
    ensure!(e < 1e-5, "{case}: f32 differs by {e:.2e}");

    // The same keys as a prefix read in place: one per sequence, and (the first sequence's)
    // shared by the batch.
    let split = |x: &Tensor| -> Result<(Tensor, Tensor)> {
        Ok((x.narrow(2, 0, cached)?, x.narrow(2, cached, t)?))
    };
    let ((pk, nk), (pv, nv)) = (split(&k)?, split(&v)?);
    let got = fused::causal_attention_after_prefix(&q, (&pk, &pv), &nk, &nv, scale)?;
    let e = rel(&got, &want)?;
    ensure!(
        e < 1e-5,
        "{case}: f32 after a per-sequence prefix differs by {e:.2e}"
    );
    let (pk1, pv1) = (pk.narrow(0, 0, 1)?, pv.narrow(0, 0, 1)?);
    let shape = (b, kvh, cached, d);
    let want_shared = dense(
        &q,
        &Tensor::cat(&[&pk1.broadcast_as(shape)?, &nk], 2)?,
        &Tensor::cat(&[&pv1.broadcast_as(shape)?, &nv], 2)?,
        cached,
        scale,
    )?;
    let got = fused::causal_attention_after_prefix(&q, (&pk1, &pv1), &nk, &nv, scale)?;
    let e = rel(&got, &want_shared)?;
    ensure!(
        e < 1e-5,
        "{case}: f32 after a shared prefix differs by {e:.2e}"
    );

    // bf16 in and out: the dense f32 result on the same (rounded) inputs, rounded once. (Without
    // a bf16 GEMM, bf16 runs candle's bf16 ops, which round every step: not held to this.)
    if fused::gemm_bf16::Bf16Gemm::detect() != fused::gemm_bf16::Bf16Gemm::Avx512Bf16 {
        return Ok(());
    }
    let round = |x: &Tensor| x.to_dtype(DType::BF16);
    let (qb, kb, vb) = (round(&q)?, round(&k)?, round(&v)?);
    let up = |x: &Tensor| x.to_dtype(DType::F32);
    let want = dense(&up(&qb)?, &up(&kb)?, &up(&vb)?, cached, scale)?;
    let got = fused::causal_attention(&qb, &kb, &vb, cached, scale)?;
    ensure!(
        got.dtype() == DType::BF16,
        "{case}: bf16 in, {:?} out",
        got.dtype()
    );
    let steps = bf16_steps(&got, &want)?;
    ensure!(
        steps <= 1.0,
        "{case}: bf16 is {steps:.2} rounding steps from the f32 result"
    );
    Ok(())
}

#[test]
fn tiled_attention_equals_dense_attention() -> Result<()> {
    for case in CASES {
        check_case(case)?;
    }
    Ok(())
}

/// A prefix whose shape does not fit the queries is an error, not a panic or a wrong answer.
#[test]
fn a_prefix_of_another_shape_is_refused() -> Result<()> {
    let q = randn(&[2, 4, 3, 16], 1)?;
    let k = randn(&[2, 2, 3, 16], 2)?;
    let pk = randn(&[2, 2, 5, 8], 3)?; // head dim 8, not 16
    ensure!(fused::causal_attention_after_prefix(&q, (&pk, &pk), &k, &k, 0.25).is_err());
    let pk = randn(&[3, 2, 5, 16], 4)?; // batch 3 for a batch of 2
    ensure!(fused::causal_attention_after_prefix(&q, (&pk, &pk), &k, &k, 0.25).is_err());
    Ok(())
}

/// The composed path (`SIGHTLINE_FLASH_ATTENTION=off`) passes the same checks: run in a child.
#[test]
fn composed_path_passes_the_same_checks() {
    if std::env::var_os("SIGHTLINE_FLASH_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "tiled_attention_equals_dense_attention",
            "--nocapture",
        ])
        .env("SIGHTLINE_FLASH_ATTENTION", "off")
        .env("SIGHTLINE_FLASH_CHILD", "1")
        .output()
        .expect("child runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child ran no test"
    );
}
