//! SQuAD 2.0 (Rajpurkar et al. 2018) as the paper ran it: lm-evaluation-harness 0.3-era
//! `master` `SQuAD2` (PyPI `lm_eval==0.3.0` has the same prompt and requests), zero-shot on the
//! dev set. Each document makes a greedy generation until `"\n"` (the answer) and the
//! log-likelihood of `" unanswerable"` (its exponential is the no-answer probability); the
//! corpus is scored with HF's `squad_v2` metric, which is the official v2.0 evaluation script
//! with `no_answer_threshold = 1.0`. Spec: `shared/spec/other-nlp.md` items 22–25.
//!
//! lm-eval 0.4's `squadv2` is a different task (its own prompt, a 0.4 metric wrapper); it is not
//! offered here.

use std::collections::HashMap;

use serde_json::Value;

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::task::{field, Metric, Request, Response, Task};
use crate::tasks::squad2_data;

/// The official script's `normalize_answer`: lower-case, drop ASCII punctuation, replace the
/// words a/an/the by a space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // `re.sub(r"\b(a|an|the)\b", " ", text)`: a whole word (a maximal run of `\w`) that is
    // exactly one of the articles.
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(no_punc.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punc.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `compute_f1` on whitespace tokens of the normalised strings.
fn f1(gold: &str, pred: &str) -> f64 {
    let g: Vec<String> = normalize_answer(gold)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let p: Vec<String> = normalize_answer(pred)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if g.is_empty() || p.is_empty() {
        return if g == p { 1.0 } else { 0.0 };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// One document's prediction and gold answers.
pub struct Scored<'a> {
    pub prediction: &'a str,
    pub no_answer_probability: f64,
    pub answers: Vec<&'a str>,
}

/// The metric values, in [`METRICS`] order: HF `squad_v2` `compute` with threshold 1.0, keys
/// absent from its output (HasAns_* / NoAns_* without such documents) reported as 0 as the
/// harness's `.get(key, 0)` does.
pub fn squad_v2(items: &[Scored]) -> [f64; 8] {
    let n = items.len();
    if n == 0 {
        return [f64::NAN; 8];
    }
    let mut exact = Vec::with_capacity(n);
    let mut f1s = Vec::with_capacity(n);
    for it in items {
        let golds: Vec<&str> = it
            .answers
            .iter()
            .copied()
            .filter(|a| !normalize_answer(a).is_empty())
            .collect();
        let golds = if golds.is_empty() { vec![""] } else { golds };
        let pred_n = normalize_answer(it.prediction);
        exact.push(
            golds
                .iter()
                .map(|g| {
                    if normalize_answer(g) == pred_n {
                        1.0
                    } else {
                        0.0
                    }
                })
                .fold(f64::MIN, f64::max),
        );
        f1s.push(
            golds
                .iter()
                .map(|g| f1(g, it.prediction))
                .fold(f64::MIN, f64::max),
        );
    }
    let has_ans: Vec<bool> = items.iter().map(|it| !it.answers.is_empty()).collect();
    // `apply_no_ans_threshold`: a probability above 1.0 (never, for exp of a log-likelihood)
    // would turn the score into "is unanswerable".
    let thresh = |raw: &[f64]| -> Vec<f64> {
        raw.iter()
            .zip(items)
            .zip(&has_ans)
            .map(|((s, it), h)| {
                if it.no_answer_probability > 1.0 {
                    if *h {
                        0.0
                    } else {
                        1.0
                    }
                } else {
                    *s
                }
            })
            .collect()
    };
    let (ex_t, f1_t) = (thresh(&exact), thresh(&f1s));
    let avg = |xs: &[f64], keep: &dyn Fn(usize) -> bool| -> f64 {
        let sel: Vec<f64> = (0..n).filter(|&i| keep(i)).map(|i| xs[i]).collect();
        if sel.is_empty() {
            0.0
        } else {
            100.0 * sel.iter().sum::<f64>() / sel.len() as f64
        }
    };
    let all = |_: usize| true;
    let has = |i: usize| has_ans[i];
    let no = |i: usize| !has_ans[i];
    [
        avg(&ex_t, &all),
        avg(&f1_t, &all),
        avg(&ex_t, &has),
        avg(&f1_t, &has),
        avg(&ex_t, &no),
        avg(&f1_t, &no),
        best(items, &exact, &has_ans),
        best(items, &f1s, &has_ans),
    ]
}

/// `find_best_thresh` on the raw scores: documents by no-answer probability (stable), the
/// running score starting at the number of unanswerable ones.
fn best(items: &[Scored], raw: &[f64], has_ans: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        items[a]
            .no_answer_probability
            .total_cmp(&items[b].no_answer_probability)
    });
    let mut cur = has_ans.iter().filter(|h| !**h).count() as f64;
    let mut best = cur;
    for i in order {
        cur += if has_ans[i] {
            raw[i]
        } else if !items[i].prediction.is_empty() {
            -1.0
        } else {
            0.0
        };
        if cur > best {
            best = cur;
        }
    }
    100.0 * best / items.len() as f64
}

