//! A shard's output file (`shard-I-of-N.json`, from `sightline eval --shard I/N`) and the
//! checks that a set of them is one whole run: same settings, same tasks and requests, same
//! division of the work, every shard and every unit exactly once.
//!
//! The file holds answers, not metrics: metrics of a subset of documents do not combine into
//! the metrics of all (stderr, ETHICS' grouped exact match, corpus BLEU), so the merge routes
//! every shard's answers back to the documents and aggregates once, as the unsharded run does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Mismatch, Result};
use crate::evaluator::{ShardRun, ShardSpec, TaskRequests};
use crate::task::Response;

/// The `format` field of a shard file.
pub const FORMAT: &str = "sightline-eval-shard";
/// The version of the layout below; a merge refuses others.
pub const VERSION: u32 = 1;

/// How the pooled requests were cut into units and dealt to shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInfo {
    /// Digest of the units and their division (equal for every shard of a run).
    pub hash: String,
    pub units: usize,
    pub requests: usize,
}

/// One answer: the pooled request index (task, document, request order) and the response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub request: usize,
    pub response: Response,
}

/// The contents of `shard-I-of-N.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardFile {
    pub format: String,
    pub version: u32,
    pub shard: ShardSpec,
    /// Everything that decides the answers and the results (flags, model identity, build),
    /// as the caller records it: equal in every shard of a run.
    pub settings: Value,
    /// What legitimately differs between shards (start, duration, cache hits, working
    /// directory): not compared.
    pub run: Value,
    pub tasks: Vec<TaskRequests>,
    pub plan: PlanInfo,
    /// This shard's units (indices into the plan).
    pub units: Vec<usize>,
    pub responses: Vec<Answer>,
}

impl ShardFile {
    /// The file for what `r` computed.
    pub fn new(r: ShardRun, settings: Value, run: Value) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            shard: r.shard,
            settings,
            run,
            tasks: r.tasks,
            plan: PlanInfo {
                hash: r.plan_hash,
                units: r.units_total,
                requests: r.requests_total,
            },
            units: r.units,
            responses: r
                .responses
                .into_iter()
                .map(|(request, response)| Answer { request, response })
                .collect(),
        }
    }

    /// Its name in an output folder; `suffix` tells runs sharing a folder apart (a corruption's
    /// `_gaussian_noise_3`, as `results<suffix>.json`).
    pub fn file_name(shard: ShardSpec, suffix: &str) -> String {
        format!("shard-{}-of-{}{suffix}.json", shard.index, shard.count)
    }

    /// Reads and checks the format and version of a shard file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let head: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not JSON: {e}", path.display())))?;
        if head.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(Error::Config(format!(
                "{}: not a sightline shard file (its `format` is not \"{FORMAT}\")",
                path.display()
            )));
        }
        if head.get("version").and_then(Value::as_u64) != Some(VERSION.into()) {
            return Err(Error::Config(format!(
                "{}: shard format version {} (this sightline reads version {VERSION})",
                path.display(),
                head.get("version").unwrap_or(&Value::Null)
            )));
        }
        serde_json::from_value(head)
            .map_err(|e| Error::Config(format!("{}: not a shard file: {e}", path.display())))
    }
}

/// The shard files `args` name: a file as given, a folder's `shard-*-of-*.json` files.
pub fn find(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for a in args {
        if a.is_file() {
            files.push(a.clone());
            continue;
        }
        let entries = std::fs::read_dir(a).map_err(|e| Error::io(a, e))?;
        let mut here: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("shard-") && n.ends_with(".json"))
            })
            .collect();
        if here.is_empty() {
            return Err(Error::Config(format!(
                "{}: holds no shard-I-of-N.json (write them with `sightline eval --shard I/N --output DIR`)",
                a.display()
            )));
        }
        here.sort();
        files.append(&mut here);
    }
    Ok(files)
}

/// A checked, complete set of shards.
#[derive(Debug)]
pub struct Merged {
    pub count: usize,
    /// The shards' common settings.
    pub settings: Value,
    /// Each shard's `run`, in shard order.
    pub runs: Vec<Value>,
    pub tasks: Vec<TaskRequests>,
    /// `responses[i]` answers pooled request `i`.
    pub responses: Vec<Response>,
}

