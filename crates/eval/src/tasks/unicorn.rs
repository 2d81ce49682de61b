//! Unicorn sketchy-VQA (Tu et al. 2023, "How many unicorns are in this image?"): yes/no
//! questions on TU-Berlin sketches (`spec/multimodal-eval.md` E7).
//!
//! Questions: `huynt654/unicorn-` @cae498a `sketchy-vqa.json` and `sketchy-challenging.json`
//! (bundled, `data/unicorn/SOURCES.md`). Images: the 28 bundled sketches (the full 4,000-image
//! set is not redistributed here), so `--skip-missing-images` runs the tasks offline on the
//! records whose sketch is bundled; `--image-root DIR` points at a full copy
//! (`DIR/skechydata/sketchespng/<category>/<id>.png`, upstream's misspelling).
//!
//! Prompt: the protocol's `v0` prompt with the question as is (E7.2). Under `sbt` the Unicorn
//! harness samples at most 25 new tokens and strips the output and a trailing stop string.
//! Scoring (`sketchy_metric.py`, E7.4): no first-sentence cut; remove `,`, split on spaces;
//! any of `No`/`not`/`no` → no, else any of `Yes`/`yes`/`yeah` → yes, else `nan`. Label `No` is
//! negative, anything else positive. `nan` answers count in the yes-ratio's denominator but in
//! no confusion cell, so accuracy is over the parsed answers only.

use serde_json::{json, Value};

use crate::data::DataSource;
use crate::error::Result;
use crate::mm::{doc_protocol, image_ref, image_request, read_records, str_field};
use crate::protocol::{Protocol, STOP};
use crate::task::{field, int_field, Metric, Request, Response, Task};

/// `max_new_tokens` of the Unicorn LLaVA wrapper.
const SBT_MAX_NEW_TOKENS: usize = 25;
/// Where the bundled sketches live under `data/`.
const IMAGES: &str = "unicorn/sketchy-vqa/images";

const METRICS: &[Metric] = &[
    Metric::corpus("acc"),
    Metric::corpus("precision"),
    Metric::corpus("recall"),
    Metric::corpus("f1"),
    Metric {
        name: "yes_ratio",
        aggregation: crate::task::Aggregation::Mean,
        higher_is_better: false,
    },
    Metric {
        name: "nan_ratio",
        aggregation: crate::task::Aggregation::Mean,
        higher_is_better: false,
    },
];

/// A parsed sketchy answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SketchyAnswer {
    Yes,
    No,
    Nan,
}

/// `sketchy_metric.py`'s parsing of one (already stripped) answer.
pub fn parse_sketchy(text: &str) -> SketchyAnswer {
    let cleaned = text.replace(',', "");
    let words: Vec<&str> = cleaned.split(' ').collect();
    if words.iter().any(|w| matches!(*w, "No" | "not" | "no")) {
        SketchyAnswer::No
    } else if words.iter().any(|w| matches!(*w, "Yes" | "yes" | "yeah")) {
        SketchyAnswer::Yes
    } else {
        SketchyAnswer::Nan
    }
}

/// The Unicorn LLaVA wrapper's post-processing: strip, drop a trailing stop string, strip.
pub fn unicorn_strip(raw: &str) -> &str {
    let s = raw.trim();
    s.strip_suffix(STOP).unwrap_or(s).trim()
}

/// The answer text a protocol's output gives for Unicorn scoring.
fn answer_text(doc: &Value, r: &[Response]) -> Result<String> {
    let raw = r.first().map(Response::text).unwrap_or("");
    let p = doc_protocol(doc)?;
    Ok(match p {
        Protocol::Sbt => unicorn_strip(raw).to_string(),
        Protocol::Greedy => p.answer_text(raw),
    })
}

/// Confusion counts → `[acc, precision, recall, f1]`, NaN where Python would divide by zero.
fn rates(answers: &[SketchyAnswer], positive: &[bool]) -> Vec<f64> {
    let (mut tp, mut fp, mut tn, mut fn_) = (0f64, 0f64, 0f64, 0f64);
    for (a, &pos) in answers.iter().zip(positive) {
        match (a, pos) {
            (SketchyAnswer::Yes, true) => tp += 1.0,
            (SketchyAnswer::Yes, false) => fp += 1.0,
            (SketchyAnswer::No, false) => tn += 1.0,
            (SketchyAnswer::No, true) => fn_ += 1.0,
            (SketchyAnswer::Nan, _) => {}
        }
    }
    let div = |a: f64, b: f64| if b == 0.0 { f64::NAN } else { a / b };
    let p = div(tp, tp + fp);
    let r = div(tp, tp + fn_);
    vec![
        div(tp + tn, tp + tn + fp + fn_),
        p,
        r,
        div(2.0 * p * r, p + r),
    ]
}

