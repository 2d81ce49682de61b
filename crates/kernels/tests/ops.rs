//! Every kernel of `sightline-kernels` against the composed candle ops it replaces (forward and
//! gradients, ≤ 1e-5 relative), against central finite differences, and its forward-only path
//! (nothing tracks a gradient) against its path with a backward.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use sightline_kernels as fused;

mod common;
use common::randn;

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
    // Tables [t, d/2]: angles pos · inv_freq.
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for p in 0..t {
        for i in 0..d / 2 {
            let a = p as f32 / 10000f32.powf(2.0 * i as f32 / d as f32);
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (t, d / 2), &Device::Cpu)?;
    let sin = Tensor::from_vec(sin, (t, d / 2), &Device::Cpu)?;
    let x = randn(&[2, 3, t, d], 3)?;
    let (c1, s1) = (cos.clone(), sin.clone());
    // HF's composed form, on [t, d] tables that repeat each half.
    let cos_full = Tensor::cat(&[&cos, &cos], 1)?;
    let sin_full = Tensor::cat(&[&sin, &sin], 1)?;
    check(
        "rope",
        &|a| fused::rope(&a[0], &c1, &s1),
        &|a| {
            let x1 = a[0].narrow(D::Minus1, 0, d / 2)?;
            let x2 = a[0].narrow(D::Minus1, d / 2, d / 2)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            a[0].broadcast_mul(&cos_full)? + rotated.broadcast_mul(&sin_full)?
        },
        &[x],
    )
}

/// RoPE with the head transpose: the forward-only kernel (which reads the tables at an offset)
/// agrees with candle's `rope_slow` on the transposed copy, and so does the path with gradients.
#[test]
fn rope_to_heads_matches_candle_rope() -> Result<()> {
    let (b, t, h, d, offset) = (2, 5, 3, 16, 4);
    let x = randn(&[b, t, h, d], 21)?;
    let cos = randn(&[12, d / 2], 22)?;
    let sin = randn(&[12, d / 2], 23)?;
    let fast = fused::rope_to_heads(&x, &cos, &sin, offset)?;
    let want = candle_nn::rotary_emb::rope_slow(
        &x.transpose(1, 2)?.contiguous()?,
        &cos.narrow(0, offset, t)?,
        &sin.narrow(0, offset, t)?,
    )?;
    ensure!(rel(&fast, &want)? < 1e-6, "forward-only path");
    let xv = Var::from_tensor(&x)?;
    let tracked = fused::rope_to_heads(xv.as_tensor(), &cos, &sin, offset)?;
    ensure!(tracked.track_op(), "no graph recorded");
    ensure!(rel(&tracked, &want)? < 1e-6, "path with gradients");
    Ok(())
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

#[test]
fn layer_norm_matches_composed_and_finite_differences() -> Result<()> {
    // A large common offset: the two-pass variance must not cancel.
    let x = (randn(&[6, 16], 15)? + 30.0)?;
    let w = (randn(&[16], 16)? + 1.0)?;
    let b = randn(&[16], 17)?;
    let eps = 1e-5;
    check(
        "layer_norm",
        &|a| fused::layer_norm(&a[0], &a[1], &a[2], eps),
        &|a| {
            let mean = a[0].mean_keepdim(D::Minus1)?;
            let c = a[0].broadcast_sub(&mean)?;
            let var = c.sqr()?.mean_keepdim(D::Minus1)?;
            c.broadcast_div(&(var + eps)?.sqrt()?)?
                .broadcast_mul(&a[1])?
                .broadcast_add(&a[2])
        },
        &[x, w, b],
    )
}

/// Reference attention at the usual `1/sqrt(d)` scale (see `common::dense_attention`).
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
    let d = q.dim(3)?;
    common::dense_attention(q, k, v, offset, 1.0 / (d as f64).sqrt())
}

/// Every attention path (fused forward-only kernel, composed forward-only, with gradients at
/// offset 0 and after a cached prefix) agrees with the reference, GQA included.
#[test]
fn causal_attention_paths_agree() -> Result<()> {
    for (d, offset) in [(24, 3), (24, 0), (64, 5), (64, 0)] {
        let (b, h, kvh, t) = (2, 4, 2, 5);
        let q = randn(&[b, h, t, d], 31)?;
        let k = randn(&[b, kvh, offset + t, d], 32)?;
        let v = randn(&[b, kvh, offset + t, d], 33)?;
        let scale = 1.0 / (d as f64).sqrt();
        let want = reference_attention(&q, &k, &v, offset)?;
        let fast = fused::causal_attention(&q, &k, &v, offset, scale)?;
        let d1 = rel(&fast, &want)?;
        ensure!(
            d1 < 1e-5,
            "d {d} offset {offset}: forward-only differs by {d1:.2e}"
        );
        let qv = Var::from_tensor(&q)?;
        let tracked = fused::causal_attention(qv.as_tensor(), &k, &v, offset, scale)?;
        ensure!(tracked.track_op(), "no graph recorded");
        let d2 = rel(&tracked, &want)?;
        ensure!(
            d2 < 1e-5,
            "d {d} offset {offset}: tracked differs by {d2:.2e}"
        );
    }
    Ok(())
}

