//! `sightline-kernels`: the fused ops of the LLaMA decoder, the LLaVA projector path and the
//! CLIP tower, each with a forward and a backward, behind one dispatch rule.
//!
//! Why a crate of its own: the decoder that scores and the decoder that trains are one model
//! (`sightline_model::llama`), so each hot spot needs a fast forward-only form *and* a form with
//! a backward, chosen per call. This is also where AMX, tiled attention or CUDA kernels go.
//!
//! # Dispatch
//!
//! Every entry point (`rms_norm`, `layer_norm`, `rope_to_heads`, `causal_attention`,
//! `causal_softmax`, `swiglu`, `cross_entropy_rows`, `frozen_linear`, `add`) picks one of these paths:
//!
//! 1. **CPU f32, nothing to differentiate** (no input [`Tensor::track_op`]s): the fused kernel
//!    run with `apply_op*_no_bwd` (or, where candle's own kernel is the fast one, that kernel);
//!    attention is the tiled, flash-style kernel of `flash/` on CPUs with AVX-512F.
//!    No graph is recorded: inference pays nothing for training's existence.
//! 2. **CPU f32, some input tracks a gradient**: the same fused kernel as a custom op with its
//!    hand-written backward ([`candle_core::CustomOp1`]/`2`/`3`); self-attention is the tiled
//!    kernel with a tiled backward (`flash/backward.rs`) on CPUs with AVX-512F.
//! 3. **CPU bf16, nothing to differentiate, and a bf16 GEMM on this CPU** ([`gemm_bf16`]):
//!    bf16 scoring and generation — linear layers on the `VDPBF16PS` GEMM, RMSNorm and SwiGLU
//!    with PyTorch's roundings, RoPE fused with its transpose (candle-nn's bf16 roundings),
//!    attention in f32 inside the tiled kernel (`bf16.rs`, `flash/`).
//! 4. **CPU bf16 with gradients** (mixed-precision training): the linear layers on the bf16
//!    GEMM with its backward where the CPU has one, SwiGLU as a bf16 op with its backward
//!    (`bf16.rs`), self-attention on the tiled kernel and its backward (bf16 in and out, f32
//!    inside); RMSNorm runs its f32 kernel between casts.
//! 5. **Any other dtype or device**: candle's ops. Without gradients, candle-nn's forward-only
//!    fused kernels where they exist (bf16 without the GEMM: `rms_norm`, `rope`,
//!    `softmax_last_dim`); with gradients, the composed differentiable forms (spec
//!    `candle-autograd.md` lists which candle ops silently drop gradients; none of those is used
//!    on this path).
//!
//! A new backend kernel is one more arm in the entry point's match (see [`Path`]), next to
//! its composed fallback, and one more case in `tests/ops.rs`.
//!
//! Errors are candle's ([`candle_core::Error`]), as for any candle op: a shape that does not
//! fit is a caller bug, not bad outside data.

mod add;
mod attention;
mod bf16;
mod cpu;
mod flash;
pub mod gemm_bf16;
mod linear;
mod loss;
mod math;
mod mlp;
mod norm;
mod par;
mod rope;
mod switch;
mod transpose;

pub use add::add;
pub use attention::{
    causal_attention, causal_attention_after_prefix, causal_softmax, FUSED_ATTENTION_MAX_HEAD_DIM,
};
pub use bf16::bf16_linear_trainable;
pub use cpu::Path;
pub use linear::{frozen_linear, frozen_linear_to_f32, trained_linear};
pub use loss::cross_entropy_rows;
pub use mlp::swiglu;
pub use norm::{layer_norm, rms_norm};
pub use par::park_idle_candle_workers;
pub use rope::{rope, rope_to_heads};

#[doc(no_inline)]
pub use candle_core::Tensor;
