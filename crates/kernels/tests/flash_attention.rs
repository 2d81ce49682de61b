//! The tiled (flash-style) attention against dense attention: f32 within 1e-5 relative, bf16
//! within one bf16 rounding of the dense f32 result on the same bf16 inputs; head dimensions
//! that are and are not multiples of 16, query and key counts across the block edges (32 query
//! positions, 64 keys), GQA, decoding (one new token) and a cached prefix read in place (batch 1
//! shared by the whole batch, or one per sequence). Gradients (training: keys = the queries'
//! own positions) of q, k and v against the dense attention's, through candle's backward. The
//! same checks run in a child process with `SIGHTLINE_FLASH_ATTENTION=off` (the composed path),
//! so both paths are held to the reference.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, Var};
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
    if !fused::gemm_bf16::Bf16Gemm::detect().is_available() {
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

/// (b, h, kvh, t, d) for training: single positions, block edges (32 query rows, 64 keys: 33,
/// 64, 65, 130), GQA, head dimensions off the 16-lane grid.
const TRAINING_CASES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 8),
    (2, 4, 2, 5, 24),
    (1, 6, 1, 33, 64),
    (2, 4, 4, 64, 64),
    (1, 2, 2, 65, 80),
    (1, 4, 2, 130, 40),
    (2, 2, 1, 97, 128),
];

/// `Σ attention(q, k, v) ⊙ r` through candle's backward: (output, [dq, dk, dv]).
fn attention_grads(
    f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    qkv: [&Tensor; 3],
    r: &Tensor,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = qkv
        .iter()
        .map(|x| Var::from_tensor(x))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let y = f(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
    )?;
    let loss = (y.to_dtype(DType::F32)? * r)?.sum_all()?;
    let store = loss.backward()?;
    let gs = vars
        .iter()
        .map(|var| {
            store
                .get(var.as_tensor())
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no gradient"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, gs))
}

/// With gradients (training), the attention's output and its gradients with respect to q, k
/// and v equal the dense attention's: f32 within 1e-5 of the largest value; bf16 (when the bf16
/// GEMM is on, which bf16 training needs) within 1e-2 of the dense f32 gradients on the same
/// rounded inputs — the tiled backward reads the bf16-rounded output for `rowsum(dO ⊙ O)`, as
/// PyTorch's bf16 flash backward does, and rounds each gradient once.
#[test]
fn tiled_attention_gradients_equal_dense_gradients() -> Result<()> {
    let flash_on = std::env::var_os("SIGHTLINE_FLASH_ATTENTION").is_none();
    for &(b, h, kvh, t, d) in TRAINING_CASES {
        let seed = (b * 1000 + t * 10 + d) as u64 + 7;
        let q = randn(&[b, h, t, d], seed)?;
        let k = randn(&[b, kvh, t, d], seed + 1)?;
        let v = randn(&[b, kvh, t, d], seed + 2)?;
        let r = common::randn(&[b * t, h * d], seed + 3)?;
        let scale = 1.0 / (d as f64).sqrt();
        let case = format!("b {b} h {h} kvh {kvh} t {t} d {d}");
        let tiled = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
            Ok(fused::causal_attention(q, k, v, 0, scale)?)
        };
        let reference = |q: &Tensor, k: &Tensor, v: &Tensor| dense(q, k, v, 0, scale);
        let (y, g) = attention_grads(&tiled, [&q, &k, &v], &r)?;
        let (y_ref, g_ref) = attention_grads(&reference, [&q, &k, &v], &r)?;
        let e = rel(&y, &y_ref)?;
        ensure!(e < 1e-5, "{case}: f32 output differs by {e:.2e}");
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(g.iter().zip(&g_ref)) {
            let e = rel(a, b)?;
            ensure!(e < 1e-5, "{case}: f32 {name} differs by {e:.2e}");
        }
        // bf16 training attention (the composed bf16 path, flash off, rounds the scores to
        // bf16 between its matmuls, as PyTorch's eager bf16 attention does: not held to this).
        if !flash_on || !fused::gemm_bf16::Bf16Gemm::detect().is_available() {
            continue;
        }
        let round = |x: &Tensor| x.to_dtype(DType::BF16);
        let up = |x: &Tensor| x.to_dtype(DType::F32);
        let (qb, kb, vb) = (round(&q)?, round(&k)?, round(&v)?);
        let rb = up(&round(&r)?)?;
        let (y16, g16) = attention_grads(&tiled, [&qb, &kb, &vb], &rb)?;
        let (y32, g32) = attention_grads(&reference, [&up(&qb)?, &up(&kb)?, &up(&vb)?], &rb)?;
        ensure!(y16.dtype() == DType::BF16 && g16[0].dtype() == DType::BF16);
        let steps = bf16_steps(&y16, &y32)?;
        ensure!(
            steps <= 1.0,
            "{case}: bf16 output {steps:.2} rounding steps off"
        );
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(g16.iter().zip(&g32)) {
            let e = rel(a, b)?;
            ensure!(e < 1e-2, "{case}: bf16 {name} differs by {e:.2e}");
        }
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
            "tiled_attention_gradients_equal_dense_gradients",
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
        String::from_utf8_lossy(&out.stdout).contains("2 passed"),
        "child ran no test"
    );
}