/// Gradients through the whole attention (q, k and v) against the reference and finite
/// differences.
#[test]
fn causal_attention_gradients() -> Result<()> {
    let (b, h, kvh, t, d) = (1, 4, 2, 4, 8);
    let q = randn(&[b, h, t, d], 41)?;
    let k = randn(&[b, kvh, t, d], 42)?;
    let v = randn(&[b, kvh, t, d], 43)?;
    let scale = 1.0 / (d as f64).sqrt();
    check(
        "causal_attention",
        &|a| fused::causal_attention(&a[0], &a[1], &a[2], 0, scale),
        &|a| {
            reference_attention(&a[0], &a[1], &a[2], 0)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        },
        &[q, k, v],
    )
}

/// The forward-only path of each op gives the values of its path with a backward.
#[test]
fn forward_only_paths_match_paths_with_backward() -> Result<()> {
    let x = randn(&[6, 16], 51)?;
    let w = (randn(&[16], 52)? + 1.0)?;
    let b = randn(&[16], 53)?;
    let xv = Var::from_tensor(&x)?;
    let pairs: Vec<(&str, Tensor, Tensor)> = vec![
        (
            "rms_norm",
            fused::rms_norm(&x, &w, 1e-6)?,
            fused::rms_norm(xv.as_tensor(), &w, 1e-6)?,
        ),
        (
            "layer_norm",
            fused::layer_norm(&x, &w, &b, 1e-5)?,
            fused::layer_norm(xv.as_tensor(), &w, &b, 1e-5)?,
        ),
        (
            "swiglu",
            fused::swiglu(&x, &x)?,
            fused::swiglu(xv.as_tensor(), &x)?,
        ),
        (
            "causal_softmax",
            fused::causal_softmax(&x.reshape((1, 6, 16))?.narrow(2, 0, 6)?)?,
            fused::causal_softmax(&xv.as_tensor().reshape((1, 6, 16))?.narrow(2, 0, 6)?)?,
        ),
        (
            "cross_entropy",
            fused::cross_entropy_rows(&x, &[0, 1, 2, 3, 4, 5])?,
            fused::cross_entropy_rows(xv.as_tensor(), &[0, 1, 2, 3, 4, 5])?,
        ),
        (
            "frozen_linear",
            fused::frozen_linear(&x, &randn(&[3, 16], 54)?)?,
            fused::frozen_linear(xv.as_tensor(), &randn(&[3, 16], 54)?)?,
        ),
    ];
    for (name, fast, tracked) in pairs {
        ensure!(!fast.track_op() && tracked.track_op(), "{name}: wrong path");
        let d = rel(&fast, &tracked)?;
        ensure!(d <= 1e-6, "{name}: paths differ by {d:.2e}");
    }
    Ok(())
}

/// bf16 with gradients (mixed-precision training) goes through f32: RMSNorm and the causal
/// softmax equal the f32 op rounded to bf16 once (a bf16 mean of squares or exp-sum would round
/// every partial sum), and their gradients reach the bf16 inputs, equal to the f32 gradients
/// rounded to bf16.
#[test]
fn bf16_with_gradients_computes_norm_and_softmax_in_f32() -> Result<()> {
    let bf = |t: &Tensor| t.to_dtype(DType::BF16);
    let up = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    };
    let (x, w) = (bf(&randn(&[6, 40], 1)?)?, bf(&(randn(&[40], 2)? + 1.5)?)?);
    let r = bf(&randn(&[6, 40], 3)?)?;
    let norm = |a: &[Tensor]| fused::rms_norm(&a[0], &a[1], 1e-6);
    let (y16, g16) = grads(&norm, &[x.clone(), w.clone()], &r)?;
    let (x32, w32, r32) = (
        x.to_dtype(DType::F32)?,
        w.to_dtype(DType::F32)?,
        r.to_dtype(DType::F32)?,
    );
    let (y32, g32) = grads(&norm, &[x32, w32], &r32)?;
    ensure!(y16.dtype() == DType::BF16 && g16[0].dtype() == DType::BF16);
    ensure!(
        up(&y16)? == up(&bf(&y32)?)?,
        "rms_norm: not the f32 result rounded once"
    );
    for (a, b) in g16.iter().zip(&g32) {
        ensure!(
            up(a)? == up(&bf(b)?)?,
            "rms_norm: gradient not the f32 one rounded"
        );
    }
    let s = bf(&(randn(&[2, 3, 5, 5], 4)? * 4.0)?)?;
    let rs = bf(&randn(&[2, 3, 5, 5], 5)?)?;
    let soft = |a: &[Tensor]| fused::causal_softmax(&a[0]);
    let (p16, gs16) = grads(&soft, std::slice::from_ref(&s), &rs)?;
    let (p32, gs32) = grads(&soft, &[s.to_dtype(DType::F32)?], &rs.to_dtype(DType::F32)?)?;
    ensure!(
        up(&p16)? == up(&bf(&p32)?)?,
        "causal_softmax: not the f32 result rounded once"
    );
    ensure!(
        up(&gs16[0])? == up(&bf(&gs32[0])?)?,
        "causal_softmax: gradient not the f32 one rounded"
    );
    Ok(())
}
