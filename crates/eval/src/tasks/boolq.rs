//! BoolQ (Clark et al. 2019) as the paper ran it: lm-evaluation-harness 0.3-era `master`
//! `BoolQ` in `superglue.py` (identical in PyPI `lm_eval==0.3.0`), zero-shot on the SuperGLUE
//! validation split: `passage + "\nQuestion: " + question + "?\nAnswer:"`, correct when
//! `(LL(" yes") > LL(" no")) == label` (a tie counts as "no"). Spec: `shared/spec/other-nlp.md`
//! items 19–21. lm-eval 0.4's `boolq` has the same prompt and the same tie rule (`argmax` over
//! `[" no", " yes"]`), so there is no second protocol to offer.
//!
//! Two layouts parse to the same documents (`data/boolq/SOURCES.md`): SuperGLUE's `val.jsonl`
//! (`{question, passage: "<title> -- <passage>", idx, label}`, what HF `super_glue/boolq` and
//! so the harness read) and the original release's `dev.jsonl` (`{question, title, answer,
//! passage}`), whose passage gets the title prefix.

use serde_json::{json, Value};

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::task::{field, Metric, Request, Response, Task};

/// One BoolQ record in either layout as `{question, passage, label}`.
fn parse_record(v: &Value, file: &str, record: usize) -> Result<Value> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::data(file, record, format!("field `{k}` must be a string")))
    };
    let b = |k: &str| {
        v.get(k)
            .and_then(Value::as_bool)
            .ok_or_else(|| Error::data(file, record, format!("field `{k}` must be true or false")))
    };
    let (passage, label) = if v.get("label").is_some() {
        (s("passage")?.to_string(), b("label")?)
    } else if v.get("answer").is_some() {
        (
            format!("{} -- {}", s("title")?, s("passage")?),
            b("answer")?,
        )
    } else {
        return Err(Error::data(
            file,
            record,
            "expected SuperGLUE's {question, passage, idx, label} or the original {question, title, answer, passage}",
        ));
    };
    Ok(json!({"question": s("question")?, "passage": passage, "label": label}))
}

/// Reads a BoolQ JSON Lines file of either layout.
pub fn read_jsonl(text: &str, file: &str) -> Result<Vec<Value>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| Error::data(file, i + 1, format!("not JSON: {e}")))?;
            parse_record(&v, file, i + 1)
        })
        .collect()
}

/// The harness prompt without its final `"\nAnswer:"`: `{passage}\nQuestion: {question}?`
/// (shared with the generative `boolq_gen`, [`super::retention_gen`]).
pub(crate) fn question(doc: &Value) -> Result<String> {
    Ok(format!(
        "{}\nQuestion: {}?",
        field(doc, "passage")?,
        field(doc, "question")?
    ))
}

/// `boolq`: zero-shot yes/no by log-likelihood.
pub struct BoolQ;

impl Task for BoolQ {
    fn name(&self) -> &'static str {
        "boolq"
    }
    fn version(&self) -> u32 {
        1
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        let rel = "boolq/val.jsonl";
        read_jsonl(&data.read_text(rel)?, &data.describe(rel))
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        let context = format!("{}\nAnswer:", question(doc)?);
        Ok([" yes", " no"]
            .iter()
            .map(|c| Request::Loglikelihood {
                context: context.clone(),
                continuation: c.to_string(),
            })
            .collect())
    }
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        let label = doc["label"].as_bool().unwrap_or(false);
        let yes = responses[0].logprob() > responses[1].logprob();
        Ok(vec![if yes == label { 1.0 } else { 0.0 }])
    }
    fn metrics(&self) -> &'static [Metric] {
        const M: &[Metric] = &[Metric::mean("acc")];
        M
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two layouts agree record for record (`data/boolq/SOURCES.md`, "Verification").
    #[test]
    fn both_layouts_give_the_same_documents() {
        let val = BoolQ.docs(&DataSource::default()).unwrap();
        assert_eq!(val.len(), 3270);
        let dev_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/boolq/dev.jsonl");
        let dev = read_jsonl(&std::fs::read_to_string(dev_path).unwrap(), dev_path).unwrap();
        assert_eq!(dev, val);
        assert_eq!(val.iter().filter(|d| d["label"] == true).count(), 2033);
    }

    #[test]
    fn a_record_of_neither_layout_is_named() {
        let err = read_jsonl("{\"question\": \"q\"}\n", "x.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.jsonl: record 1:"), "{err}");
    }
}
