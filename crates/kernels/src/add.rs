//! `a + b` of two same-shape CPU f32 tensors on rayon's threads: the decoder's residual adds
//! and LoRA's `base + delta`.
//!
//! Why not candle's add: candle runs its elementwise ops on a thread pool of its own, with a
//! barrier per op, while our kernels and gemm run on rayon's. In an f32 training step the two
//! pools take turns many times per layer, and on 2 cores the hand-offs showed in `perf` of a
//! SmolLM2-135M LoRA step as ~5% scheduler time and ~1% barriers next to the adds' own ~4%
//! (seven LoRA adds and two residual adds per layer). The sum is the same IEEE add.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{slice, CResult, Path};

/// Values per parallel task; below [`PARALLEL_FROM`] values one task does it all.
const CHUNK: usize = 1 << 15;
const PARALLEL_FROM: usize = 1 << 16;

/// One task's slices of `a` and `b`.
type Operands<'a> = (&'a [f32], &'a [f32]);

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (a, b) = (slice(s1, l1)?, slice(s2, l2)?);
        if l1.shape() != l2.shape() || a.len() != b.len() {
            candle_core::bail!("add: {:?} and {:?}", l1.shape(), l2.shape());
        }
        // Written without zeroing first: the chunks of `y` are as long as those of `a`.
        let mut y: Vec<f32> = Vec::with_capacity(a.len());
        let add = |(y, (a, b)): (&mut [MaybeUninit<f32>], Operands)| {
            for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                y.write(a + b);
            }
        };
        if a.len() >= PARALLEL_FROM {
            y.spare_capacity_mut()
                .par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(add);
        } else {
            add((y.spare_capacity_mut(), (a, b)));
        }
        // SAFETY: the chunks above cover all `a.len()` values and wrote each.
        unsafe { y.set_len(a.len()) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// `a + b`: on the CPU in f32 with equal shapes, one pass on rayon's threads (with its
/// backward when an input tracks a gradient); otherwise candle's add (broadcasting rules and
/// errors included).
pub fn add(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    if a.shape() != b.shape() {
        return a + b;
    }
    match Path::of(&[a, b]) {
        Path::Forward => a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &Add),
        Path::WithBackward => a.contiguous()?.apply_op2(&b.contiguous()?, Add),
        Path::Candle => a + b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same bits as candle's add, small and large (parallel), and the gradient of each
    /// input is the output's.
    #[test]
    fn adds_like_candle_and_passes_the_gradient_to_both() -> CResult<()> {
        let dev = Device::Cpu;
        for n in [7usize, 3 * PARALLEL_FROM + 5] {
            let a = Var::from_vec((0..n).map(|i| i as f32 * 0.37 - 5.0).collect(), n, &dev)?;
            let b = Tensor::from_vec((0..n).map(|i| (i % 13) as f32 * -0.11).collect(), n, &dev)?;
            let want = (a.as_tensor() + &b)?.to_vec1::<f32>()?;
            let got = add(a.as_tensor(), &b)?;
            let same = got
                .to_vec1::<f32>()?
                .iter()
                .zip(&want)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{n} values");
            let w = Tensor::from_vec((0..n).map(|i| (i % 5) as f32).collect(), n, &dev)?;
            let grads = (got * &w)?.sum_all()?.backward()?;
            let ga = grads.get(&a).expect("a's gradient").to_vec1::<f32>()?;
            assert_eq!(ga, w.to_vec1::<f32>()?);
        }
        Ok(())
    }
}
