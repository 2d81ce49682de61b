//! GSM8K (Cobbe et al. 2021) as the paper ran it: lm-evaluation-harness 0.3-era `master`
//! `GradeSchoolMath8K` (@ 0bf683b) with `--num_fewshot 8`. Eight *random training examples*
//! (full worked solutions ending in `#### N`) from the per-task seed-42 stream, greedy
//! generation until `":"`, `"Question:"`, `"Question"` or EOS (at most 256 tokens), the first
//! `#### N` of the completion against the reference's, exact string match.
//! Spec: `shared/spec/other-nlp.md` items 9–14, `lm-eval-scoring.md` items 26–29.
//!
//! The PyPI `lm_eval==0.3.0` release stops at `"\n"` instead (its `gsm8k.py` differs from the
//! paper's commit in that one line); lm-eval 0.4's `gsm8k` is 5-shot with another sampler and
//! other stops. Neither is what the paper ran, and neither is offered here.

use serde_json::{json, Value};
use sightline_random::PyRandom;

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::task::{field, Metric, Request, Response, Task};

/// Few-shot examples per document (`eval_nlp.sh`: `--num_fewshot 8`).
pub const SHOTS: usize = 8;
/// The harness's `INVALID_ANS`.
pub const INVALID: &str = "[invalid]";
/// The stop strings of the paper's harness commit (EOS is added by the model).
pub const UNTIL: [&str; 3] = [":", "Question:", "Question"];

/// Reads a GSM8K JSON Lines split as `{question, answer}` documents.
fn read_split(data: &DataSource, rel: &str) -> Result<Vec<Value>> {
    let name = data.describe(rel);
    data.read_text(rel)?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| Error::data(&name, i + 1, format!("not JSON: {e}")))?;
            let get = |k: &str| {
                v.get(k).and_then(Value::as_str).ok_or_else(|| {
                    Error::data(&name, i + 1, format!("field `{k}` must be a string"))
                })
            };
            let (question, answer) = (get("question")?, get("answer")?);
            if extract_answer(answer) == INVALID {
                return Err(Error::data(
                    &name,
                    i + 1,
                    "field `answer` has no `#### N` line (the harness asserts a gold answer)",
                ));
            }
            Ok(json!({"question": question, "answer": answer}))
        })
        .collect()
}

/// `doc_to_text`.
fn doc_to_text(doc: &Value) -> Result<String> {
    Ok(format!("Question: {}\nAnswer:", field(doc, "question")?))
}

/// The harness's `ANS_RE = r"#### (\-?[0-9\.\,]+)"`, first match (`re.search`), stripped and
/// with every `,` removed; [`INVALID`] when nothing matches. Written out because the pattern
/// is a literal followed by one character class: a regex engine would add nothing.
pub fn extract_answer(text: &str) -> String {
    let is_num = |c: char| c.is_ascii_digit() || c == '.' || c == ',';
    let mut from = 0;
    while let Some(pos) = text[from..].find("#### ") {
        let rest = &text[from + pos + 5..];
        // `\-?` is greedy but backtracks: "-" only counts when a number follows it.
        let (sign, body) = match rest.strip_prefix('-') {
            Some(b) if b.starts_with(is_num) => ("-", b),
            _ => ("", rest),
        };
        let len = body.find(|c: char| !is_num(c)).unwrap_or(body.len());
        if len > 0 {
            return format!("{sign}{}", &body[..len]).trim().replace(',', "");
        }
        from += pos + 1;
    }
    INVALID.to_string()
}

/// `gsm8k`: 8-shot greedy generation, `acc` = exact match of the extracted answers.
pub struct Gsm8k;

impl Task for Gsm8k {
    fn num_fewshot(&self) -> usize {
        SHOTS
    }

    fn name(&self) -> &'static str {
        "gsm8k"
    }
    fn version(&self) -> u32 {
        0
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        read_split(data, "gsm8k/test.jsonl")
    }
    fn attach_fewshot(
        &self,
        docs: &mut [(usize, Value)],
        rnd: &mut PyRandom,
        data: &DataSource,
    ) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let train = read_split(data, "gsm8k/train.jsonl")?;
        for (_, doc) in docs.iter_mut() {
            let ids = rnd.sample(train.len(), SHOTS).ok_or_else(|| {
                Error::Config(format!(
                    "gsm8k: {} training examples, fewer than {SHOTS}",
                    train.len()
                ))
            })?;
            let mut text = String::new();
            for &i in &ids {
                let ex = &train[i];
                text.push_str(&doc_to_text(ex)?);
                text.push(' ');
                text.push_str(field(ex, "answer")?);
                text.push_str("\n\n");
            }
            doc["fewshot_ids"] = json!(ids);
            doc["fewshot"] = json!(text);
        }
        Ok(())
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        Ok(vec![Request::GenerateUntil {
            context: format!("{}{}", field(doc, "fewshot")?, doc_to_text(doc)?),
            until: UNTIL.iter().map(|s| s.to_string()).collect(),
        }])
    }
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        let gold = extract_answer(field(doc, "answer")?);
        let got = extract_answer(responses.first().map(Response::text).unwrap_or(""));
        Ok(vec![if got == gold { 1.0 } else { 0.0 }])
    }
    fn metrics(&self) -> &'static [Metric] {
        const M: &[Metric] = &[Metric::mean("acc")];
        M
    }
    fn extracted(&self, _doc: &Value, responses: &[Response]) -> Option<Value> {
        Some(json!(extract_answer(
            responses.first().map(Response::text).unwrap_or("")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_follows_the_harness_regex() {
        assert_eq!(extract_answer("so 3+4=7\n#### 7"), "7");
        assert_eq!(extract_answer("#### 1,234.5 dollars"), "1234.5");
        assert_eq!(extract_answer("#### -12"), "-12");
        // "-" with no number after it: the regex retries without the sign and fails there.
        assert_eq!(extract_answer("#### -x #### 5"), "5");
        assert_eq!(extract_answer("####  5"), INVALID);
        assert_eq!(extract_answer("no answer"), INVALID);
        assert_eq!(extract_answer("#### 72.0"), "72.0");
    }

    #[test]
    fn bundled_splits_have_the_documented_sizes() {
        let data = DataSource::default();
        assert_eq!(read_split(&data, "gsm8k/test.jsonl").unwrap().len(), 1319);
        assert_eq!(read_split(&data, "gsm8k/train.jsonl").unwrap().len(), 7473);
    }
}
