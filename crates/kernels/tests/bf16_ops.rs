//! The bf16 forward path (linear layers on the bf16 GEMM, RMSNorm, SwiGLU) against PyTorch's
//! bf16 CPU kernels on the same inputs (`scripts/reference/make_bf16_fixtures.py`).
//!
//! With a bf16 GEMM on this CPU the results must be PyTorch's bits, or one bf16 step away where
//! the two f32 computations land on opposite sides of a rounding boundary (a different
//! summation order, `1/sqrt` vs `rsqrt`, exp's last ulp). Without one (or with
//! `SIGHTLINE_BF16_GEMM=off`) candle's bf16 ops run and only the looser bound is checked.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use half::bf16;
use serde_json::Value;
use sightline_kernels::gemm_bf16::Bf16Gemm;

fn fixture() -> Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/bf16/ops.json"
    );
    let text = std::fs::read_to_string(path).with_context(|| path.to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn values(v: &Value) -> Result<Vec<bf16>> {
    v.as_array()
        .context("not a list")?
        .iter()
        .map(|b| {
            Ok(bf16::from_bits(
                b.as_u64().context("not a bit pattern")? as u16
            ))
        })
        .collect()
}

fn shape(v: &Value) -> Result<Vec<usize>> {
    v.as_array()
        .context("not a shape")?
        .iter()
        .map(|d| Ok(d.as_u64().context("not a dimension")? as usize))
        .collect()
}

fn tensor(v: &Value, dims: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(values(v)?, dims, &Device::Cpu)?)
}

/// Distance in bf16 steps (same sign assumed for the nonzero values compared here).
fn steps(a: bf16, b: bf16) -> u32 {
    (a.to_bits() as i32 - b.to_bits() as i32).unsigned_abs()
}

/// Checks `got` against torch's `want`: with the fast path, every value within one bf16 step
/// and at least `min_exact` of them equal; without it, within 1% relative.
fn compare(name: &str, got: &Tensor, want: &[bf16], min_exact: f64) -> Result<()> {
    assert_eq!(got.dtype(), DType::BF16, "{name}");
    let got: Vec<bf16> = got.flatten_all()?.to_vec1()?;
    assert_eq!(got.len(), want.len(), "{name}");
    if !Bf16Gemm::detect().is_available() {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (g.to_f32(), w.to_f32());
            assert!(
                (g - w).abs() <= 1e-2 * w.abs().max(1.0),
                "{name}[{i}]: {g} vs {w}"
            );
        }
        return Ok(());
    }
    let mut exact = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(steps(*g, *w) <= 1, "{name}[{i}]: {g} vs torch {w}");
        exact += usize::from(g == w);
    }
    let share = exact as f64 / want.len() as f64;
    assert!(
        share >= min_exact,
        "{name}: {exact} of {} equal to torch's bits",
        want.len()
    );
    Ok(())
}

#[test]
fn rms_norm_is_transformers_llama_rms_norm_in_bf16() -> Result<()> {
    let f = &fixture()?["rms_norm"];
    let x = tensor(&f["x"], &shape(&f["x_shape"])?)?;
    let w = tensor(&f["w"], &[x.dim(1)?])?;
    let eps = f["eps"].as_f64().context("eps")?;
    let y = sightline_kernels::rms_norm(&x, &w, eps)?;
    compare("rms_norm", &y, &values(&f["y"])?, 0.98)
}

#[test]
fn swiglu_is_silu_times_up_in_bf16() -> Result<()> {
    let f = &fixture()?["silu_mul"];
    let dims = shape(&f["shape"])?;
    let (g, u) = (tensor(&f["gate"], &dims)?, tensor(&f["up"], &dims)?);
    let y = sightline_kernels::swiglu(&g, &u)?;
    compare("silu_mul", &y, &values(&f["y"])?, 0.98)
}

#[test]
fn linear_is_torch_bf16_linear() -> Result<()> {
    let f = &fixture()?["linear"];
    let x = tensor(&f["x"], &shape(&f["x_shape"])?)?;
    let w = tensor(&f["w"], &shape(&f["w_shape"])?)?;
    let y = sightline_kernels::frozen_linear(&x, &w)?;
    compare("linear", &y, &values(&f["y"])?, 0.9)
}

