//! The vendored candle-core's copy of a matrix read with its last two dims swapped
//! (vendor/README.md, patch 3: `t().contiguous()` through 8×8 blocks, bands in parallel). Every
//! value must land where the element-by-element definition puts it: shapes that are and are not
//! multiples of 8, batches, views that start inside their storage, and 2-, 4- and 8-byte types.

use candle_core::{DType, Device, IndexOp, Result, Tensor};

/// `[.., a, b]` → its `t()` made contiguous, checked against indexing the source.
fn check(src: &Tensor) -> Result<()> {
    let got = src.t()?.contiguous()?;
    let (a, b) = src.dims2().or_else(|_| {
        let d = src.dims();
        Ok::<_, candle_core::Error>((d[d.len() - 2], d[d.len() - 1]))
    })?;
    let batch = src.elem_count() / (a * b);
    let s = src.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let g = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    for k in 0..batch {
        for i in 0..b {
            for j in 0..a {
                let (want, have) = (s[k * a * b + j * b + i], g[k * a * b + i * a + j]);
                assert_eq!(
                    want.to_bits(),
                    have.to_bits(),
                    "{:?} {:?}: matrix {k}, [{i}][{j}]",
                    src.dims(),
                    src.dtype()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn transposed_copies_put_every_value_in_place() -> Result<()> {
    let dev = Device::Cpu;
    for &(batch, a, b) in &[
        (1, 2, 2),
        (1, 8, 8),
        (1, 3, 17),
        (1, 17, 3),
        (1, 64, 40),
        (3, 16, 9),
        (2, 9, 16),
        (1, 300, 264),
        (2, 13, 11),
    ] {
        let n = batch * a * b;
        let values: Vec<f32> = (0..n).map(|v| v as f32 * 0.5 - 7.0).collect();
        let t = Tensor::from_vec(values, (batch, a, b), &dev)?;
        for dtype in [DType::F32, DType::BF16, DType::F64, DType::U32] {
            let t = if dtype == DType::U32 {
                t.abs()?
            } else {
                t.clone()
            };
            let t = t.to_dtype(dtype)?;
            check(&t)?;
            check(&t.squeeze(0).unwrap_or(t.clone()))?;
        }
    }
    Ok(())
}

/// A view that starts inside its storage (a narrowed batch, a single matrix of a batch).
#[test]
fn transposed_copies_of_views_start_at_their_offset() -> Result<()> {
    let dev = Device::Cpu;
    let t = Tensor::arange(0f32, (5 * 24 * 16) as f32, &dev)?.reshape((5, 24, 16))?;
    check(&t.narrow(0, 2, 3)?)?;
    check(&t.i(3)?)?;
    check(&t.i(4)?)?;
    Ok(())
}
