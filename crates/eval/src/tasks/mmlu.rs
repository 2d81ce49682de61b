//! MMLU (Hendrycks et al. 2021) two ways:
//!
//! - `mmlu`: the paper's own script (`llava/eval/mmlu/evaluate_mmlu.py`, adapted from the
//!   hendrycks/test FLAN script), **not** the harness. Five `dev` examples after a header with its
//!   double space (`"...about  abstract algebra.\n\n"`), k reduced while the prompt *with BOS*
//!   is over 2,048 tokens, BOS prepended, greedy 2 new tokens; a question is correct when the
//!   stripped output starts with the answer letter. Per-subject, per-subcategory and
//!   per-category accuracy and the micro-average. Spec: `shared/spec/other-nlp.md` items 1–8.
//! - `mmlu_loglik`: the usual protocol of leaderboards, the log-likelihood of `" A"`..`" D"`
//!   after the same 5-shot prompt (harness scoring: no BOS, left-truncated to the model's
//!   context), the argmax against the answer.
//!
//! Cells are formatted as pandas ≥ 2 reads them (`read_csv(header=None)` then `"{}".format`):
//! the ten option cells that read `None` print as `nan` (pandas 1.x would print `None`; which
//! one the paper had is unknown, `data/mmlu/SOURCES.md`). A column pandas would infer as numeric
//! or boolean is refused rather than guessed (none of the bundled files has one).

use serde_json::{json, Value};

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::task::{argmax, field, Metric, Request, Response, Task};
use crate::tasks::mmlu_tables::{CATEGORIES, METRICS, SUBCATEGORIES, SUBJECTS};

/// `--ntrain 5`.
pub const NTRAIN: usize = 5;
/// `select_model(max_input_length=2048, ...)`.
pub const FIT_TOKENS: usize = 2048;
/// `select_model(max_output_length=2, ...)`.
pub const MAX_NEW_TOKENS: usize = 2;
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// pandas' default `na_values` (with `"None"`, added in pandas 2.0).
const NA: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// Reads one subject file as pandas would hand its cells to `str.format`.
fn read_table(data: &DataSource, rel: &str) -> Result<Vec<[String; 6]>> {
    let name = data.describe(rel);
    let rows = data.read_csv(rel, false)?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let r: [String; 6] = r.clone().try_into().map_err(|r: Vec<String>| {
            Error::data(
                &name,
                i + 1,
                format!(
                    "expected 6 columns (question, A, B, C, D, answer), found {}",
                    r.len()
                ),
            )
        })?;
        if NA.contains(&r[0].as_str()) {
            return Err(Error::data(
                &name,
                i + 1,
                "the question cell is empty or NA (the script would fail on it)",
            ));
        }
        if !LETTERS.contains(&r[5].as_str()) {
            return Err(Error::data(
                &name,
                i + 1,
                format!("answer must be A-D, found {:?}", r[5]),
            ));
        }
        out.push(r);
    }
    for col in 1..5 {
        let typed = out.iter().all(|r| {
            let c = r[col].as_str();
            NA.contains(&c)
                || c.parse::<f64>().is_ok()
                || ["True", "False", "TRUE", "FALSE", "true", "false"].contains(&c)
        });
        if typed && !out.is_empty() {
            return Err(Error::data(&name, 0, format!(
                "column {col} holds only numbers/booleans/NA: pandas would infer a typed column and reformat it, which is not reproduced"
            )));
        }
    }
    for r in &mut out {
        for cell in &mut r[1..5] {
            if NA.contains(&cell.as_str()) {
                *cell = "nan".to_string();
            }
        }
    }
    Ok(out)
}

/// `format_subject`: each `_`-separated word prefixed by a space.
fn format_subject(subject: &str) -> String {
    subject.split('_').map(|w| format!(" {w}")).collect()
}

/// `format_example`.
fn format_example(r: &[String; 6], include_answer: bool) -> String {
    let mut s = r[0].clone();
    for (j, l) in LETTERS.iter().enumerate() {
        s.push_str(&format!("\n{l}. {}", r[j + 1]));
    }
    s.push_str("\nAnswer:");
    if include_answer {
        s.push_str(&format!(" {}\n\n", r[5]));
    }
    s
}

/// Every test question of every subject (subjects sorted), with its subject's header and shots.
fn mmlu_docs(data: &DataSource) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (subject, _) in SUBJECTS {
        let dev = read_table(data, &format!("mmlu/dev/{subject}_dev.csv"))?;
        let shots: Vec<String> = dev
            .iter()
            .take(NTRAIN)
            .map(|r| format_example(r, true))
            .collect();
        let header = format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            format_subject(subject)
        );
        for r in read_table(data, &format!("mmlu/test/{subject}_test.csv"))? {
            docs.push(json!({
                "subject": subject,
                "header": header,
                "shots": shots,
                "question": format_example(&r, false),
                "answer": r[5],
            }));
        }
    }
    Ok(docs)
}

