//! `sightline-openai`: the OpenAI API in both directions.
//!
//! - [`server`]: `sightline serve`, an OpenAI-compatible HTTP server (axum on tokio) over
//!   sightline's own scoring and generation: `/v1/models`, `/v1/completions` (with `echo` +
//!   `logprobs`, so log-likelihood clients such as lm-eval's `local-completions` work),
//!   `/v1/chat/completions` (conversation template, greedy or sampled, streaming) and vLLM's
//!   `/tokenize`.
//! - [`api_lm::ApiLm`]: `--model openai-completions:NAME` / `openai-chat:NAME`, the
//!   evaluator's [`sightline_eval::lm::LanguageModel`] over any such endpoint, through
//!   [`client::Client`] (key, retries, timeouts, token usage).
//!
//! Imports run one way: [`error`] ← [`wire`] ← [`engine`] ← [`server`]; [`wire`] ←
//! [`client`] ← [`api_lm`]. The server and the client share only the wire types.

pub mod api_lm;
pub mod client;
pub mod engine;
pub mod error;
pub mod server;
pub mod wire;

pub use error::{Error, Result};
