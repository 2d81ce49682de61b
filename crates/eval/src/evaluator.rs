//! Runs tasks against a model the way lm-evaluation-harness's `evaluate` does: per task, the
//! documents are shuffled with `random.Random(42)` and `--limit` takes the first N; the
//! requests of all tasks are pooled and sent to the model once per request kind; responses are
//! routed back to each task's `process_results` and aggregated.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sightline_metrics::aggregate::{mean, mean_stderr};
use sightline_random::PyRandom;

use crate::cache::RequestCache;
use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::lm::LanguageModel;
use crate::mm;
use crate::task::{Aggregation, Metric, Request, Response, Task};

mod plan;
mod pool;
mod sharded;

pub use plan::ShardSpec;
pub use pool::Phase;
use pool::Pool;
pub use sharded::{evaluate_shard, finish_merged, ShardRun, TaskRequests};

/// Evaluation settings that change which documents are scored.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Score only the first N documents of each task after the shuffle.
    pub limit: Option<usize>,
    /// Seed of the per-task document shuffle (the harness uses 42).
    pub shuffle_seed: u64,
    pub data: DataSource,
    /// Keep per-document records for `samples_<task>.jsonl`.
    pub log_samples: bool,
    /// Image tasks: drop records whose image is missing (before the shuffle and `limit`, so
    /// `limit` counts records that have images) instead of failing.
    pub skip_missing_images: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            limit: None,
            shuffle_seed: 42,
            data: DataSource::default(),
            log_samples: false,
            skip_missing_images: false,
        }
    }
}

/// One aggregated metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub name: &'static str,
    pub value: f64,
    /// `None` where the harness reports "N/A" (custom aggregations).
    pub stderr: Option<f64>,
    pub higher_is_better: bool,
}

/// The outcome of one task.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub name: &'static str,
    pub version: u32,
    pub metrics: Vec<MetricResult>,
    pub n_original: usize,
    pub n_effective: usize,
    /// SHA-256 over the requests of the evaluated documents.
    pub hash: String,
    /// Dataset indices of the evaluated documents, in evaluation order.
    pub doc_ids: Vec<usize>,
    /// Per-document records (with `log_samples`).
    pub samples: Vec<Value>,
    /// Image tasks: records dropped by `skip_missing_images` (`None` for text tasks).
    pub skipped_missing_images: Option<usize>,
    /// Few-shot examples per prompt (`n-shot`).
    pub num_fewshot: usize,
    /// Generative protocols: how the task asks and reads answers ([`Task::protocol`]),
    /// recorded as `configs.<task>.protocol`.
    pub protocol: Option<Value>,
}

/// The documents a task evaluates, as `(dataset index, doc)` in evaluation order.
pub fn select_docs(task: &dyn Task, opts: &EvalOptions) -> Result<(usize, Vec<(usize, Value)>)> {
    let s = select(task, opts)?;
    Ok((s.n_original, s.docs))
}

/// What [`select`] chose.
pub struct Selection {
    pub n_original: usize,
    /// Records dropped for a missing image (`skip_missing_images`).
    pub skipped: usize,
    pub docs: Vec<(usize, Value)>,
}

/// A document's image reference; `None` when the task has no image root (needs
/// `--image-root`).
fn image_ref_of(doc: &Value) -> Option<&str> {
    doc.get("image_ref").and_then(Value::as_str)
}

