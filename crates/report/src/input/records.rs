//! The per-line files: samples (`samples_<task>*.jsonl`, one record per document) and
//! sightline's `train_log.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{metric_name, number, Doc, PerDoc, Samples, Step, TrainLog};
use crate::error::{Error, Result};

/// Record fields that are not metric values.
const NOT_METRICS: &[&str] = &[
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
    "input",
];

/// The JSON values of a JSON Lines file with their 1-based line numbers, blank lines skipped;
/// `what` names one line's content in the error for a line that is not JSON.
fn json_lines(path: &Path, what: &str) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let rec = serde_json::from_str(line).map_err(|e| {
                Error::parse(
                    path,
                    Some(i + 1),
                    format!("not valid JSON ({e}); expected one {what} per line"),
                )
            })?;
            Ok((i + 1, rec))
        })
        .collect()
}

/// Reads a samples file: one JSON object per line with an integer `doc_id`.
pub fn read_samples(path: &Path) -> Result<Samples> {
    let mut docs: BTreeMap<i64, Doc> = BTreeMap::new();
    for (ln, rec) in json_lines(path, "sample record")? {
        let obj = rec
            .as_object()
            .ok_or_else(|| Error::parse(path, Some(ln), "expected a JSON object per line"))?;
        let doc_id = obj.get("doc_id").and_then(Value::as_i64).ok_or_else(|| {
            Error::parse(
                path,
                Some(ln),
                "field doc_id: missing or not an integer (expected the document's index)",
            )
        })?;
        let filter = obj.get("filter").and_then(Value::as_str).unwrap_or("none");
        let names: Vec<String> = match obj.get("metrics").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            None => obj
                .keys()
                .filter(|k| !NOT_METRICS.contains(&k.as_str()))
                .cloned()
                .collect(),
        };
        let doc = docs.entry(doc_id).or_insert_with(|| Doc {
            line: ln,
            hash: obj
                .get("doc_hash")
                .and_then(Value::as_str)
                .map(String::from),
            values: BTreeMap::new(),
            yes_no: yes_no(obj),
        });
        for m in names {
            let Some(v) = obj.get(&m) else { continue };
            let value = match v {
                Value::Null => PerDoc::Num(f64::NAN),
                Value::Bool(b) => PerDoc::Num(f64::from(u8::from(*b))),
                other => number(other).map_or(PerDoc::Item, PerDoc::Num),
            };
            let name = metric_name(&m, filter);
            if doc.values.insert(name.clone(), value).is_some() {
                return Err(Error::parse(
                    path,
                    Some(ln),
                    format!("doc_id {doc_id}: metric {name} given twice (expected one record per document and filter)"),
                ));
            }
        }
    }
    Ok(Samples {
        file: path.to_path_buf(),
        docs,
    })
}

fn yes_no_word(v: &Value) -> Option<bool> {
    match v.as_str()?.trim().to_ascii_lowercase().as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// (prediction is yes, label is yes) of a yes/no record, where both are plain yes/no.
fn yes_no(obj: &serde_json::Map<String, Value>) -> Option<(bool, bool)> {
    let sightline = || {
        let pred = obj.get("filtered_resps")?.get(0)?;
        let label = obj.get("doc")?.get("label")?;
        Some((yes_no_word(pred)?, yes_no_word(label)?))
    };
    let lmms = || {
        obj.values().find_map(|v| {
            Some((
                yes_no_word(v.get("prediction")?)?,
                yes_no_word(v.get("ground_truth")?)?,
            ))
        })
    };
    sightline().or_else(lmms)
}

/// Reads sightline's `train_log.jsonl`.
pub fn read_train_log(path: &Path) -> Result<TrainLog> {
    let mut steps = Vec::new();
    for (ln, rec) in json_lines(path, "step")? {
        let field = |f: &str| -> Result<f64> {
            rec.get(f).and_then(number).ok_or_else(|| {
                Error::parse(
                    path,
                    Some(ln),
                    format!("field {f}: missing or not a number"),
                )
            })
        };
        let loss = match rec.get("loss") {
            None | Some(Value::Null) => None,
            Some(v) => Some(number(v).ok_or_else(|| {
                Error::parse(path, Some(ln), "field loss: expected a number or null")
            })?),
        };
        steps.push(Step {
            step: field("step")?,
            loss,
            lr: field("lr")?,
            grad_norm: field("grad_norm")?,
        });
    }
    Ok(TrainLog {
        file: path.to_path_buf(),
        steps,
    })
}
