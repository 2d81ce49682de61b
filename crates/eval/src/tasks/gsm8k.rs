//! GSM8K (Cobbe et al. 2021) as the paper ran it: lm-evaluation-harness 0.3-era `master`
//! `GradeSchoolMath8K` (@ 0bf683b) with `--num_fewshot 8`. Eight *random training examples*
//! (full worked solutions ending in `#### N`) from the per-task seed-42 stream, greedy
//! generation until `":"`, `"Question:"`, `"Question"` or EOS (at most 256 tokens), the first
//! `#### N` of the completion against the reference's, exact string match.
//! Spec: `shared/spec/other-nlp.md` items 9–14, `lm-eval-scoring.md` items 26–29.
//!
//! `--gsm8k-harness 0.4` runs lm-eval 0.4.9.1's `gsm8k` instead ([`Gsm8kV04`]): 5-shot from
//! its own seed-1234 sampler, other stops, `exact_match` under two answer filters. The PyPI
//! `lm_eval==0.3.0` release stops at `"\n"` (its `gsm8k.py` differs from the paper's commit in
//! that one line); that one is not offered.

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
    match strict_match(text) {
        Some(m) => m.trim().replace(',', ""),
        None => INVALID.to_string(),
    }
}

/// The group of the first match of `#### (\-?[0-9\.\,]+)` (`re.search`), if any.
pub fn strict_match(text: &str) -> Option<&str> {
    let is_num = |c: char| c.is_ascii_digit() || c == '.' || c == ',';
    let mut from = 0;
    while let Some(pos) = text[from..].find("#### ") {
        let start = from + pos + 5;
        let rest = &text[start..];
        // `\-?` is greedy but backtracks: "-" only counts when a number follows it.
        let (sign, body) = match rest.strip_prefix('-') {
            Some(b) if b.starts_with(is_num) => (1, b),
            _ => (0, rest),
        };
        let len = body.find(|c: char| !is_num(c)).unwrap_or(body.len());
        if len > 0 {
            return Some(&text[start..start + sign + len]);
        }
        from += pos + 1;
    }
    None
}