/// The fused bf16 RoPE (rotation + transpose in one pass) gives candle-nn's bf16 `rope` bits —
/// the path it replaced — which rounds as PyTorch's `q·cos + rotate_half(q)·sin` in bf16 does.
#[test]
fn rope_to_heads_in_bf16_equals_candle_rope_bit_for_bit() -> Result<()> {
    let (b, t, h, d, positions, offset) = (2, 7, 3, 16, 12, 4);
    let wave =
        |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin() * 2.5).collect() };
    let dev = Device::Cpu;
    let x =
        Tensor::from_vec(wave(b * t * h * d, 0.37), (b, t, h, d), &dev)?.to_dtype(DType::BF16)?;
    let cos = Tensor::from_vec(wave(positions * d / 2, 0.11), (positions, d / 2), &dev)?
        .to_dtype(DType::BF16)?;
    let sin = Tensor::from_vec(wave(positions * d / 2, 0.23), (positions, d / 2), &dev)?
        .to_dtype(DType::BF16)?;
    let got = sightline_kernels::rope_to_heads(&x, &cos, &sin, offset)?;
    let want = candle_nn::rotary_emb::rope(
        &x.transpose(1, 2)?.contiguous()?,
        &cos.narrow(0, offset, t)?.contiguous()?,
        &sin.narrow(0, offset, t)?.contiguous()?,
    )?;
    anyhow::ensure!(got.dims() == [b, h, t, d], "shape {:?}", got.shape());
    let (g, w) = (
        got.flatten_all()?.to_vec1::<bf16>()?,
        want.flatten_all()?.to_vec1::<bf16>()?,
    );
    let differ = g
        .iter()
        .zip(&w)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    anyhow::ensure!(
        differ == 0,
        "{differ} of {} values differ from candle's bf16 rope",
        g.len()
    );
    Ok(())
}

/// Seeded bf16 values in [-2, 2).
fn bf16_values(n: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32((s >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
        })
        .collect()
}

/// `a: [r, c]` transposed.
fn transposed(a: &[bf16], r: usize, c: usize) -> Vec<bf16> {
    (0..c)
        .flat_map(|j| (0..r).map(move |i| a[i * c + j]))
        .collect()
}

/// The trainable bf16 linear layer (mixed-precision training) on the bf16 GEMM: its forward
/// and both gradients equal the exact bf16-product / f32-sum reference, rounded to bf16 once,
/// bit for bit (`dX = dY·W`, `dW = dYᵀ·X`, as autocast's bf16 matmuls compute them); with a
/// frozen weight only x gets a gradient. Odd shapes, so every tile edge is crossed.
#[test]
fn trainable_bf16_linear_gradients_are_the_bf16_gemm_reference() -> Result<()> {
    use sightline_kernels::gemm_bf16::reference::matmul_nt_bf16_reference as reference;
    if !Bf16Gemm::detect().is_available() {
        eprintln!("no AVX512-BF16 on this CPU: the op is not used (candle's matmul is)");
        let x = Tensor::ones((2, 3), DType::BF16, &Device::Cpu)?;
        assert!(sightline_kernels::bf16_linear_trainable(&x, &x, true)?.is_none());
        return Ok(());
    }
    let round = |v: Vec<f32>| -> Vec<bf16> { v.into_iter().map(bf16::from_f32).collect() };
    for &(n, k, m) in &[(1, 1, 1), (17, 33, 65), (70, 130, 49)] {
        let (xv, wv) = (bf16_values(n * k, 1), bf16_values(m * k, 2));
        let gv = bf16_values(n * m, 3);
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(xv.clone(), (n, k), &dev)?)?;
        let w = candle_core::Var::from_tensor(&Tensor::from_vec(wv.clone(), (m, k), &dev)?)?;
        let y = sightline_kernels::bf16_linear_trainable(x.as_tensor(), w.as_tensor(), true)?
            .context("the op runs on this CPU")?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<bf16>()?,
            round(reference(&xv, &wv, n, k, m)),
            "forward {n}x{k}x{m}"
        );
        // Σ y ⊙ g has gradient g with respect to y.
        let g = Tensor::from_vec(gv.clone(), (n, m), &dev)?;
        let grads = (y * &g)?.sum_all()?.backward()?;
        let dx = grads.get(x.as_tensor()).context("dx")?;
        let dw = grads.get(w.as_tensor()).context("dw")?;
        assert_eq!(
            dx.flatten_all()?.to_vec1::<bf16>()?,
            round(reference(&gv, &transposed(&wv, m, k), n, m, k)),
            "dX {n}x{k}x{m}"
        );
        assert_eq!(
            dw.flatten_all()?.to_vec1::<bf16>()?,
            round(reference(
                &transposed(&gv, n, m),
                &transposed(&xv, n, k),
                m,
                n,
                k
            )),
            "dW {n}x{k}x{m}"
        );
        // A frozen weight: x's gradient alone.
        let frozen = Tensor::from_vec(wv.clone(), (m, k), &dev)?;
        let y = sightline_kernels::bf16_linear_trainable(x.as_tensor(), &frozen, false)?
            .context("the op runs")?;
        let grads = (y * &g)?.sum_all()?.backward()?;
        assert!(grads.get(&frozen).is_none());
        assert_eq!(
            grads
                .get(x.as_tensor())
                .context("dx")?
                .flatten_all()?
                .to_vec1::<bf16>()?,
            round(reference(&gv, &transposed(&wv, m, k), n, m, k)),
        );
    }
    Ok(())
}

