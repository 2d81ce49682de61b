//! Log-likelihood scoring flags shared by `score` and `eval`.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use sightline_model::score::{EmptyContextPrefix, ScoreOptions};

#[derive(Clone, Copy, ValueEnum, Debug, Serialize, Deserialize)]
pub enum EmptyPrefix {
    /// `[eos]`, as the 0.3-era harness (the paper's) does.
    Eos,
    /// BOS (else EOS), as lm-eval 0.4's `prefix_token_id` does.
    Bos,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct ScoringArgs {
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Left-truncation length (default: max_position_embeddings, as the harness).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Prepend BOS to contexts (lm-eval `add_bos_token=True`); off as in the paper's harness.
    #[arg(long)]
    pub add_bos: bool,
    /// Score every request on its own instead of reusing a shared context's KV cache.
    #[arg(long)]
    pub no_shared_prefix: bool,
    /// Token that stands in for an empty context.
    #[arg(long, value_enum, default_value = "eos")]
    pub empty_context_prefix: EmptyPrefix,
}

impl ScoringArgs {
    pub fn options(&self) -> ScoreOptions {
        ScoreOptions {
            batch_size: self.batch_size.max(1),
            max_length: self.max_length,
            add_bos: self.add_bos,
            shared_prefix: !self.no_shared_prefix,
            empty_context: match self.empty_context_prefix {
                EmptyPrefix::Eos => EmptyContextPrefix::Eos,
                EmptyPrefix::Bos => EmptyContextPrefix::Bos,
            },
        }
    }
}
