//! Finding and reading the runs a report compares.
//!
//! Each input directory is walked (sorted, at most [`MAX_DEPTH`] levels) for:
//! - sightline: `results.json` / `results_<corruption>_<severity>.json` with
//!   `samples_<task>.jsonl` / `samples_<task>_<corruption>_<severity>.jsonl` beside them;
//! - lm-evaluation-harness 0.4: `results_<date>.json` + `samples_<task>_<date>.jsonl`
//!   (`--log_samples`); with several dates, each task is taken from its newest file;
//! - lmms-eval: the same schema, named `results_<date>.json` or `<date>_results.json` +
//!   `<date>_samples_<task>.jsonl`;
//! - sightline's `train_log.jsonl` (`{step, epoch, loss, lr, grad_norm, tokens, seconds}`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

mod records;

pub use records::{read_samples, read_train_log};

/// How deep below an input directory files are looked for.
pub const MAX_DEPTH: usize = 4;

/// One evaluated condition: a task, on clean or corrupted images.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    /// The task name as the harness writes it (`truthfulqa_mc2`, `pope_random`).
    pub task: String,
    /// `(corruption, severity)` for `results_<corruption>_<severity>.json`.
    pub corruption: Option<(String, u32)>,
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.corruption {
            None => write!(f, "{}", self.task),
            Some((c, s)) => write!(f, "{} [{c} {s}]", self.task),
        }
    }
}

/// A reported aggregate, exactly as the results file has it.
#[derive(Debug, Clone)]
pub struct MetricValue {
    /// The value (NaN where the file says "NaN").
    pub value: f64,
    /// The stderr; `None` for "N/A" or when absent.
    pub stderr: Option<f64>,
    /// The results file it came from.
    pub file: PathBuf,
}

/// One document's value of one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PerDoc {
    /// A number (NaN for "NaN" or null).
    Num(f64),
    /// Something else (a corpus-level metric's per-document item, e.g. `[ref, pred]`).
    Item,
}

/// One line of a samples file.
#[derive(Debug, Clone)]
pub struct Doc {
    /// 1-based line in the samples file.
    pub line: usize,
    /// lm-eval's `doc_hash`, when written.
    pub hash: Option<String>,
    /// Metric name → value.
    pub values: BTreeMap<String, PerDoc>,
    /// For yes/no tasks (POPE): (answered yes, label is yes), from sightline's
    /// `filtered_resps[0]` + `doc.label` or lmms-eval's `{prediction, ground_truth}` items; lets
    /// the bootstrap recompute precision, recall and F1.
    pub yes_no: Option<(bool, bool)>,
}

/// A task's per-document records.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The samples file.
    pub file: PathBuf,
    /// `doc_id` → record, in `doc_id` order.
    pub docs: BTreeMap<i64, Doc>,
}

/// Everything one model has for one task condition.
#[derive(Debug, Clone, Default)]
pub struct TaskRun {
    /// Metric name (with `,<filter>` when the filter is not "none") → reported value.
    pub metrics: BTreeMap<String, MetricValue>,
    /// Per-document records, when the run logged them.
    pub samples: Option<Samples>,
    /// Documents evaluated (`n-samples.effective`), when written.
    pub n: Option<u64>,
}

/// One optimizer step of a training log.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Optimizer step.
    pub step: f64,
    /// Mean loss; `None` where the log has null.
    pub loss: Option<f64>,
    /// Learning rate.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// A `train_log.jsonl`.
#[derive(Debug, Clone)]
pub struct TrainLog {
    /// The file.
    pub file: PathBuf,
    /// Its steps, in file order.
    pub steps: Vec<Step>,
}

/// All runs that share one label.
#[derive(Debug, Clone)]
pub struct Model {
    /// The label.
    pub label: String,
    /// Task condition → results.
    pub tasks: BTreeMap<TaskKey, TaskRun>,
    /// Training logs found under the model's directories.
    pub train: Vec<TrainLog>,
}

