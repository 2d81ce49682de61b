//! Results in lm-evaluation-harness 0.4's `results.json` schema, `samples_<task>.jsonl`, and
//! the Markdown table the harness prints.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::evaluator::TaskResult;
use crate::tasks::GROUPS;

/// Run facts recorded under `config` and at the top level of `results.json` (serialisable:
/// a shard file carries its run's, for the merge to write).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub model: String,
    pub adapter: Option<String>,
    pub dtype: String,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub shuffle_seed: u64,
    pub truthfulqa_data: String,
    pub git_hash: Option<String>,
    /// Seconds since the Unix epoch at the start of the run.
    pub date: f64,
    pub total_seconds: f64,
    pub cache_hits: usize,
    /// Scoring settings that differ between harness versions.
    pub add_bos: bool,
    pub empty_context_prefix: String,
    pub max_length: usize,
    /// Image tasks only: the protocol ([`crate::protocol::Protocol::describe`]) plus the image
    /// settings, recorded as `config.multimodal`; `None` leaves text-only results unchanged.
    pub multimodal: Option<Value>,
    /// For a Hub model id: the revision asked for and the commit it resolved to, recorded as
    /// lm-eval 0.4's `get_model_info` does (`model_revision`, `model_sha`; `peft_sha` for a
    /// Hub adapter). `None` (local paths) leaves them out.
    /// An API model's endpoint and token usage ([`crate::lm::LanguageModel::run_notes`]),
    /// recorded as `config.api`; `None` leaves it out.
    pub api: Option<Value>,
    /// `--chat-template MODE` of a local run (generation prompts sent as one chat turn),
    /// recorded as `config.chat_template`; `None` leaves it out.
    #[serde(default)]
    pub chat_template: Option<String>,
    pub model_revision: Option<String>,
    pub model_sha: Option<String>,
    pub peft_sha: Option<String>,
}

/// `results.json` for `results`.
pub fn results_json(results: &[TaskResult], info: &RunInfo) -> Value {
    let mut res = Map::new();
    let mut versions = Map::new();
    let mut n_shot = Map::new();
    let mut higher = Map::new();
    let mut n_samples = Map::new();
    let mut hashes = Map::new();
    for r in results {
        let mut m = Map::new();
        m.insert("alias".into(), json!(r.name));
        let mut hib = Map::new();
        for metric in &r.metrics {
            let (name, filter) = split_filter(metric.name);
            m.insert(format!("{name},{filter}"), number(metric.value));
            m.insert(
                format!("{name}_stderr,{filter}"),
                metric.stderr.map_or(json!("N/A"), number),
            );
            hib.insert(name.into(), json!(metric.higher_is_better));
        }
        res.insert(r.name.into(), Value::Object(m));
        versions.insert(r.name.into(), json!(r.version));
        n_shot.insert(r.name.into(), json!(r.num_fewshot));
        higher.insert(r.name.into(), Value::Object(hib));
        let mut counts = json!({"original": r.n_original, "effective": r.n_effective});
        if let Some(k) = r.skipped_missing_images {
            counts["skipped_missing_images"] = json!(k);
        }
        n_samples.insert(r.name.into(), counts);
        hashes.insert(r.name.into(), json!(r.hash));
    }
    let present = |t: &str| results.iter().any(|r| r.name == t);
    let group_subtasks: Map<String, Value> = GROUPS
        .iter()
        .filter(|(_, members)| members.iter().any(|m| present(m)))
        .map(|(g, members)| {
            let m: Vec<&str> = members.iter().copied().filter(|m| present(m)).collect();
            (g.to_string(), json!(m))
        })
        .collect();
    let mut out = json!({
        "results": res,
        "group_subtasks": group_subtasks,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": higher,
        "n-samples": n_samples,
        "config": {
            "model": "sightline",
            "model_args": info.model,
            "adapter": info.adapter,
            "dtype": info.dtype,
            "batch_size": info.batch_size,
            "limit": info.limit,
            "random_seed": info.shuffle_seed,
            "doc_shuffle": format!("random.Random({}).shuffle, per task (lm-eval 0.3 evaluator)", info.shuffle_seed),
            "truthfulqa_data": info.truthfulqa_data,
            "add_bos_token": info.add_bos,
            "empty_context_prefix": info.empty_context_prefix,
            "max_length": info.max_length,
            "max_gen_toks": 256,
            "num_fewshot": 0,
        },
        "task_hashes": hashes,
        "git_hash": info.git_hash,
        "date": info.date,
        "total_evaluation_time_seconds": format!("{}", info.total_seconds),
        "cached_requests": info.cache_hits,
        "sightline_version": env!("CARGO_PKG_VERSION"),
    });
    for (key, v) in [
        ("model_revision", &info.model_revision),
        ("model_sha", &info.model_sha),
        ("peft_sha", &info.peft_sha),
    ] {
        if let Some(v) = v {
            out["config"][key] = json!(v);
        }
    }
    if let Some(api) = &info.api {
        out["config"]["api"] = api.clone();
    }
    if let Some(mode) = &info.chat_template {
        out["config"]["chat_template"] = json!(mode);
    }
    if let Some(mm) = &info.multimodal {
        out["config"]["multimodal"] = mm.clone();
    }
    // lm-eval 0.4's per-task `configs`, holding only what sightline adds: the protocol of a
    // generative-protocol task. Absent when no task has one, so other runs' files are as before.
    let configs: Map<String, Value> = results
        .iter()
        .filter_map(|r| {
            let p = r.protocol.as_ref()?;
            Some((r.name.to_string(), json!({"protocol": p})))
        })
        .collect();
    if !configs.is_empty() {
        out["configs"] = Value::Object(configs);
    }
    out
}