pub const METRICS: &[Metric] = &[
    Metric::corpus("exact"),
    Metric::corpus("f1"),
    Metric::corpus("HasAns_exact"),
    Metric::corpus("HasAns_f1"),
    Metric::corpus("NoAns_exact"),
    Metric::corpus("NoAns_f1"),
    Metric::corpus("best_exact"),
    Metric::corpus("best_f1"),
];

/// `squad2`: zero-shot extractive QA with the no-answer probability.
pub struct Squad2;

fn context(doc: &Value) -> Result<String> {
    Ok(format!(
        "Title: {}\n\nBackground: {}\n\nQuestion: {}\n\nAnswer:",
        field(doc, "title")?,
        field(doc, "context")?,
        field(doc, "question")?
    ))
}

fn answers(doc: &Value) -> Vec<&str> {
    doc["answers"]["text"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

impl Task for Squad2 {
    fn name(&self) -> &'static str {
        "squad2"
    }
    fn version(&self) -> u32 {
        1
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        match &data.squad2_json {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                squad2_data::from_json(&text, &p.display().to_string())
            }
            None => squad2_data::from_pages(data),
        }
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        let ctx = context(doc)?;
        Ok(vec![
            Request::GenerateUntil {
                context: ctx.clone(),
                until: vec!["\n".to_string()],
            },
            Request::Loglikelihood {
                context: ctx,
                continuation: " unanswerable".to_string(),
            },
        ])
    }
    fn process_results(&self, _doc: &Value, _responses: &[Response]) -> Result<Vec<f64>> {
        Ok(vec![f64::NAN; METRICS.len()])
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        let items: Vec<Scored> = docs
            .iter()
            .zip(responses)
            .map(|(d, r)| Scored {
                prediction: r[0].text(),
                no_answer_probability: r[1].logprob().exp(),
                answers: answers(d),
            })
            .collect();
        Ok(squad_v2(&items).to_vec())
    }
    fn extracted(&self, _doc: &Value, responses: &[Response]) -> Option<Value> {
        Some(Value::String(responses.first()?.text().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_the_official_script() {
        assert_eq!(normalize_answer("The  Normans!"), "normans");
        assert_eq!(normalize_answer("an apple a day"), "apple day");
        assert_eq!(normalize_answer("theory of a"), "theory of");
        assert_eq!(normalize_answer("A."), "");
    }

    #[test]
    fn metric_on_a_hand_case() {
        let items = [
            Scored {
                prediction: " France",
                no_answer_probability: 0.1,
                answers: vec!["France", "france"],
            },
            Scored {
                prediction: " in the 10th",
                no_answer_probability: 0.3,
                answers: vec!["10th century"],
            },
            Scored {
                prediction: " Rollo",
                no_answer_probability: 0.2,
                answers: vec![],
            },
            Scored {
                prediction: "",
                no_answer_probability: 0.05,
                answers: vec![],
            },
        ];
        let m = squad_v2(&items);
        // exact: 1 + 0 + 0 + 1 (empty prediction vs [""]); f1 doc 2: "in 10th" vs "10th century".
        assert!((m[0] - 50.0).abs() < 1e-12);
        assert!((m[1] - 100.0 * (1.0 + 0.5 + 0.0 + 1.0) / 4.0).abs() < 1e-12);
        assert!((m[2] - 50.0).abs() < 1e-12 && (m[4] - 50.0).abs() < 1e-12);
        // Sweep by probability: doc4 (0), doc1 (+1), doc3 (-1), doc2 (+0 exact) from 2 -> max 3.
        assert!((m[6] - 75.0).abs() < 1e-12);
    }
}