/// Reads every input directory and merges those that share a label, in the order labels first
/// appear.
pub fn load(inputs: &[(PathBuf, String)]) -> Result<Vec<Model>> {
    let mut models: Vec<Model> = Vec::new();
    for (dir, label) in inputs {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "{}: not a directory (expected a folder with results or a train_log.jsonl)",
                dir.display()
            )));
        }
        let idx = match models.iter().position(|m| &m.label == label) {
            Some(i) => i,
            None => {
                models.push(Model {
                    label: label.clone(),
                    tasks: BTreeMap::new(),
                    train: Vec::new(),
                });
                models.len() - 1
            }
        };
        let mut dirs = Vec::new();
        walk(dir, 0, &mut dirs)?;
        for d in dirs {
            read_dir_runs(&d, &mut models[idx])?;
        }
    }
    Ok(models)
}

/// `dir` and its subdirectories down to [`MAX_DEPTH`], sorted by path.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(dir.to_path_buf());
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for sub in sorted_entries(dir)? {
        if sub.is_dir() {
            walk(&sub, depth + 1, out)?;
        }
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        v.push(e.map_err(|e| Error::io(dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

/// What a results file's name says about where its samples are.
#[derive(Debug, Clone)]
enum Naming {
    /// sightline: `samples_<task><suffix>.jsonl`.
    Sightline { suffix: String },
    /// lm-eval: `samples_<task>_<date>.jsonl`.
    LmEval { date: String },
    /// lmms-eval: `<date>_samples_<task>.jsonl`.
    Lmms { date: String },
}

fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && (b[4] == b'-' || b[4].is_ascii_digit())
}

/// Classifies a file name as a results file.
fn results_naming(name: &str) -> Option<(Naming, Option<(String, u32)>)> {
    if name == "results.json" {
        return Some((
            Naming::Sightline {
                suffix: String::new(),
            },
            None,
        ));
    }
    let stem = name.strip_suffix(".json")?;
    if let Some(date) = stem.strip_suffix("_results").filter(|d| looks_like_date(d)) {
        return Some((Naming::Lmms { date: date.into() }, None));
    }
    let rest = stem.strip_prefix("results_")?;
    if looks_like_date(rest) {
        return Some((Naming::LmEval { date: rest.into() }, None));
    }
    let (corr, sev) = rest.rsplit_once('_')?;
    let sev: u32 = sev.parse().ok()?;
    Some((
        Naming::Sightline {
            suffix: format!("_{rest}"),
        },
        Some((corr.to_string(), sev)),
    ))
}

fn samples_path(dir: &Path, naming: &Naming, task: &str) -> PathBuf {
    dir.join(match naming {
        Naming::Sightline { suffix } => format!("samples_{task}{suffix}.jsonl"),
        Naming::LmEval { date } => format!("samples_{task}_{date}.jsonl"),
        Naming::Lmms { date } => format!("{date}_samples_{task}.jsonl"),
    })
}

/// Reads the results files and training log directly in `dir` into `model`.
fn read_dir_runs(dir: &Path, model: &mut Model) -> Result<()> {
    // Per task condition, the newest results file that has it (dates sort as strings).
    let mut chosen: BTreeMap<TaskKey, (String, PathBuf, Naming)> = BTreeMap::new();
    let mut parsed: BTreeMap<PathBuf, Value> = BTreeMap::new();
    for path in sorted_entries(dir)? {
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        if name == "train_log.jsonl" {
            model.train.push(read_train_log(&path)?);
            continue;
        }
        let Some((naming, corruption)) = results_naming(&name) else {
            continue;
        };
        let json = read_json(&path)?;
        let date = match &naming {
            Naming::LmEval { date } | Naming::Lmms { date } => date.clone(),
            Naming::Sightline { .. } => String::new(),
        };
        for task in result_tasks(&json, &path)? {
            let key = TaskKey {
                task,
                corruption: corruption.clone(),
            };
            let newer = chosen.get(&key).is_none_or(|(d, _, _)| date > *d);
            if newer {
                chosen.insert(key, (date.clone(), path.clone(), naming.clone()));
            }
        }
        parsed.insert(path, json);
    }
    for (key, (_, path, naming)) in chosen {
        let json = &parsed[&path];
        let run = read_task(
            json,
            &path,
            &key.task,
            &samples_path(dir, &naming, &key.task),
        )?;
        merge(model, key, run)?;
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::parse(
            path,
            Some(e.line()),
            format!("not valid JSON ({e}); expected a results file"),
        )
    })
}

/// The task names of a results file, groups left out (their members are read instead, and the
/// report computes its own averages).
fn result_tasks(json: &Value, path: &Path) -> Result<Vec<String>> {
    let results = json
        .get("results")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::parse(
                path,
                None,
                "no \"results\" object (expected lm-eval's results schema)",
            )
        })?;
    let is_group = |t: &str| {
        let listed = |k: &str| {
            json.get(k)
                .and_then(|g| g.get(t))
                .is_some_and(|m| m.as_array().is_none_or(|a| !a.is_empty()))
        };
        listed("group_subtasks") || listed("groups")
    };
    Ok(results.keys().filter(|t| !is_group(t)).cloned().collect())
}

