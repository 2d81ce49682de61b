//! The fused ops of `sightline_train::fused` against the composed candle ops they replace
//! (forward and gradients, ≤ 1e-5 relative) and against central finite differences.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use sightline_train::fused;

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
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

/// max |a - b| / max(max |b|, tiny): relative to the reference's scale.
fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    ensure!(a.len() == b.len(), "lengths {} vs {}", a.len(), b.len());
    let scale = b.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f32::max))
}

/// `L = Σ f(args) · r`: its gradient w.r.t. each argument through candle's backward.
fn grads(
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    args: &[Tensor],
    r: &Tensor,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = args
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let store = (y.clone() * r)?.sum_all()?.backward()?;
    let gs = vars
        .iter()
        .map(|v| store.get(v.as_tensor()).cloned().context("no gradient"))
        .collect::<Result<Vec<_>>>()?;
    Ok((y, gs))
}

/// Compares a fused op with its composed form (forward and every gradient) and the fused
/// gradient of argument `fd_arg` with central finite differences of the fused forward.
fn check(
    name: &str,
    fused_op: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    composed: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    args: &[Tensor],
) -> Result<()> {
    let out_shape = fused_op(args)?.shape().clone();
    let r = randn(out_shape.dims(), 99)?;
    let (y1, g1) = grads(fused_op, args, &r)?;
    let (y2, g2) = grads(composed, args, &r)?;
    let d = rel(&y1, &y2)?;
    eprintln!("{name}: forward rel diff {d:.2e}");
    ensure!(d <= 1e-5, "{name}: forward differs by {d:.2e}");
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        let d = rel(a, b)?;
        eprintln!("{name}: grad {i} rel diff {d:.2e}");
        ensure!(d <= 1e-5, "{name}: gradient {i} differs by {d:.2e}");
    }
    // Finite differences in f32, h = 1e-2: truncation and rounding both ~1e-4 relative.
    let rv = r.flatten_all()?.to_vec1::<f32>()?;
    let loss = |args: &[Tensor]| -> Result<f64> {
        let y = fused_op(args)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(y.iter().zip(&rv).map(|(a, b)| *a as f64 * *b as f64).sum())
    };
    for (k, g) in g1.iter().enumerate() {
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        let x0 = args[k].flatten_all()?.to_vec1::<f32>()?;
        let scale = g.iter().fold(1e-30f32, |m, x| m.max(x.abs())) as f64;
        let h = 1e-2f32;
        let mut worst = 0f64;
        for i in 0..x0.len() {
            let eval = |delta: f32| -> Result<f64> {
                let mut x = x0.clone();
                x[i] += delta;
                let mut a = args.to_vec();
                a[k] = Tensor::from_vec(x, args[k].shape(), &Device::Cpu)?;
                loss(&a)
            };
            let fd = (eval(h)? - eval(-h)?) / (2.0 * h as f64);
            worst = worst.max((fd - g[i] as f64).abs() / scale);
        }
        eprintln!("{name}: grad {k} vs finite differences {worst:.2e}");
        ensure!(
            worst < 2e-3,
            "{name}: grad {k} off finite differences by {worst:.2e}"
        );
    }
    Ok(())
}

#[test]
fn rms_norm_matches_composed_and_finite_differences() -> Result<()> {
    let x = randn(&[6, 16], 1)?;
    let w = (randn(&[16], 2)? + 1.0)?;
    let eps = 1e-6;
    check(
        "rms_norm",
        &|a| fused::rms_norm(&a[0], &a[1], eps),
        &|a| {
            let var = a[0].sqr()?.mean_keepdim(D::Minus1)?;
            a[0].broadcast_div(&(var + eps)?.sqrt()?)?
                .broadcast_mul(&a[1])
        },
        &[x, w],
    )
}

