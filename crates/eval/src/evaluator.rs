//! Runs tasks against a model the way lm-evaluation-harness's `evaluate` does: per task, the
//! documents are shuffled with `random.Random(42)` and `--limit` takes the first N; the
//! requests of all tasks are pooled and sent to the model once per request kind; responses are
//! routed back to each task's `process_results` and aggregated.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sightline_metrics::aggregate::{mean, mean_stderr};

use crate::cache::{self, RequestCache};
use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::lm::LanguageModel;
use crate::pyrandom::PyRandom;
use crate::task::{Aggregation, Request, Response, Task};

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
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            limit: None,
            shuffle_seed: 42,
            data: DataSource::default(),
            log_samples: false,
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
}

/// Which phase a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Loglikelihood,
    Generate,
}

/// The documents a task evaluates, as `(dataset index, doc)` in evaluation order.
pub fn select_docs(task: &dyn Task, opts: &EvalOptions) -> Result<(usize, Vec<(usize, Value)>)> {
    let docs = task.docs(&opts.data)?;
    let n = docs.len();
    let mut order: Vec<usize> = (0..n).collect();
    PyRandom::from_int(opts.shuffle_seed).shuffle(&mut order);
    order.truncate(opts.limit.unwrap_or(n));
    let mut docs: Vec<Option<Value>> = docs.into_iter().map(Some).collect();
    Ok((
        n,
        order
            .into_iter()
            .map(|i| (i, docs[i].take().unwrap_or(Value::Null)))
            .collect(),
    ))
}

/// SHA-256 of a task's requests, in evaluation order.
pub fn requests_hash(requests: &[Vec<Request>]) -> String {
    let mut h = Sha256::new();
    for r in requests.iter().flatten() {
        h.update(serde_json::to_string(r).unwrap_or_default().as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}

struct Prepared<'a> {
    task: &'a dyn Task,
    n_original: usize,
    docs: Vec<(usize, Value)>,
    requests: Vec<Vec<Request>>,
}

/// Evaluates `tasks`; `progress(phase, done, total)` reports work as it finishes.
pub fn evaluate(
    lm: &dyn LanguageModel,
    tasks: &[Box<dyn Task>],
    opts: &EvalOptions,
    mut cache: Option<&mut RequestCache>,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<Vec<TaskResult>> {
    let mut prepared = Vec::new();
    for task in tasks {
        let (n_original, docs) = select_docs(task.as_ref(), opts)?;
        let requests = docs
            .iter()
            .map(|(_, d)| task.requests(d))
            .collect::<Result<Vec<_>>>()?;
        prepared.push(Prepared {
            task: task.as_ref(),
            n_original,
            docs,
            requests,
        });
    }

    // Pool every request: (task, doc, request) -> slot in `responses`.
    let mut slots: Vec<(usize, usize, usize)> = Vec::new();
    for (t, p) in prepared.iter().enumerate() {
        for (d, reqs) in p.requests.iter().enumerate() {
            for r in 0..reqs.len() {
                slots.push((t, d, r));
            }
        }
    }
    let request_of = |s: &(usize, usize, usize)| &prepared[s.0].requests[s.1][s.2];
    let identity = lm.identity();
    let keys: Vec<String> = slots
        .iter()
        .map(|s| cache::key(&identity, request_of(s)))
        .collect();
    let mut responses: Vec<Option<Response>> = keys
        .iter()
        .map(|k| cache.as_ref().and_then(|c| c.get(k).cloned()))
        .collect();
    if let Some(c) = cache.as_mut() {
        c.hits = responses.iter().filter(|r| r.is_some()).count();
    }

    // Log-likelihoods: one call for all tasks.
    let ll_slots: Vec<usize> = (0..slots.len())
        .filter(|&i| matches!(request_of(&slots[i]), Request::Loglikelihood { .. }))
        .collect();
    let pairs: Vec<(String, String)> = ll_slots
        .iter()
        .map(|&i| match request_of(&slots[i]) {
            Request::Loglikelihood {
                context,
                continuation,
            } => (context.clone(), continuation.clone()),
            Request::GenerateUntil { .. } => (String::new(), String::new()),
        })
        .collect();
    let total_ll = ll_slots.len();
    let mut done = ll_slots.iter().filter(|&&i| responses[i].is_some()).count();
    progress(Phase::Loglikelihood, done, total_ll);
    {
        let cached: Vec<bool> = ll_slots.iter().map(|&i| responses[i].is_some()).collect();
        lm.loglikelihood(&pairs, &|j| cached[j], &mut |unit| {
            let mut fresh = Vec::new();
            for &(j, scored) in unit {
                let slot = ll_slots[j];
                if responses[slot].is_none() {
                    done += 1;
                    fresh.push((keys[slot].clone(), Response::Loglikelihood(scored)));
                }
                responses[slot] = Some(Response::Loglikelihood(scored));
            }
            if let Some(c) = cache.as_mut() {
                c.put_all(fresh)?;
            }
            progress(Phase::Loglikelihood, done, total_ll);
            Ok(())
        })?;
    }

    // Generations, one at a time (greedy decoding is batch-invariant only up to near-ties).
    let gen_slots: Vec<usize> = (0..slots.len())
        .filter(|&i| matches!(request_of(&slots[i]), Request::GenerateUntil { .. }))
        .collect();
    let mut done = gen_slots
        .iter()
        .filter(|&&i| responses[i].is_some())
        .count();
    progress(Phase::Generate, done, gen_slots.len());
    for &slot in &gen_slots {
        if responses[slot].is_some() {
            continue;
        }
        if let Request::GenerateUntil { context, until } = request_of(&slots[slot]) {
            let text = lm.generate_until(context, until)?;
            let r = Response::Generated(text);
            if let Some(c) = cache.as_mut() {
                c.put_all(vec![(keys[slot].clone(), r.clone())])?;
            }
            responses[slot] = Some(r);
            done += 1;
            progress(Phase::Generate, done, gen_slots.len());
        }
    }

    // Route responses back and aggregate.
    let mut cursor = 0;
    let mut results = Vec::new();
    for p in &prepared {
        let metrics = p.task.metrics();
        let mut per_doc: Vec<Vec<f64>> = Vec::with_capacity(p.docs.len());
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
            if opts.log_samples {
                let mut rec = json!({
                    "doc_id": doc_id, "doc": doc, "arguments": reqs, "resps": resps,
                });
                for (m, v) in metrics.iter().zip(&values) {
                    rec[m.name] = json!(v);
                }
                samples.push(rec);
            }
            per_doc.push(values);
        }
        let mut out = Vec::new();
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
            };
            out.push(MetricResult {
                name: m.name,
                value,
                stderr,
                higher_is_better: m.higher_is_better,
            });
        }
        results.push(TaskResult {
            name: p.task.name(),
            version: p.task.version(),
            metrics: out,
            n_original: p.n_original,
            n_effective: p.docs.len(),
            hash: requests_hash(&p.requests),
            doc_ids: p.docs.iter().map(|(i, _)| *i).collect(),
            samples,
        });
    }
    Ok(results)
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
