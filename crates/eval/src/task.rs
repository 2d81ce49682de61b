//! What a task is: documents, the requests each document makes, and how responses become
//! metrics. Tasks never touch a model; the evaluator batches their requests across tasks.
//!
//! Mirrors lm-evaluation-harness's `Task` (0.3 `lm_eval/base.py`): `doc_to_text`,
//! `construct_requests`, `process_results`, `aggregation`, `higher_is_better`, `VERSION`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sightline_model::score::Scored;
use sightline_random::PyRandom;

use crate::data::DataSource;
use crate::error::Result;

/// A request to the language model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request_type", rename_all = "snake_case")]
pub enum Request {
    /// Log-likelihood of `continuation` after `context` (lm-eval `loglikelihood`).
    Loglikelihood {
        context: String,
        continuation: String,
    },
    /// Greedy text after `context` until a stop string or EOS (lm-eval `generate_until`).
    GenerateUntil { context: String, until: Vec<String> },
    /// Text a vision-language model writes after `context` (a full prompt with one `<image>`)
    /// about an image, decoded as `decoding` says. `image` is the dataset's name for it (what
    /// the task hash covers); `image_ref` where this run reads it (a path under `--image-root`,
    /// or `bundled:...`; part of the cache key, not of the task hash).
    GenerateImage {
        context: String,
        image: String,
        image_ref: String,
        decoding: crate::protocol::MmDecoding,
    },
    /// The MMLU script of the paper (`evaluate_mmlu.py`, not the harness): the prompt is
    /// `header + shots[..k] + question` for the largest k (from `shots.len()` down) whose
    /// encoding *with BOS* has at most `fit_tokens` tokens (k = 0 if none fits); BOS is
    /// prepended and `max_new_tokens` tokens are generated greedily, decoded without special
    /// tokens and not cut. The shots travel separately so the model, which owns the tokenizer,
    /// can do the fitting.
    GenerateFit {
        header: String,
        shots: Vec<String>,
        question: String,
        fit_tokens: usize,
        max_new_tokens: usize,
    },
}

/// The model's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Loglikelihood(Scored),
    Generated(String),
}

impl Response {
    /// The log-likelihood, for tasks that only issue log-likelihood requests.
    pub fn logprob(&self) -> f64 {
        match self {
            Response::Loglikelihood(s) => s.logprob,
            Response::Generated(_) => f64::NAN,
        }
    }

    /// The generated text, for generation tasks.
    pub fn text(&self) -> &str {
        match self {
            Response::Generated(t) => t,
            Response::Loglikelihood(_) => "",
        }
    }
}

/// How per-document values of a metric become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Arithmetic mean, with lm-eval's analytic `mean_stderr`.
    Mean,
    /// ETHICS `calc_em`: documents sorted by `doc["group_id"]` (stable), cut into blocks of
    /// `group_size`; a block counts when every document in it is correct. No stderr.
    GroupExactMatch { group_size: usize },
    /// A corpus-level number (precision, F1, ...) that is not a mean of per-document values:
    /// computed by [`Task::corpus_metrics`]; no stderr.
    Corpus,
}

/// One reported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub aggregation: Aggregation,
    pub higher_is_better: bool,
}

impl Metric {
    pub const fn mean(name: &'static str) -> Self {
        Self {
            name,
            aggregation: Aggregation::Mean,
            higher_is_better: true,
        }
    }

    pub const fn corpus(name: &'static str) -> Self {
        Self {
            name,
            aggregation: Aggregation::Corpus,
            higher_is_better: true,
        }
    }
}

/// A benchmark task.
pub trait Task: Send + Sync {
    /// Registry name, e.g. `truthfulqa_mc1`.
    fn name(&self) -> &'static str;
    /// Bumped whenever prompts or scoring change (the harness's `VERSION`).
    fn version(&self) -> u32;
    /// Evaluation documents in the dataset's order (before the evaluator's shuffle).
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>>;
    /// The requests one document makes, in the order `process_results` expects answers.
    fn requests(&self, doc: &Value) -> Result<Vec<Request>>;
    /// The document's metric values, in [`Task::metrics`] order.
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>>;
    /// The metrics this task reports.
    fn metrics(&self) -> &'static [Metric];
    /// Whether documents carry an image (`image_ref`): the task needs a vision-language model,
    /// and missing images are checked (or skipped) before any request runs.
    fn needs_images(&self) -> bool {
        false
    }
    /// The values of the [`Aggregation::Corpus`] metrics, in [`Task::metrics`] order, from all
    /// evaluated documents and their responses. (`process_results` puts NaN in those columns.)
    fn corpus_metrics(&self, _docs: &[&Value], _responses: &[&[Response]]) -> Result<Vec<f64>> {
        Err(crate::error::Error::Config(format!(
            "internal: task {} has corpus metrics but no corpus_metrics",
            self.name()
        )))
    }
    /// Few-shot tasks: draws the examples of each selected document (in evaluation order) from
    /// `rnd`, the evaluator's seed-42 stream right after the document shuffle, and stores them
    /// in the document. This is the harness's `fewshot_context(doc, k, rnd)`, which shares the
    /// shuffle's `random.Random`, so the draws depend on the shuffle and on all earlier draws.
    /// Zero-shot tasks draw nothing.
    fn attach_fewshot(
        &self,
        _docs: &mut [(usize, Value)],
        _rnd: &mut PyRandom,
        _data: &DataSource,
    ) -> Result<()> {
        Ok(())
    }
    /// Few-shot examples in each prompt (recorded as lm-eval's `n-shot` in results.json).
    fn num_fewshot(&self) -> usize {
        0
    }
    /// The answer extracted from the responses, logged as `filtered_resps` in the samples.
    fn extracted(&self, _doc: &Value, _responses: &[Response]) -> Option<Value> {
        None
    }
    /// Generative protocols ([`crate::tasks::generative`]): how the task asks and reads its
    /// answers (protocol name, prompt template, shuffle seed rule, extraction rule, what each
    /// metric means), recorded in `results.json` as `configs.<task>.protocol`. `None` for the
    /// harness's own tasks, whose results carry no such entry.
    fn protocol(&self) -> Option<Value> {
        None
    }
}

/// A string field of a document (documents are built by the task itself, so a missing field
/// is a bug in the task, reported rather than panicking).
pub(crate) fn field<'a>(doc: &'a Value, key: &str) -> Result<&'a str> {
    doc.get(key).and_then(Value::as_str).ok_or_else(|| {
        crate::error::Error::Config(format!("document has no string field `{key}`: {doc}"))
    })
}

/// An integer field of a document.
pub(crate) fn int_field(doc: &Value, key: &str) -> Result<i64> {
    doc.get(key).and_then(Value::as_i64).ok_or_else(|| {
        crate::error::Error::Config(format!("document has no integer field `{key}`: {doc}"))
    })
}

/// numpy `argmax` including its NaN rule (the first NaN wins), for scores that can divide by
/// zero (`acc_norm` of an empty choice).
pub fn np_argmax(xs: &[f64]) -> usize {
    xs.iter()
        .position(|x| x.is_nan())
        .unwrap_or_else(|| argmax(xs))
}

/// Index of the first maximum (numpy `argmax`); the decoder's, shared.
pub use sightline_model::llama::argmax;