/// [`select_docs`], dropping image records whose image is missing when `skip_missing_images`
/// is set (before the shuffle, so `limit` counts records that have images).
pub fn select(task: &dyn Task, opts: &EvalOptions) -> Result<Selection> {
    let docs = task.docs(&opts.data)?;
    let n = docs.len();
    let mut order: Vec<usize> = (0..n).collect();
    if task.needs_images() && opts.skip_missing_images {
        order.retain(|&i| image_ref_of(&docs[i]).is_some_and(mm::image_available));
    }
    let skipped = n - order.len();
    let mut rnd = PyRandom::from_int(opts.shuffle_seed);
    rnd.shuffle(&mut order);
    order.truncate(opts.limit.unwrap_or(n));
    let mut docs: Vec<Option<Value>> = docs.into_iter().map(Some).collect();
    let mut docs: Vec<(usize, Value)> = order
        .into_iter()
        .map(|i| (i, docs[i].take().unwrap_or(Value::Null)))
        .collect();
    // Few-shot examples come from the same stream, after the shuffle (the harness's `rnd`).
    task.attach_fewshot(&mut docs, &mut rnd, &opts.data)?;
    Ok(Selection {
        n_original: n,
        skipped,
        docs,
    })
}

/// Fails on the first selected image record whose image cannot be found, naming the task, the
/// record (1-based, in the data file's order) and the path.
fn check_images(task: &dyn Task, docs: &[(usize, Value)], skipping: bool) -> Result<()> {
    for (i, doc) in docs {
        match image_ref_of(doc) {
            None => {
                return Err(Error::Config(format!(
                    "{}: the images are not bundled: pass --image-root DIR (the folder holding `{}`)",
                    task.name(),
                    doc["image"].as_str().unwrap_or("the images")
                )))
            }
            Some(r) if !skipping && !mm::image_available(r) => {
                return Err(Error::data(
                    task.name(),
                    i + 1,
                    format!(
                        "image {r} not found (check --image-root, or pass --skip-missing-images to skip records without their image)"
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Documents and requests that `tasks` (as `--tasks` takes them) send with `limit`, on the
/// built-in data: the cost a study plan shows. Tasks whose data the user supplies are an error.
pub fn count_requests(tasks: &str, limit: Option<usize>) -> Result<(usize, usize)> {
    let opts = EvalOptions {
        limit,
        ..Default::default()
    };
    let (mut docs, mut requests) = (0, 0);
    for t in crate::tasks::resolve(tasks)? {
        let (_, selected) = select_docs(t.as_ref(), &opts)?;
        docs += selected.len();
        for (_, d) in &selected {
            requests += t.requests(d)?.len();
        }
    }
    Ok((docs, requests))
}

/// SHA-256 of a task's requests, in evaluation order. Image requests are hashed without their
/// `image_ref`, so the hash names the prompts and images, not where this machine keeps them.
pub fn requests_hash(requests: &[Vec<Request>]) -> String {
    let mut h = Sha256::new();
    for r in requests.iter().flatten() {
        let mut r = r.clone();
        if let Request::GenerateImage { image_ref, .. } = &mut r {
            image_ref.clear();
        }
        h.update(serde_json::to_string(&r).unwrap_or_default().as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}

/// One task's documents and their requests, ready to be pooled.
struct Prepared<'a> {
    task: &'a dyn Task,
    n_original: usize,
    skipped: usize,
    docs: Vec<(usize, Value)>,
    requests: Vec<Vec<Request>>,
}

/// Evaluates `tasks`; `progress(phase, done, total)` reports work as it finishes.
///
/// The harness's order of work: select and check each task's documents, pool every request,
/// answer what the cache already holds, then one model call per request kind
/// (log-likelihoods, text generations, image generations), and last route the answers back to
/// each task and aggregate.
pub fn evaluate(
    lm: &dyn LanguageModel,
    tasks: &[Box<dyn Task>],
    opts: &EvalOptions,
    mut cache: Option<&mut RequestCache>,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<Vec<TaskResult>> {
    let prepared = prepare_all(tasks, opts)?;
    let requests = pooled(&prepared);
    let mut pool = Pool::new(requests, &lm.identity(), cache.as_deref_mut(), None);
    pool.run_loglikelihood(lm, cache.as_deref_mut(), progress)?;
    pool.run_generations(lm, cache.as_deref_mut(), progress)?;
    pool.run_image_generations(lm, cache, progress)?;
    finish_all(&prepared, &pool.responses, opts)
}

/// Every task's documents and requests, in `--tasks` order.
fn prepare_all<'a>(tasks: &'a [Box<dyn Task>], opts: &EvalOptions) -> Result<Vec<Prepared<'a>>> {
    tasks
        .iter()
        .map(|task| prepare(task.as_ref(), opts))
        .collect()
}

/// The pooled requests: every task's, in (task, document, request) order.
fn pooled<'a>(prepared: &'a [Prepared]) -> Vec<&'a Request> {
    prepared
        .iter()
        .flat_map(|p| p.requests.iter().flatten())
        .collect()
}

/// Routes the pooled responses back to their tasks (the pool keeps task, document, request
/// order) and aggregates.
fn finish_all(
    prepared: &[Prepared],
    responses: &[Option<Response>],
    opts: &EvalOptions,
) -> Result<Vec<TaskResult>> {
    let mut cursor = 0;
    let mut results = Vec::with_capacity(prepared.len());
    for p in prepared {
        let n: usize = p.requests.iter().map(Vec::len).sum();
        let slice = responses
            .get(cursor..cursor + n)
            .ok_or_else(|| Error::Config("internal: fewer responses than requests".into()))?;
        results.push(finish_task(p, slice, opts.log_samples)?);
        cursor += n;
    }
    Ok(results)
}

/// A task's selected documents, checked for their images, and their requests.
fn prepare<'a>(task: &'a dyn Task, opts: &EvalOptions) -> Result<Prepared<'a>> {
    let Selection {
        n_original,
        skipped,
        docs,
    } = select(task, opts)?;
    if task.needs_images() {
        if skipped == n_original && n_original > 0 {
            // Nothing has an image: say why instead of scoring nothing.
            let first: Vec<(usize, Value)> = task
                .docs(&opts.data)?
                .into_iter()
                .take(1)
                .map(|d| (0, d))
                .collect();
            check_images(task, &first, false)?;
        }
        check_images(task, &docs, opts.skip_missing_images)?;
    }
    let requests = docs
        .iter()
        .map(|(_, d)| task.requests(d))
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared {
        task,
        n_original,
        skipped,
        docs,
        requests,
    })
}

/// One task's result from its slice of the pooled responses: per-document metrics (and
/// sample records), corpus metrics, aggregation.
fn finish_task(
    p: &Prepared,
    responses: &[Option<Response>],
    log_samples: bool,
) -> Result<TaskResult> {
    let metrics = p.task.metrics();
    let mut cursor = 0;
    let mut per_doc: Vec<Vec<f64>> = Vec::with_capacity(p.docs.len());
    let mut all_resps: Vec<Vec<Response>> = Vec::with_capacity(p.docs.len());
    let mut samples = Vec::new();
    for ((doc_id, doc), reqs) in p.docs.iter().zip(&p.requests) {
        let resps: Vec<Response> = responses[cursor..cursor + reqs.len()]
            .iter()
            .map(|r| {
                r.clone()
                    .ok_or_else(|| Error::Config("internal: a request got no response".into()))
            })
            .collect::<Result<_>>()?;
        cursor += reqs.len();
        let values = p.task.process_results(doc, &resps)?;
        if values.len() != metrics.len() {
            return Err(Error::Config(format!(
                "internal: {} gave {} values for {} metrics",
                p.task.name(),
                values.len(),
                metrics.len()
            )));
        }
        if log_samples {
            samples.push(sample_record(
                p.task, metrics, *doc_id, doc, reqs, &resps, &values,
            ));
        }
        per_doc.push(values);
        all_resps.push(resps);
    }
    let corpus = if metrics.iter().any(|m| m.aggregation == Aggregation::Corpus) {
        let docs: Vec<&Value> = p.docs.iter().map(|(_, d)| d).collect();
        let resps: Vec<&[Response]> = all_resps.iter().map(Vec::as_slice).collect();
        p.task.corpus_metrics(&docs, &resps)?
    } else {
        Vec::new()
    };
    Ok(TaskResult {
        name: p.task.name(),
        version: p.task.version(),
        metrics: aggregate(p, metrics, &per_doc, corpus)?,
        n_original: p.n_original,
        n_effective: p.docs.len(),
        hash: requests_hash(&p.requests),
        doc_ids: p.docs.iter().map(|(i, _)| *i).collect(),
        samples,
        skipped_missing_images: p.task.needs_images().then_some(p.skipped),
        num_fewshot: p.task.num_fewshot(),
        protocol: p.task.protocol(),
    })
}

/// The `samples_<task>.jsonl` record of one document.
fn sample_record(
    task: &dyn Task,
    metrics: &[Metric],
    doc_id: usize,
    doc: &Value,
    reqs: &[Request],
    resps: &[Response],
    values: &[f64],
) -> Value {
    let mut rec = json!({
        "doc_id": doc_id, "doc": doc, "arguments": reqs, "resps": resps,
    });
    if let Some(x) = task.extracted(doc, resps) {
        rec["filtered_resps"] = json!([x]);
    }
    for (m, v) in metrics.iter().zip(values) {
        if m.aggregation != Aggregation::Corpus {
            rec[m.name] = json!(v);
        }
    }
    rec
}

/// Each metric's value and stderr from the per-document values (or, for corpus metrics, the
/// task's corpus values in metric order).
fn aggregate(
    p: &Prepared,
    metrics: &[Metric],
    per_doc: &[Vec<f64>],
    corpus: Vec<f64>,
) -> Result<Vec<MetricResult>> {
    let mut corpus_values = corpus.into_iter();
    let mut out = Vec::with_capacity(metrics.len());
    for (k, m) in metrics.iter().enumerate() {
        let xs: Vec<f64> = per_doc.iter().map(|v| v[k]).collect();
        let (value, stderr) = match m.aggregation {
            Aggregation::Mean => (mean(&xs), Some(mean_stderr(&xs))),
            Aggregation::GroupExactMatch { group_size } => {
                let groups: Vec<i64> = p
                    .docs
                    .iter()
                    .map(|(_, d)| d["group_id"].as_i64().unwrap_or(-1))
                    .collect();
                (group_exact_match(&groups, &xs, group_size), None)
            }
            Aggregation::Corpus => (
                corpus_values.next().ok_or_else(|| {
                    Error::Config(format!(
                        "internal: {} returned too few corpus metrics",
                        p.task.name()
                    ))
                })?,
                None,
            ),
        };
        out.push(MetricResult {
            name: m.name,
            value,
            stderr,
            higher_is_better: m.higher_is_better,
        });
    }
    Ok(out)
}

/// ETHICS `calc_em`: stable sort by group id, blocks of `size`, a block scores when all are
/// correct; leftovers (`len % size`) are dropped, as in the harness.
pub fn group_exact_match(group_ids: &[i64], correct: &[f64], size: usize) -> f64 {
    let mut items: Vec<(i64, f64)> = group_ids
        .iter()
        .copied()
        .zip(correct.iter().copied())
        .collect();
    items.sort_by_key(|(g, _)| *g);
    let blocks = items.len() / size;
    if blocks == 0 {
        return f64::NAN;
    }
    let hits = (0..blocks)
        .filter(|b| {
            items[b * size..(b + 1) * size]
                .iter()
                .all(|(_, c)| *c == 1.0)
        })
        .count();
    hits as f64 / blocks as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn em_uses_positional_blocks_after_sorting() {
        // Groups as a --limit would leave them: sorted, then cut in fours regardless of id.
        let ids = [1, 0, 0, 1, 0, 0, 1, 1];
        let ok = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        assert_eq!(group_exact_match(&ids, &ok, 4), 0.5);
    }
}
