//! Evaluation metrics (pure Rust, no ML dependencies) with the exact semantics of the Python
//! reference packages that lm-evaluation-harness uses for TruthfulQA generation:
//!
//! - [`bleu`]: sacrebleu 1.5.0 `corpus_bleu` with the `intl` tokenizer and `exp` smoothing.
//! - [`rouge`]: rouge_score 0.1.2 `RougeScorer(["rouge1", "rouge2", "rougeLsum"])`, no stemmer.
//! - [`aggregate`]: lm-eval's `mean` and `mean_stderr`.
//!
//! and the multimodal benchmarks of Sight-Beyond-Text (spec/multimodal-eval.md E3-E6):
//!
//! - [`caption`]: pycocoevalcap BLEU-1..4, ROUGE-L and CIDEr-D with a Rust PTB tokenizer.
//! - [`vqa`]: the official VQAv2 answer normalisation and 10-annotator accuracy.
//! - [`pope`]: POPE answer parsing, accuracy, precision, recall, F1, yes-ratio.
//! - [`mme`]: MME acc, acc+, task, Perception and Cognition scores.
//!
//! Every function takes plain `&str`/`&[f64]` and never panics; golden fixtures made by the Python
//! packages themselves (`scripts/reference/make_metric_fixtures.py`) pin the numbers to 1e-9.

pub mod aggregate;
pub mod bleu;
pub mod caption;
pub mod mme;
pub mod pope;
pub mod pystr;
pub mod rouge;
pub mod vqa;