fn read_task(json: &Value, path: &Path, task: &str, samples: &Path) -> Result<TaskRun> {
    let entry = json["results"][task].as_object().ok_or_else(|| {
        Error::parse(
            path,
            None,
            format!("results.{task}: expected an object of metrics"),
        )
    })?;
    let mut run = TaskRun {
        n: json["n-samples"][task]["effective"].as_u64(),
        ..TaskRun::default()
    };
    for (key, v) in entry {
        let Some((metric, filter)) = key.split_once(',') else {
            continue; // "alias" and other labels
        };
        if metric.ends_with("_stderr") {
            continue;
        }
        let name = metric_name(metric, filter);
        let value = number(v).ok_or_else(|| {
            Error::parse(
                path,
                None,
                format!("results.{task}.\"{key}\": expected a number or \"NaN\", got {v}"),
            )
        })?;
        let stderr = entry
            .get(&format!("{metric}_stderr,{filter}"))
            .and_then(number)
            .filter(|s| s.is_finite());
        run.metrics.insert(
            name,
            MetricValue {
                value,
                stderr,
                file: path.to_path_buf(),
            },
        );
    }
    if samples.is_file() {
        run.samples = Some(read_samples(samples)?);
    }
    Ok(run)
}

/// `acc` for filter "none", `exact_match,strict-match` otherwise.
pub(crate) fn metric_name(metric: &str, filter: &str) -> String {
    if filter == "none" {
        metric.to_string()
    } else {
        format!("{metric},{filter}")
    }
}

/// A JSON number, or the strings "NaN"/"nan"/"inf" that writers use where JSON has none.
pub(crate) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "nan" => Some(f64::NAN),
            "inf" | "infinity" => Some(f64::INFINITY),
            "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// Adds `run` to `model`; the same (task, metric) with a different value is an error.
fn merge(model: &mut Model, key: TaskKey, run: TaskRun) -> Result<()> {
    let label = model.label.clone();
    let slot = model.tasks.entry(key.clone()).or_default();
    for (name, mv) in run.metrics {
        match slot.metrics.get(&name) {
            Some(old)
                if !same(old.value, mv.value)
                    || old.stderr.map(f64::to_bits) != mv.stderr.map(f64::to_bits) =>
            {
                return Err(Error::Conflict(Box::new(crate::error::Conflict {
                    model: label,
                    task: key.to_string(),
                    metric: name,
                    a: fmt_pair(old),
                    file_a: old.file.clone(),
                    b: fmt_pair(&mv),
                    file_b: mv.file.clone(),
                })));
            }
            Some(_) => {}
            None => {
                slot.metrics.insert(name, mv);
            }
        }
    }
    if slot.samples.is_none() {
        slot.samples = run.samples;
    }
    if slot.n.is_none() {
        slot.n = run.n;
    }
    Ok(())
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn fmt_pair(m: &MetricValue) -> String {
    match m.stderr {
        Some(s) => format!("{} ± {}", m.value, s),
        None => format!("{}", m.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_file_names() {
        assert!(matches!(
            results_naming("results.json"),
            Some((Naming::Sightline { .. }, None))
        ));
        let (n, c) = results_naming("results_gaussian_noise_3.json").unwrap();
        assert!(matches!(n, Naming::Sightline { ref suffix } if suffix == "_gaussian_noise_3"));
        assert_eq!(c, Some(("gaussian_noise".into(), 3)));
        assert!(matches!(
            results_naming("results_2025-01-02T03-04-05.123456.json"),
            Some((Naming::LmEval { .. }, None))
        ));
        assert!(matches!(
            results_naming("20250102_030405_results.json"),
            Some((Naming::Lmms { .. }, None))
        ));
        assert!(results_naming("config.json").is_none());
        assert!(results_naming("results_foo.json").is_none());
    }
}
