//! LLaMA's MLP activation, SwiGLU: `silu(gate) · up` in one pass each way.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{bf16_forward, slice, with_f32, CResult, Path};

/// `silu(gate) · up`. With `σ = sigmoid(gate)`: `d gate = g · up · σ · (1 + gate · (1 − σ))`,
/// `d up = g · gate · σ`.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (gate, up) = (slice(gs, gl)?, slice(us, ul)?);
        if gate.len() != up.len() {
            candle_core::bail!("swiglu: gate {:?}, up {:?}", gl.shape(), ul.shape());
        }
        let mut y = vec![0f32; gate.len()];
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                for i in 0..y.len() {
                    y[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
                }
            });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        const CHUNK: usize = 1 << 14;
        with_f32(gate, |ga| {
            with_f32(up, |u| {
                with_f32(grad, |g| {
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .zip(
                            ga.par_chunks(CHUNK)
                                .zip(u.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))),
                        )
                        .for_each(|((dg, du), (ga, (u, g)))| {
                            for i in 0..dg.len() {
                                let s = 1.0 / (1.0 + (-ga[i]).exp());
                                du[i] = g[i] * ga[i] * s;
                                dg[i] = g[i] * u[i] * s * (1.0 + ga[i] * (1.0 - s));
                            }
                        });
                    Ok(())
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

/// LLaMA's MLP activation `silu(gate) · up` (composed when not on the CPU in f32).
///
/// One pass on CPU f32 (forward only or with backward), candle's `silu` and `mul` otherwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    if gate.shape() != up.shape() {
        return gate.silu()? * up;
    }
    if bf16_forward(&[gate, up]) {
        return gate
            .contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &crate::bf16::Bf16SwiGlu);
    }
    match Path::of(&[gate, up]) {
        Path::Forward => gate
            .contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &SwiGlu),
        Path::WithBackward => gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu),
        // bf16 training on the CPU: a bf16 op with its backward, roundings as autocast's.
        Path::Candle => match crate::bf16::bf16_swiglu_trainable(gate, up)? {
            Some(y) => Ok(y),
            None => gate.silu()? * up,
        },
    }
}