/// Draws `shots` examples of `train` from `rnd` (CPython's `random.sample`, as both harness
/// versions draw them) and stores them in `doc`: each `"Question: q\nAnswer:" + " " +
/// answer + "\n\n"`, the text both harness versions build (0.3: `"\n\n".join(...) + "\n\n"`;
/// 0.4: `doc_to_text + target_delimiter + doc_to_target + fewshot_delimiter` per example).
fn attach(doc: &mut Value, train: &[Value], rnd: &mut PyRandom, shots: usize) -> Result<()> {
    let ids = rnd.sample(train.len(), shots).ok_or_else(|| {
        Error::Config(format!(
            "gsm8k: {} training examples, fewer than {shots}",
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
    Ok(())
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
            attach(doc, &train, rnd, SHOTS)?;
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

/// Which harness's GSM8K `gsm8k` runs (`--gsm8k-harness`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Harness {
    /// The paper's: the 0.3-era harness commit 0bf683b ([`Gsm8k`]).
    #[default]
    Paper,
    /// lm-eval 0.4.9.1's `gsm8k.yaml` ([`Gsm8kV04`]).
    V04,
}

/// lm-eval 0.4.9.1 `gsm8k` (`lm_eval/tasks/gsm8k/gsm8k.yaml`, version 3.0): 5-shot.
pub const V04_SHOTS: usize = 5;
/// Its `fewshot_random_seed` (the sampler's own `random.Random`, not the document shuffle's).
pub const V04_FEWSHOT_SEED: u64 = 1234;
/// Its `generation_kwargs.until` (EOS is added by the model, as HFLM adds it).
pub const V04_UNTIL: [&str; 3] = ["Question:", "</s>", "<|im_end|>"];

/// The `strict-match` filter: regex `#### (\-?[0-9\.\,]+)`, first match, stripped; else
/// `"[invalid]"`.
pub fn filter_strict(text: &str) -> String {
    strict_match(text).map_or(INVALID.to_string(), |m| m.trim().to_string())
}

/// The `flexible-extract` filter: regex `(-?[$0-9.,]{2,})|(-?[0-9]+)`, `group_select: -1` (the
/// last of `re.findall`'s matches), its non-empty group, stripped; else `"[invalid]"`. Written
/// out: both alternatives are an optional `-` and a run of one ASCII class.
pub fn filter_flexible(text: &str) -> String {
    let b = text.as_bytes();
    let wide = |c: u8| c.is_ascii_digit() || matches!(c, b'$' | b'.' | b',');
    let run = |from: usize, class: &dyn Fn(u8) -> bool| {
        b[from..].iter().take_while(|&&c| class(c)).count()
    };
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        // A leading "-" only stays when the rest matches after it: "-" is in neither class,
        // so without it neither alternative can start here.
        let j = i + usize::from(b[i] == b'-');
        let end = match run(j, &wide) {
            n if n >= 2 => Some(j + n),
            _ => match run(j, &|c: u8| c.is_ascii_digit()) {
                0 => None,
                n => Some(j + n),
            },
        };
        match end {
            Some(e) => {
                last = Some(&text[i..e]);
                i = e;
            }
            None => i += 1,
        }
    }
    last.map_or(INVALID.to_string(), |m| m.trim().to_string())
}

/// lm-eval 0.4.9.1 `exact_match` as `gsm8k.yaml` configures it: `regexes_to_ignore` `","`,
/// `"\\$"`, `"(?s).*#### "`, `"\\.$"` removed in that order (`re.sub`), then lower-cased
/// (`ignore_case`); no punctuation or number stripping.
pub fn v04_normalize(text: &str) -> String {
    let mut s = text.replace([',', '$'], "");
    // `(?s).*#### `: greedy from the start, so everything through the last "#### ".
    if let Some(p) = s.rfind("#### ") {
        s.drain(..p + 5);
    }
    // `\.$`: Python's `$` matches at the end and before a final "\n".
    if s.ends_with(".\n") {
        s.remove(s.len() - 2);
    } else if s.ends_with('.') {
        s.pop();
    }
    s.to_lowercase()
}

/// `gsm8k` as lm-eval 0.4.9.1 runs it (`--gsm8k-harness 0.4`): 5 training examples from the
/// task's own `random.Random(1234)` drawn in document-index order (0.4 builds requests in that
/// order; on a full run the draws are exactly 0.4's), greedy until `"Question:"`, `"</s>"`,
/// `"<|im_end|>"` or EOS (≤ 256 tokens), `exact_match` of the filtered answer against the whole
/// reference solution, both through [`v04_normalize`], under the `strict-match` and
/// `flexible-extract` filters. Documents and `--limit` are sightline's (seed-42 shuffle).
pub struct Gsm8kV04;

const V04_METRICS: &[Metric] = &[
    Metric::mean("exact_match,strict-match"),
    Metric::mean("exact_match,flexible-extract"),
];

impl Task for Gsm8kV04 {
    fn num_fewshot(&self) -> usize {
        V04_SHOTS
    }
    fn name(&self) -> &'static str {
        "gsm8k"
    }
    fn version(&self) -> u32 {
        3
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        read_split(data, "gsm8k/test.jsonl")
    }
    fn attach_fewshot(
        &self,
        docs: &mut [(usize, Value)],
        _rnd: &mut PyRandom,
        data: &DataSource,
    ) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let train = read_split(data, "gsm8k/train.jsonl")?;
        let mut rnd = PyRandom::from_int(V04_FEWSHOT_SEED);
        let mut order: Vec<usize> = (0..docs.len()).collect();
        order.sort_by_key(|&k| docs[k].0);
        for k in order {
            attach(&mut docs[k].1, &train, &mut rnd, V04_SHOTS)?;
        }
        Ok(())
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        Ok(vec![Request::GenerateUntil {
            context: format!("{}{}", field(doc, "fewshot")?, doc_to_text(doc)?),
            until: V04_UNTIL.iter().map(|s| s.to_string()).collect(),
        }])
    }
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        let gold = v04_normalize(field(doc, "answer")?);
        let text = responses.first().map(Response::text).unwrap_or("");
        let hit = |pred: String| f64::from(u8::from(v04_normalize(&pred) == gold));
        Ok(vec![hit(filter_strict(text)), hit(filter_flexible(text))])
    }
    fn metrics(&self) -> &'static [Metric] {
        V04_METRICS
    }
    fn extracted(&self, _doc: &Value, responses: &[Response]) -> Option<Value> {
        let text = responses.first().map(Response::text).unwrap_or("");
        Some(json!({
            "strict-match": filter_strict(text),
            "flexible-extract": filter_flexible(text),
        }))
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
    fn v04_filters_follow_the_yaml_regexes() {
        assert_eq!(filter_strict("x #### 1,234.\n"), "1,234.");
        assert_eq!(filter_strict("no"), INVALID);
        // flexible: the last match; `{2,}` before the single-digit alternative.
        assert_eq!(filter_flexible("3 apples cost $1,200.50 or 7"), "7");
        assert_eq!(filter_flexible("pay $12. Then"), "$12.");
        assert_eq!(filter_flexible("it is -5 and -x"), "-5");
        assert_eq!(filter_flexible("a - 4"), "4");
        assert_eq!(filter_flexible("--12"), "-12");
        assert_eq!(filter_flexible(".."), "..");
        assert_eq!(filter_flexible("none here"), INVALID);
        assert_eq!(filter_flexible("#### 72"), "72");
        // exact_match's normalisation of both sides.
        assert_eq!(v04_normalize("so <<6*12=72>>72\n#### 7,2"), "72");
        assert_eq!(v04_normalize("$1,200."), "1200");
        assert_eq!(v04_normalize("5.\n"), "5\n");
        assert_eq!(v04_normalize("5.."), "5.");
        assert_eq!(v04_normalize("[invalid]"), "[invalid]");
        assert_eq!(v04_normalize("a #### b #### C"), "c");
    }

    #[test]
    fn bundled_splits_have_the_documented_sizes() {
        let data = DataSource::default();
        assert_eq!(read_split(&data, "gsm8k/test.jsonl").unwrap().len(), 1319);
        assert_eq!(read_split(&data, "gsm8k/train.jsonl").unwrap().len(), 7473);
    }
}
