//! The two halves of a sharded evaluation: [`evaluate_shard`] answers one shard's work units
//! (the model calls of [`super::evaluate`], restricted to whole units of the unsharded run),
//! and [`finish_merged`] turns every shard's answers back into the results the unsharded run
//! computes (the same documents, the same routing, the same aggregation).

use serde::{Deserialize, Serialize};

use super::plan::{Plan, ShardSpec};
use super::{finish_all, pooled, prepare_all, requests_hash, EvalOptions, Phase, Pool, TaskResult};
use crate::cache::RequestCache;
use crate::error::{Error, Result};
use crate::lm::LanguageModel;
use crate::task::{Response, Task};

/// A task's share of the pooled request list: what every shard of a run must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRequests {
    pub task: String,
    /// [`requests_hash`] of its requests (`task_hashes` in `results.json`).
    pub hash: String,
    pub requests: usize,
}

/// What one shard computed.
#[derive(Debug, Clone)]
pub struct ShardRun {
    pub shard: ShardSpec,
    pub tasks: Vec<TaskRequests>,
    /// [`Plan`]'s digest of the units and their division.
    pub plan_hash: String,
    pub units_total: usize,
    pub requests_total: usize,
    /// This shard's units (indices into the plan).
    pub units: Vec<usize>,
    /// `(pooled request index, response)` for every request of this shard's units, ascending.
    pub responses: Vec<(usize, Response)>,
}

/// Evaluates shard `shard` of `tasks`: selects every task's documents and pools every request
/// as [`super::evaluate`] does, cuts the pool into the model's work units, and computes (or
/// takes from the cache) only the units dealt to this shard.
pub fn evaluate_shard(
    lm: &dyn LanguageModel,
    tasks: &[Box<dyn Task>],
    opts: &EvalOptions,
    mut cache: Option<&mut RequestCache>,
    shard: ShardSpec,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<ShardRun> {
    let prepared = prepare_all(tasks, opts)?;
    let requests = pooled(&prepared);
    let n = requests.len();
    let plan = Plan::new(lm, &requests, shard.count)?;
    let (mine, units) = plan.slots_of(shard.index, n);
    let mut pool = Pool::new(requests, &lm.identity(), cache.as_deref_mut(), Some(mine));
    pool.run_loglikelihood(lm, cache.as_deref_mut(), progress)?;
    pool.run_generations(lm, cache.as_deref_mut(), progress)?;
    pool.run_image_generations(lm, cache, progress)?;
    let mut responses = Vec::new();
    for &k in &units {
        for &slot in &plan.units[k].requests {
            let r = pool.responses[slot].clone().ok_or_else(|| {
                Error::Config(format!(
                    "internal: request {slot} of shard {shard} got no response"
                ))
            })?;
            responses.push((slot, r));
        }
    }
    responses.sort_by_key(|(slot, _)| *slot);
    responses.dedup_by_key(|(slot, _)| *slot);
    Ok(ShardRun {
        shard,
        tasks: prepared
            .iter()
            .map(|p| TaskRequests {
                task: p.task.name().to_string(),
                hash: requests_hash(&p.requests),
                requests: p.requests.iter().map(Vec::len).sum(),
            })
            .collect(),
        plan_hash: plan.hash,
        units_total: plan.units.len(),
        requests_total: n,
        units,
        responses,
    })
}

/// The results of the unsharded run from every shard's responses (`responses[i]` answers
/// pooled request `i`): the documents and requests are selected again (task data, not the
/// model), checked against what the shards recorded in `expected`, and finished as
/// [`super::evaluate`] finishes them.
pub fn finish_merged(
    tasks: &[Box<dyn Task>],
    opts: &EvalOptions,
    expected: &[TaskRequests],
    responses: Vec<Response>,
) -> Result<Vec<TaskResult>> {
    let prepared = prepare_all(tasks, opts)?;
    let here: Vec<String> = prepared.iter().map(|p| p.task.name().to_string()).collect();
    let theirs: Vec<String> = expected.iter().map(|t| t.task.clone()).collect();
    if here != theirs {
        return Err(Error::Config(format!(
            "the shards evaluated tasks {theirs:?}, their settings give {here:?} here"
        )));
    }
    for (p, t) in prepared.iter().zip(expected) {
        let hash = requests_hash(&p.requests);
        if hash != t.hash {
            return Err(Error::Config(format!(
                "{}: its requests here hash to {hash}, the shards' to {}: the task data read here (--data-dir, --image-root, ...) is not what the shards read",
                t.task, t.hash
            )));
        }
    }
    let n = pooled(&prepared).len();
    if responses.len() != n {
        return Err(Error::Config(format!(
            "the shards answer {} requests, the tasks here send {n}",
            responses.len()
        )));
    }
    let responses: Vec<Option<Response>> = responses.into_iter().map(Some).collect();
    finish_all(&prepared, &responses, opts)
}
