//! `sightline-eval`: lm-evaluation-harness–compatible evaluation.
//!
//! - [`task::Task`]: documents → requests → per-document metrics; one file per benchmark in
//!   [`tasks`], registered in [`tasks::all`].
//! - [`evaluator::evaluate`]: shuffles and limits documents as the harness does, pools the
//!   requests of all tasks into one model call per request kind, aggregates.
//! - [`lm::LanguageModel`]: the only contact with a model ([`lm::CandleLm`] for real ones).
//! - [`mm`]: the image tasks' protocols, prompts and image loading; [`mm_lm::LlavaLm`] runs
//!   their requests in batches on a LLaVA model.
//! - [`cache::RequestCache`]: resumable runs; [`report`]: lm-eval's `results.json` schema.

pub mod cache;
pub mod data;
pub mod error;
pub mod evaluator;
pub mod lm;
pub mod mm;
pub mod mm_lm;
pub mod report;
pub mod task;
pub mod tasks;

pub use error::{Error, Result};