/// One sketchy-VQA question file.
pub struct Sketchy {
    pub name: &'static str,
    pub file: &'static str,
}

pub const SKETCHY_VQA: Sketchy = Sketchy {
    name: "unicorn_sketchy_vqa",
    file: "unicorn/sketchy-vqa/sketchy-vqa.json",
};
pub const SKETCHY_CHALLENGING: Sketchy = Sketchy {
    name: "unicorn_sketchy_challenging",
    file: "unicorn/sketchy-vqa/sketchy-challenging.json",
};

impl Task for Sketchy {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        0
    }
    fn needs_images(&self) -> bool {
        true
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        let file = data.describe(self.file);
        read_records(data, self.file, false)?
            .into_iter()
            .enumerate()
            .map(|(i, rec)| {
                let image = str_field(&rec, "image", &file, i + 1)?;
                Ok(json!({
                    "record": i,
                    "image": image,
                    "image_ref": image_ref(data, image, Some(IMAGES), (&file, i + 1))?,
                    "question": str_field(&rec, "question", &file, i + 1)?,
                    "answer": str_field(&rec, "answer", &file, i + 1)?,
                    "protocol": data.protocol.name(),
                }))
            })
            .collect()
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        let p = doc_protocol(doc)?;
        let record = int_field(doc, "record")? as usize;
        Ok(vec![image_request(
            doc,
            p.prompt(field(doc, "question")?, &[])?,
            p.decoding(SBT_MAX_NEW_TOKENS, record),
        )?])
    }
    fn process_results(&self, doc: &Value, r: &[Response]) -> Result<Vec<f64>> {
        let a = parse_sketchy(&answer_text(doc, r)?);
        let f = |b: bool| if b { 1.0 } else { 0.0 };
        Ok(vec![
            f64::NAN,
            f64::NAN,
            f64::NAN,
            f64::NAN,
            f(a == SketchyAnswer::Yes),
            f(a == SketchyAnswer::Nan),
        ])
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        let mut answers = Vec::with_capacity(docs.len());
        let mut positive = Vec::with_capacity(docs.len());
        for (doc, r) in docs.iter().zip(responses) {
            answers.push(parse_sketchy(&answer_text(doc, r)?));
            positive.push(field(doc, "answer")? != "No");
        }
        Ok(rates(&answers, &positive))
    }
    fn extracted(&self, doc: &Value, r: &[Response]) -> Option<Value> {
        let a = parse_sketchy(&answer_text(doc, r).ok()?);
        Some(json!(match a {
            SketchyAnswer::Yes => "yes",
            SketchyAnswer::No => "no",
            SketchyAnswer::Nan => "nan",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::image_available;

    #[test]
    fn parsing_follows_sketchy_metric() {
        use SketchyAnswer::*;
        for (text, want) in [
            ("Yes, it is a dog", Yes),
            ("yeah", Yes),
            ("No, it is not", No),
            ("Yes, but not a cat", No), // negative words win
            ("YES", Nan),
            ("Yes.", Nan), // no first-sentence cut, so `Yes.` is not `Yes`
            ("", Nan),
            ("Nope", Nan),
        ] {
            assert_eq!(parse_sketchy(text), want, "{text:?}");
        }
        assert_eq!(unicorn_strip("  No###"), "No");
    }

    #[test]
    fn nan_answers_leave_the_confusion_matrix() {
        use SketchyAnswer::*;
        let r = rates(&[Yes, No, Nan, Yes], &[true, false, true, false]);
        // TP 1, TN 1, FP 1: acc 2/3, precision 1/2, recall 1.
        assert!((r[0] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(&r[1..3], &[0.5, 1.0]);
        assert!((r[3] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bundled_questions_and_their_bundled_sketches() {
        for (t, n, with_images) in [(SKETCHY_VQA, 4000, 40), (SKETCHY_CHALLENGING, 4000, 16)] {
            let docs = t.docs(&DataSource::default()).unwrap();
            assert_eq!(docs.len(), n);
            let present = docs
                .iter()
                .filter(|d| image_available(d["image_ref"].as_str().unwrap()))
                .count();
            assert_eq!(present, with_images, "{}", t.name);
        }
    }
}
