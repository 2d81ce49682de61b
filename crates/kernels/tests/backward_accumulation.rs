//! The vendored candle-core's backward pass (vendor/README.md): a node's first gradient is
//! stored as it is, later ones are added, and a subtraction's first gradient is negated. These
//! check the sums on a graph where arguments have one, two and three consumers, through add,
//! sub, mul, neg, a transpose (a strided first gradient) and a broadcast.

use candle_core::{DType, Device, Result, Tensor, Var};

#[test]
fn gradients_sum_over_every_use() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_slice(&[1.5f32, -2.0, 0.25, 3.0, -0.5, 1.0], (2, 3), &dev)?;
    let w = Var::from_slice(&[0.5f32, -1.0, 2.0], 3, &dev)?;
    // f = sum(x*x - x) + sum(-(xᵀ)) + sum(x * w) - sum(w)
    let xt = x.as_tensor().t()?;
    let f = ((x.as_tensor() * x.as_tensor())? - x.as_tensor())?.sum_all()?;
    let f = (f + xt.neg()?.sum_all()?)?;
    let f = (f + x.as_tensor().broadcast_mul(w.as_tensor())?.sum_all()?)?;
    let f = (f - w.as_tensor().sum_all()?)?;
    let grads = f.backward()?;

    let gx: Vec<Vec<f32>> = grads.get(&x).expect("x has a gradient").to_vec2()?;
    let xs = x.as_tensor().to_vec2::<f32>()?;
    let ws = w.as_tensor().to_vec1::<f32>()?;
    for (i, row) in gx.iter().enumerate() {
        for (j, &g) in row.iter().enumerate() {
            // d/dx: 2x - 1 - 1 + w
            assert_eq!(g, 2.0 * xs[i][j] - 2.0 + ws[j], "dx[{i}][{j}]");
        }
    }
    let gw: Vec<f32> = grads.get(&w).expect("w has a gradient").to_vec1()?;
    for (j, &g) in gw.iter().enumerate() {
        // d/dw: sum over rows of x, minus 1
        assert_eq!(g, xs[0][j] + xs[1][j] - 1.0, "dw[{j}]");
    }
    Ok(())
}

/// A gradient that reaches a variable only through a transpose arrives strided; the stored
/// gradient is contiguous, with the variable's shape.
#[test]
fn a_strided_first_gradient_is_stored_contiguous() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::ones((2, 3), DType::F32, &dev)?;
    let m = Tensor::arange(0f32, 6.0, &dev)?.reshape((3, 2))?;
    let f = (x.as_tensor().t()? * &m)?.sum_all()?;
    let grads = f.backward()?;
    let g = grads.get(&x).expect("x has a gradient");
    assert!(g.is_contiguous());
    assert_eq!(g.dims(), &[2, 3]);
    assert_eq!(g.to_vec2::<f32>()?, [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]);
    Ok(())
}
