//! `sightline-data`: the training data of the paper's comparisons (Tu et al., *Sight Beyond
//! Text*, TMLR 2024; spec `llava-training.md` T1, T2, T4–T6, T12): LLaVA visual instructions,
//! the same instructions with the images removed, Alpaca and Orca samples of equal size, and
//! Conversation / Detail / Reasoning groups.
//!
//! - [`stream`]: read LLaVA-format JSON arrays or JSON Lines one record at a time (bounded
//!   memory on 600K-record files) and write them back.
//! - [`record`]: the typed view of a record; [`validate`]: every assumption LLaVA's trainer
//!   makes of one; [`stats`]: counts and token lengths.
//! - [`strip`]: visual instructions without images; [`formats`]: Alpaca, Orca, ShareGPT and
//!   LLaVA-Bench QA records → LLaVA conversations.
//! - [`sample`]: a seeded uniform sample, identical on every machine; [`groups`]: the
//!   per-source-file ablation groups.
//! - [`preprocess`] and [`labels`]: a record → `(input_ids, labels)` exactly as LLaVA's
//!   `LazySupervisedDataset` builds them, for templates `v0`, `v1`, `llava_llama_2`, `plain`.
//!
//! ```
//! use sightline_data::{record::Record, strip};
//! let mut v = serde_json::json!({"id": "1", "image": "a.jpg", "conversations": [
//!     {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A cat."}]});
//! strip::strip_record(&mut v, strip::Options::default());
//! let r = Record::from_value(&v).unwrap();
//! assert_eq!((r.image, r.conversations[0].value.as_str()), (None, "What is shown?"));
//! ```

pub mod bundled;
pub mod error;
pub mod formats;
pub mod groups;
pub mod labels;
pub mod preprocess;
pub mod record;
pub mod sample;
pub mod stats;
pub mod stream;
pub mod strip;
pub mod validate;

pub use error::{Error, Problem, Result};
pub use record::{Record, Turn};