/// SwiGLU in bf16 training (gradients wanted) rounds as autocast's bf16 `silu(g) * u` does:
/// `act = bf16(silu(g))`, `y = bf16(act·u)`; `d_up = bf16(dy·act)`, `d_act = bf16(dy·u)`,
/// `d_gate = bf16(d_act · silu'(g))` (f32 inside) — checked value by value against those
/// formulas (candle's composed bf16 silu rounds after every elementary step and differs).
#[test]
fn swiglu_with_gradients_in_bf16_rounds_as_autocast() -> Result<()> {
    let dev = Device::Cpu;
    let (n, d) = (5, 37);
    let (gv, uv, wv) = (
        bf16_values(n * d, 7),
        bf16_values(n * d, 8),
        bf16_values(n * d, 9),
    );
    let var = |v: &[bf16]| -> Result<candle_core::Var> {
        Ok(candle_core::Var::from_tensor(&Tensor::from_vec(
            v.to_vec(),
            (n, d),
            &dev,
        )?)?)
    };
    let (g, u) = (var(&gv)?, var(&uv)?);
    let w = Tensor::from_vec(wv.clone(), (n, d), &dev)?;
    let y = sightline_kernels::swiglu(g.as_tensor(), u.as_tensor())?;
    // d(Σ y⊙w)/dy = w exactly (bf16 times one).
    let grads = (&y * &w)?.sum_all()?.backward()?;
    let vals = |t: &Tensor| -> Result<Vec<bf16>> { Ok(t.flatten_all()?.to_vec1::<bf16>()?) };
    let (y, dg, du) = (
        vals(&y)?,
        vals(grads.get(g.as_tensor()).context("dgate")?)?,
        vals(grads.get(u.as_tensor()).context("dup")?)?,
    );
    let r = |x: f32| bf16::from_f32(x);
    for i in 0..n * d {
        let (x, ui, dy) = (gv[i].to_f32(), uv[i].to_f32(), wv[i].to_f32());
        let s = 1.0 / (1.0 + (-x).exp());
        let act = r(x * s).to_f32();
        let d_act = r(dy * ui).to_f32();
        let want_dg = d_act * s * (1.0 + x * (1.0 - s));
        assert_eq!(y[i], r(act * ui), "y[{i}]");
        assert_eq!(du[i], r(dy * act), "dup[{i}]");
        // σ from exp(-|x|) in the kernel against libm's here: within one bf16 step.
        let step = want_dg.abs() * 2f32.powi(-7) + 1e-30;
        assert!(
            (dg[i].to_f32() - want_dg).abs() <= step,
            "dgate[{i}]: {} vs {want_dg}",
            dg[i]
        );
    }
    Ok(())
}