fn shots(doc: &Value) -> Vec<String> {
    doc["shots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Per category, subcategory and subject: the mean of `correct` over their questions (NaN for
/// a group with none, e.g. under `--limit`), in [`METRICS`] order after `acc`.
/// A document's metric row for both protocols: `acc` from its own answer, the per-subject and
/// per-category columns left NaN (they are corpus metrics, see [`breakdown`]).
pub(crate) fn per_document(correct: bool) -> Vec<f64> {
    let mut v = vec![f64::NAN; METRICS.len()];
    v[0] = if correct { 1.0 } else { 0.0 };
    v
}

/// The corpus metrics of both protocols, given how one document is judged.
pub(crate) fn corpus(
    docs: &[&Value],
    responses: &[&[Response]],
    correct: fn(&Value, &[Response]) -> bool,
) -> Vec<f64> {
    let c: Vec<bool> = docs
        .iter()
        .zip(responses)
        .map(|(d, r)| correct(d, r))
        .collect();
    breakdown(docs, &c)
}

fn breakdown(docs: &[&Value], correct: &[bool]) -> Vec<f64> {
    let subcat_of = |d: &Value| {
        let s = d["subject"].as_str().unwrap_or_default();
        SUBJECTS
            .iter()
            .find(|(x, _)| *x == s)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    };
    let mean_where = |keep: &dyn Fn(&Value) -> bool| {
        let xs: Vec<f64> = docs
            .iter()
            .zip(correct)
            .filter(|(d, _)| keep(d))
            .map(|(_, c)| if *c { 1.0 } else { 0.0 })
            .collect();
        if xs.is_empty() {
            f64::NAN
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    let mut out = Vec::with_capacity(METRICS.len() - 1);
    for (_, members) in CATEGORIES {
        out.push(mean_where(&|d| members.contains(&subcat_of(d))));
    }
    for sc in SUBCATEGORIES {
        out.push(mean_where(&|d| subcat_of(d) == sc));
    }
    for (s, _) in SUBJECTS {
        out.push(mean_where(&|d| d["subject"] == s));
    }
    out
}

/// `mmlu`: the paper's generation script. `fit_tokens` is the script's 2,048 (a field so that a
/// test on a small-context model can lower it).
pub struct Mmlu {
    pub fit_tokens: usize,
}

pub const MMLU: Mmlu = Mmlu {
    fit_tokens: FIT_TOKENS,
};

/// `pred.strip().startswith(label)`.
fn generation_correct(doc: &Value, r: &[Response]) -> bool {
    let label = doc["answer"].as_str().unwrap_or("?");
    r.first()
        .is_some_and(|r| r.text().trim().starts_with(label))
}

impl Task for Mmlu {
    fn num_fewshot(&self) -> usize {
        NTRAIN
    }

    fn name(&self) -> &'static str {
        "mmlu"
    }
    fn version(&self) -> u32 {
        0
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        mmlu_docs(data)
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        Ok(vec![Request::GenerateFit {
            header: field(doc, "header")?.to_string(),
            shots: shots(doc),
            question: field(doc, "question")?.to_string(),
            fit_tokens: self.fit_tokens,
            max_new_tokens: MAX_NEW_TOKENS,
        }])
    }
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        Ok(per_document(generation_correct(doc, responses)))
    }
    fn metrics(&self) -> &'static [Metric] {
        &METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        Ok(corpus(docs, responses, generation_correct))
    }
    fn extracted(&self, _doc: &Value, responses: &[Response]) -> Option<Value> {
        Some(json!(responses.first()?.text()))
    }
}

/// `mmlu_loglik`: the argmax of the letters' log-likelihoods after the 5-shot prompt.
pub struct MmluLoglik;

/// The position (0 for A) of a document's answer letter.
pub(crate) fn answer_index(doc: &Value) -> Option<usize> {
    LETTERS.iter().position(|l| doc["answer"] == *l)
}

/// `mmlu_loglik`'s context: header, the five shots, the question ending in `Answer:` (the
/// options lettered A-D); also the prompt of the generative `mmlu_joint`.
pub(crate) fn loglik_context(doc: &Value) -> Result<String> {
    Ok(format!(
        "{}{}{}",
        field(doc, "header")?,
        shots(doc).concat(),
        field(doc, "question")?
    ))
}

fn loglik_correct(doc: &Value, r: &[Response]) -> bool {
    let lls: Vec<f64> = r.iter().map(Response::logprob).collect();
    Some(argmax(&lls)) == answer_index(doc)
}

impl Task for MmluLoglik {
    fn num_fewshot(&self) -> usize {
        NTRAIN
    }

    fn name(&self) -> &'static str {
        "mmlu_loglik"
    }
    fn version(&self) -> u32 {
        0
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        mmlu_docs(data)
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        let context = loglik_context(doc)?;
        Ok(LETTERS
            .iter()
            .map(|l| Request::Loglikelihood {
                context: context.clone(),
                continuation: format!(" {l}"),
            })
            .collect())
    }
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        Ok(per_document(loglik_correct(doc, responses)))
    }
    fn metrics(&self) -> &'static [Metric] {
        &METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        Ok(corpus(docs, responses, loglik_correct))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_data_has_14042_questions_and_the_double_space_header() {
        let docs = mmlu_docs(&DataSource::default()).unwrap();
        assert_eq!(docs.len(), 14042);
        assert_eq!(
            docs[0]["header"],
            "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        );
        assert_eq!(shots(&docs[0]).len(), 5);
        assert!(docs[0]["question"].as_str().unwrap().ends_with("\nAnswer:"));
        // The ten `None` option cells (columns 1 and 4: options A and D) print as pandas 2
        // prints NaN.
        let nan = docs
            .iter()
            .filter(|d| {
                let q = d["question"].as_str().unwrap();
                q.contains("\nA. nan\n") || q.contains("\nD. nan\n")
            })
            .count();
        assert_eq!(nan, 10);
        // The in-cell CRLF of dev/college_mathematics row 2 is kept.
        let cm = docs
            .iter()
            .find(|d| d["subject"] == "college_mathematics")
            .unwrap();
        assert!(shots(cm)[2].contains("\r\n"));
    }

    #[test]
    fn metric_table_is_complete() {
        assert_eq!(METRICS.len(), 1 + 4 + 17 + 57);
        for (_, sc) in SUBJECTS {
            assert!(SUBCATEGORIES.contains(&sc));
            assert_eq!(
                CATEGORIES.iter().filter(|(_, m)| m.contains(&sc)).count(),
                1
            );
        }
    }
}
