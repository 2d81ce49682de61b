//! Which weights of the decoder train: decided once, at construction.

use crate::lora::LoraSpec;

/// Which of the decoder's weights train.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Every weight (full fine-tune).
    Full,
    /// None (evaluation, and LLaVA stage 1: only the projector outside the decoder trains).
    Frozen,
    /// Only `embed_tokens` (LLaVA stage 1 with `mm_use_im_start_end`, spec M6.6: the whole
    /// matrix is trainable, though only the rows next to the image get a gradient).
    EmbeddingsOnly,
    /// Base weights frozen, LoRA matrices on the target modules train.
    Lora(LoraSpec),
}