/// A metric's lm-eval name and filter: `exact_match,strict-match` for a task that names its
/// filter (lm-eval 0.4's `gsm8k`), `acc` → (`acc`, `none`).
fn split_filter(name: &str) -> (&str, &str) {
    name.split_once(',').unwrap_or((name, "none"))
}

/// JSON number, or the string "NaN" where the value is not finite (JSON has no NaN).
fn number(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!(format!("{x}"))
    }
}

/// The harness's results table (`make_table`).
pub fn markdown_table(results: &[TaskResult]) -> String {
    let mut rows = vec![[
        "Tasks".to_string(),
        "Version".into(),
        "Filter".into(),
        "n-shot".into(),
        "Metric".into(),
        "".into(),
        "Value".into(),
        "".into(),
        "Stderr".into(),
    ]];
    for r in results {
        let mut last_filter = None;
        for (i, m) in r.metrics.iter().enumerate() {
            let first = i == 0;
            let (name, filter) = split_filter(m.name);
            let new_filter = last_filter != Some(filter);
            last_filter = Some(filter);
            rows.push([
                if first {
                    r.name.to_string()
                } else {
                    String::new()
                },
                if first {
                    r.version.to_string()
                } else {
                    String::new()
                },
                if new_filter {
                    filter.to_string()
                } else {
                    String::new()
                },
                if first {
                    r.num_fewshot.to_string()
                } else {
                    String::new()
                },
                name.to_string(),
                if m.higher_is_better {
                    "↑".into()
                } else {
                    "↓".into()
                },
                format!("{:.4}", m.value),
                "±".into(),
                m.stderr.map_or("N/A".into(), |s| format!("{s:.4}")),
            ]);
        }
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let right = [false, true, false, true, false, false, true, false, true];
    let mut out = String::new();
    for (k, row) in rows.iter().enumerate() {
        out.push('|');
        for c in 0..9 {
            let pad = widths[c] - row[c].chars().count();
            if right[c] && k > 0 {
                out.push_str(&" ".repeat(pad));
                out.push_str(&row[c]);
            } else {
                out.push_str(&row[c]);
                out.push_str(&" ".repeat(pad));
            }
            out.push('|');
        }
        out.push('\n');
        if k == 0 {
            out.push('|');
            for c in 0..9 {
                let dashes = "-".repeat(widths[c].max(1));
                if right[c] {
                    out.push_str(&dashes[..dashes.len() - 1]);
                    out.push(':');
                } else {
                    out.push_str(&dashes);
                }
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}
