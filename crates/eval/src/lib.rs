//! `sightline-eval`: lm-evaluation-harness–compatible evaluation.
//!
//! - [`task::Task`]: documents → requests → per-document metrics; one file per benchmark in
//!   [`tasks`], registered in [`tasks::all`].
//! - [`evaluator::evaluate`]: shuffles and limits documents as the harness does, pools the
//!   requests of all tasks into one model call per request kind, aggregates.
//! - [`lm::LanguageModel`]: the only contact with a model ([`lm::CandleLm`] for real ones).
//! - [`protocol`]: the image tasks' prompting/decoding protocols; [`mm`]: their image loading
//!   and document helpers; [`mm_lm::LlavaLm`] runs their requests in batches on a LLaVA model.
//! - [`data::DataSource`]: where task data comes from (embedded copies or `--data-dir`).
//! - [`cache::RequestCache`]: resumable runs; [`report`]: lm-eval's `results.json` schema.
//! - Sharded runs: [`evaluator::evaluate_shard`] answers one shard's work units, [`shard`]
//!   holds its output file and checks a set of them, [`evaluator::finish_merged`] turns the
//!   set into the unsharded run's results.
//!
//! Imports run one way; each module uses only modules to its left (or above it):
//! [`error`] ← [`protocol`] ← [`data`] ← [`task`] ← [`mm`] ← [`tasks`] ← [`evaluator`] ←
//! [`report`], and [`evaluator`] ← [`shard`]. Beside that chain, [`cache`] uses [`task`]; [`lm`] uses [`protocol`]; [`mm_lm`]
//! uses [`lm`] and [`mm`]; [`evaluator`] uses [`cache`] and [`lm`]. The random streams come
//! from the `sightline-random` crate.

pub mod cache;
pub mod data;
pub mod error;
pub mod evaluator;
pub mod lm;
pub mod mm;
pub mod mm_lm;
pub mod protocol;
pub mod report;
pub mod shard;
pub mod task;
pub mod tasks;

pub use error::{Error, Result};
