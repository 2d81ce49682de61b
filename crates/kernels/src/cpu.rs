//! What every kernel shares: the dispatch decision and access to contiguous CPU f32 data.

use std::sync::{Mutex, MutexGuard};

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};

pub(crate) type CResult<T> = candle_core::Result<T>;

/// What a custom op's forward computes for its backward (attention's log-sum-exp per row, the
/// loss's `(max, lse)` per row): `cpu_fwd` gets only `&self`, hence the lock; candle keeps the
/// op, and so this, in the graph until the backward.
pub(crate) struct ForwardState<T> {
    op: &'static str,
    value: Mutex<T>,
}

impl<T: Default> ForwardState<T> {
    pub fn new(op: &'static str) -> Self {
        Self {
            op,
            value: Mutex::new(T::default()),
        }
    }

    /// Stores what the forward computed.
    pub fn set(&self, value: T) -> CResult<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// What the forward stored (the default before it ran).
    pub fn get(&self) -> CResult<MutexGuard<'_, T>> {
        self.lock()
    }

    fn lock(&self) -> CResult<MutexGuard<'_, T>> {
        self.value.lock().map_err(|_| {
            candle_core::Error::Msg(format!(
                "{}: a thread panicked holding the forward's state",
                self.op
            ))
        })
    }
}

/// The three ways an op can run (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The CPU f32 kernel, forward only (no input tracks a gradient).
    Forward,
    /// The CPU f32 kernel with its backward.
    WithBackward,
    /// candle's ops: another dtype or device.
    Candle,
}

impl Path {
    /// The path for an op on `inputs`: the CPU f32 kernel when every input is a CPU f32 tensor,
    /// with a backward when any of them tracks a gradient.
    pub fn of(inputs: &[&Tensor]) -> Self {
        if !inputs
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        {
            Path::Candle
        } else if tracks(inputs) {
            Path::WithBackward
        } else {
            Path::Forward
        }
    }
}

/// Whether every input is a CPU bf16 tensor and none tracks a gradient: bf16 scoring and
/// generation, which the kernels of `bf16.rs` serve (computing in f32 inside, as PyTorch's
/// bf16 CPU kernels do) when [`crate::gemm_bf16::Bf16Gemm::detect`] finds a bf16 GEMM.
/// Without one (`SIGHTLINE_BF16_GEMM=off`), bf16 keeps candle's ops as before.
pub(crate) fn bf16_forward(inputs: &[&Tensor]) -> bool {
    crate::gemm_bf16::Bf16Gemm::detect().is_available()
        && inputs
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::BF16)
        && !tracks(inputs)
}

/// Whether any input is part of a graph that a backward pass will walk.
pub(crate) fn tracks(inputs: &[&Tensor]) -> bool {
    inputs.iter().any(|t| t.track_op())
}

/// The contiguous f32 values of a CPU storage under `layout`.
pub(crate) fn slice<'a>(s: &'a CpuStorage, layout: &Layout) -> CResult<&'a [f32]> {
    slice_of(s, layout)
}

/// The contiguous values of a CPU storage of element type `T` under `layout`.
pub(crate) fn slice_of<'a, T: WithDType>(s: &'a CpuStorage, layout: &Layout) -> CResult<&'a [T]> {
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: non-contiguous input".into()))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// Runs `f` on the contiguous f32 values of a CPU tensor (copied only if strided).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => candle_core::bail!("fused op: tensor is not on the CPU"),
    }
}

/// Rows per parallel task: big enough to amortise rayon, small enough to split 2+ ways.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(64).clamp(1, 64)
}