#[test]
fn rope_matches_composed_and_finite_differences() -> Result<()> {
    let (t, d) = (5, 8);
    // HF tables: angles pos · inv_freq, each half repeated.
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for p in 0..t {
        for _ in 0..2 {
            for i in 0..d / 2 {
                let a = p as f32 / 10000f32.powf(2.0 * i as f32 / d as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (t, d), &Device::Cpu)?;
    let sin = Tensor::from_vec(sin, (t, d), &Device::Cpu)?;
    let x = randn(&[2, 3, t, d], 3)?;
    let (c1, s1) = (cos.clone(), sin.clone());
    check(
        "rope",
        &|a| fused::rope(&a[0], &c1, &s1),
        &|a| {
            let x1 = a[0].narrow(D::Minus1, 0, d / 2)?;
            let x2 = a[0].narrow(D::Minus1, d / 2, d / 2)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            a[0].broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
        },
        &[x],
    )
}

#[test]
fn cross_entropy_matches_composed_and_finite_differences() -> Result<()> {
    let logits = (randn(&[5, 11], 4)? * 3.0)?;
    let targets = vec![0u32, 10, 3, 3, 7];
    let tgt = Tensor::from_vec(targets.clone(), (5, 1), &Device::Cpu)?;
    check(
        "cross_entropy",
        &|a| fused::cross_entropy_rows(&a[0], &targets),
        &|a| {
            candle_nn::ops::log_softmax(&a[0], D::Minus1)?
                .gather(&tgt, 1)?
                .squeeze(1)?
                .neg()
        },
        &[logits],
    )
}

#[test]
fn cross_entropy_rejects_out_of_range_targets() -> Result<()> {
    let logits = randn(&[2, 4], 5)?;
    assert!(fused::cross_entropy_rows(&logits, &[0, 4]).is_err());
    assert!(fused::cross_entropy_rows(&logits, &[0]).is_err());
    Ok(())
}

/// Same values and input gradient as `x · Wᵀ`, but the frozen weight gets no gradient at all
/// (candle's matmul computes one and leaves it in the store).
#[test]
fn frozen_linear_skips_the_weight_gradient() -> Result<()> {
    let x = Var::from_tensor(&randn(&[7, 6], 6)?)?;
    let w = randn(&[4, 6], 7)?;
    let r = randn(&[7, 4], 8)?;
    let y1 = fused::frozen_linear(x.as_tensor(), &w)?;
    let s1 = (&y1 * &r)?.sum_all()?.backward()?;
    let wt = w.t()?;
    let y2 = x.as_tensor().matmul(&wt)?;
    let s2 = (&y2 * &r)?.sum_all()?.backward()?;
    assert_eq!(rel(&y1, &y2)?, 0.0);
    let (g1, g2) = (
        s1.get(x.as_tensor()).context("x grad")?,
        s2.get(x.as_tensor()).context("x grad")?,
    );
    assert!(rel(g1, g2)? <= 1e-6);
    assert!(
        s2.get(&wt).is_some(),
        "candle's matmul no longer computes W's gradient"
    );
    assert!(s1.get(&w).is_none() && s1.get(&wt).is_none());
    // Without anything to differentiate it is the plain matmul.
    let y3 = fused::frozen_linear(&randn(&[3, 6], 9)?, &w)?;
    assert_eq!(y3.dims(), &[3, 4]);
    Ok(())
}

/// Non-f32 inputs take the composed path and still agree.
#[test]
fn f64_falls_back_to_composed_ops() -> Result<()> {
    let x = randn(&[3, 8], 10)?;
    let w = randn(&[8], 11)?;
    let a = fused::rms_norm(&x, &w, 1e-6)?;
    let b = fused::rms_norm(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?, 1e-6)?;
    assert_eq!(b.dtype(), DType::F64);
    assert!(rel(&a, &b.to_dtype(DType::F32)?)? <= 1e-6);
    Ok(())
}

#[test]
fn causal_softmax_matches_composed_and_finite_differences() -> Result<()> {
    // [b, kvh, n_rep·t, t] with n_rep = 2, t = 4: row r is position r % 4.
    let (rows, t) = (8, 4);
    let scores = (randn(&[2, 1, rows, t], 12)? * 2.0)?;
    let mut m = vec![0f32; rows * t];
    for r in 0..rows {
        for v in &mut m[r * t + r % t + 1..(r + 1) * t] {
            *v = f32::NEG_INFINITY;
        }
    }
    let mask = Tensor::from_vec(m, (rows, t), &Device::Cpu)?;
    check(
        "causal_softmax",
        &|a| fused::causal_softmax(&a[0]),
        &|a| candle_nn::ops::softmax(&a[0].broadcast_add(&mask)?, D::Minus1),
        &[scores],
    )
}

#[test]
fn swiglu_matches_composed_and_finite_differences() -> Result<()> {
    let gate = (randn(&[5, 7], 13)? * 3.0)?;
    let up = randn(&[5, 7], 14)?;
    check(
        "swiglu",
        &|a| fused::swiglu(&a[0], &a[1]),
        &|a| a[0].silu()? * &a[1],
        &[gate, up],
    )
}
