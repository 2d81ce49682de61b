//! LLaMA's MLP activation, SwiGLU: `silu(gate) · up` in one pass each way.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{bf16_forward, slice, with_f32, CResult, Path};
use crate::math::sigmoid;

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// `silu(gate) · up`. With `σ = sigmoid(gate)`: `d gate = g · up · σ · (1 + gate · (1 − σ))`,
/// `d up = g · gate · σ`. σ is [`sigmoid`]'s, whose `exp` vectorises (libm's scalar `expf`
/// took 1–1.4% of an f32 scoring pass or training step); it is a few f32 ulp from
/// `1 / (1 + exp(−gate))`.
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
        // Written without zeroing first: every chunk of `y` is as long as its chunk of `gate`.
        let mut y: Vec<f32> = Vec::with_capacity(gate.len());
        y.spare_capacity_mut()
            .par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                for i in 0..y.len() {
                    y[i].write(g[i] * sigmoid(g[i]) * u[i]);
                }
            });
        // SAFETY: the chunks above cover all `gate.len()` values and wrote each.
        unsafe { y.set_len(gate.len()) };
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
        // Written without zeroing first: every input has `n` values (checked), so the chunks
        // below cover both buffers.
        let (mut dg, mut du) = (Vec::<f32>::with_capacity(n), Vec::<f32>::with_capacity(n));
        with_f32(gate, |ga| {
            with_f32(up, |u| {
                with_f32(grad, |g| {
                    if ga.len() != n || u.len() != n || g.len() != n {
                        candle_core::bail!("swiglu: backward of {n} values");
                    }
                    dg.spare_capacity_mut()
                        .par_chunks_mut(CHUNK)
                        .zip(du.spare_capacity_mut().par_chunks_mut(CHUNK))
                        .zip(
                            ga.par_chunks(CHUNK)
                                .zip(u.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))),
                        )
                        .for_each(|((dg, du), (ga, (u, g)))| {
                            for i in 0..dg.len() {
                                let s = sigmoid(ga[i]);
                                du[i].write(g[i] * ga[i] * s);
                                dg[i].write(g[i] * u[i] * s * (1.0 + ga[i] * (1.0 - s)));
                            }
                        });
                    Ok(())
                })
            })
        })?;
        // SAFETY: the chunks above covered all `n` values of both and wrote each.
        unsafe {
            dg.set_len(n);
            du.set_len(n);
        }
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