/// Checks that `shards` (file, contents) are one whole run and gathers their answers;
/// `searched` names where they were looked for (for a missing shard's error).
pub fn merge(shards: Vec<(PathBuf, ShardFile)>, searched: &str) -> Result<Merged> {
    let Some((first_path, first)) = shards.first() else {
        return Err(Error::Config(format!("{searched}: no shard files")));
    };
    let mismatch = |field: &str, a: String, b: String, other: &Path| {
        Error::ShardMismatch(Box::new(Mismatch {
            field: field.into(),
            first_value: a,
            first: first_path.clone(),
            second_value: b,
            second: other.to_path_buf(),
        }))
    };
    for (path, s) in &shards[1..] {
        if s.shard.count != first.shard.count {
            let (a, b) = (first.shard.count, s.shard.count);
            return Err(mismatch(
                "the shard count N",
                a.to_string(),
                b.to_string(),
                path,
            ));
        }
        if let Some((field, a, b)) = difference(&first.settings, &s.settings, "") {
            return Err(mismatch(&field, a, b, path));
        }
        for (k, (a, b)) in first.tasks.iter().zip(&s.tasks).enumerate() {
            if a != b {
                let field = format!("task {} ({})", k + 1, a.task);
                let show = |t: &TaskRequests| format!("{} (requests {})", t.task, t.hash);
                return Err(mismatch(&field, show(a), show(b), path));
            }
        }
        if first.tasks.len() != s.tasks.len() {
            let (a, b) = (first.tasks.len(), s.tasks.len());
            return Err(mismatch(
                "the number of tasks",
                a.to_string(),
                b.to_string(),
                path,
            ));
        }
        if s.plan != first.plan {
            let show = |p: &PlanInfo| format!("{} ({} units)", p.hash, p.units);
            return Err(mismatch(
                "the work plan",
                show(&first.plan),
                show(&s.plan),
                path,
            ));
        }
    }
    let count = first.shard.count;
    let mut by_index: BTreeMap<usize, (PathBuf, ShardFile)> = BTreeMap::new();
    for (path, s) in shards {
        if let Some((earlier, _)) = by_index.get(&s.shard.index) {
            return Err(Error::ShardTwice {
                index: s.shard.index,
                count,
                first: earlier.clone(),
                second: path,
            });
        }
        by_index.insert(s.shard.index, (path, s));
    }
    if let Some(index) = (0..count).find(|i| !by_index.contains_key(i)) {
        return Err(Error::ShardMissing {
            index,
            count,
            searched: searched.into(),
        });
    }
    gather(by_index)
}

/// Every unit and every request answered exactly once, in request order.
fn gather(by_index: BTreeMap<usize, (PathBuf, ShardFile)>) -> Result<Merged> {
    let Some((_, (_, first))) = by_index.iter().next() else {
        return Err(Error::Config("no shard files".into()));
    };
    let (count, plan) = (first.shard.count, first.plan.clone());
    let (settings, tasks) = (first.settings.clone(), first.tasks.clone());
    let mut unit_owner: Vec<Option<&Path>> = vec![None; plan.units];
    let mut responses: Vec<Option<Response>> = vec![None; plan.requests];
    let mut runs = Vec::with_capacity(count);
    for (path, s) in by_index.values() {
        for &u in &s.units {
            match unit_owner.get_mut(u) {
                None => return Err(bad(path, format!("unit {u} is not in the plan"))),
                Some(Some(other)) => {
                    return Err(bad(
                        path,
                        format!("unit {u} is also in {}", other.display()),
                    ))
                }
                Some(slot) => *slot = Some(path),
            }
        }
        for a in &s.responses {
            match responses.get_mut(a.request) {
                None => {
                    return Err(bad(
                        path,
                        format!("request {} is not in the plan", a.request),
                    ))
                }
                Some(Some(_)) => {
                    return Err(bad(
                        path,
                        format!("request {} is answered twice", a.request),
                    ))
                }
                Some(slot) => *slot = Some(a.response.clone()),
            }
        }
        runs.push(s.run.clone());
    }
    if let Some(u) = unit_owner.iter().position(Option::is_none) {
        return Err(Error::Config(format!(
            "unit {u} of {} is in no shard (the shard files are incomplete)",
            plan.units
        )));
    }
    let responses = responses
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or_else(|| {
                Error::Config(format!(
                    "request {i} of {} has no answer in any shard (the shard files are incomplete)",
                    plan.requests
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Merged {
        count,
        settings,
        runs,
        tasks,
        responses,
    })
}

fn bad(path: &Path, msg: String) -> Error {
    Error::Config(format!("{}: {msg}", path.display()))
}

/// The first field (a dotted path) where `a` and `b` differ, with both values.
fn difference(a: &Value, b: &Value, path: &str) -> Option<(String, String, String)> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let vb = y.get(k).unwrap_or(&Value::Null);
                if let Some(d) = difference(va, vb, &join(k)) {
                    return Some(d);
                }
            }
            y.iter()
                .find(|(k, v)| !x.contains_key(*k) && !v.is_null())
                .map(|(k, v)| (join(k), "absent".into(), v.to_string()))
        }
        _ if a == b => None,
        _ => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_the_field_and_both_values() {
        let a = json!({"args": {"limit": 8, "tasks": "x"}, "model": "m"});
        let b = json!({"args": {"limit": 10, "tasks": "x"}, "model": "m"});
        assert_eq!(
            difference(&a, &b, ""),
            Some(("args.limit".into(), "8".into(), "10".into()))
        );
        assert_eq!(difference(&a, &a, ""), None);
        let c = json!({"args": {"limit": 8, "tasks": "x", "extra": true}, "model": "m"});
        assert_eq!(
            difference(&a, &c, ""),
            Some(("args.extra".into(), "absent".into(), "true".into()))
        );
    }
}
