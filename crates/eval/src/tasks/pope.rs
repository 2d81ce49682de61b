//! POPE (Li et al., EMNLP 2023): yes/no object-hallucination questions on 500 COCO val2014
//! images, three negative-sampling settings (`spec/multimodal-eval.md` E3).
//!
//! Questions: RUCAIBox/POPE @3df3ba1 `output/coco/coco_pope_{random,popular,adversarial}.json`
//! (JSON Lines despite the suffix; bundled). Images: COCO val2014 (`COCO_val2014_%012d.jpg`),
//! not bundled: `--image-root DIR`. Prompt: the protocol's `v0` prompt with the question
//! `text.strip()`, no demos. Scoring: POPE's parsing and metrics from
//! `sightline_metrics::pope` (Sight-Beyond-Text `pope_metric.py`), 0..1 floats; accuracy and
//! yes-ratio are means over records (so they get a stderr), precision, recall and F1 are corpus
//! numbers, NaN where the reference divides by zero.

use serde_json::{json, Value};
use sightline_metrics::pope::{parse_answer, parse_label, score};

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::mm::{doc_protocol, image_ref, image_request, read_records, str_field};
use crate::task::{field, int_field, Metric, Request, Response, Task};

/// SBT's `max_generation_length` default.
const SBT_MAX_NEW_TOKENS: usize = 10;

const METRICS: &[Metric] = &[
    Metric::mean("acc"),
    Metric::corpus("precision"),
    Metric::corpus("recall"),
    Metric::corpus("f1"),
    Metric {
        name: "yes_ratio",
        aggregation: crate::task::Aggregation::Mean,
        // Neither direction is better: 0.5 is the balanced answer rate.
        higher_is_better: false,
    },
];

/// One POPE split.
pub struct Pope {
    pub name: &'static str,
    pub file: &'static str,
}

pub const RANDOM: Pope = Pope {
    name: "pope_random",
    file: "pope/coco_pope_random.json",
};
pub const POPULAR: Pope = Pope {
    name: "pope_popular",
    file: "pope/coco_pope_popular.json",
};
pub const ADVERSARIAL: Pope = Pope {
    name: "pope_adversarial",
    file: "pope/coco_pope_adversarial.json",
};

fn answer(doc: &Value, r: &[Response]) -> Result<bool> {
    let text = r.first().map(Response::text).unwrap_or("");
    Ok(parse_answer(&doc_protocol(doc)?.answer_text(text)))
}

impl Task for Pope {
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
        read_records(data, self.file, true)?
            .into_iter()
            .enumerate()
            .map(|(i, rec)| {
                let image = str_field(&rec, "image", &file, i + 1)?;
                let label = str_field(&rec, "label", &file, i + 1)?;
                Ok(json!({
                    "record": i,
                    "question_id": rec.get("question_id").cloned().unwrap_or(Value::Null),
                    "image": image,
                    "image_ref": image_ref(data, image, None, (&file, i + 1))?,
                    "text": str_field(&rec, "text", &file, i + 1)?,
                    "label": label,
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
            p.prompt(field(doc, "text")?.trim(), &[])?,
            p.decoding(SBT_MAX_NEW_TOKENS, record),
        )?])
    }
    fn process_results(&self, doc: &Value, r: &[Response]) -> Result<Vec<f64>> {
        let yes = answer(doc, r)?;
        let label = parse_label(field(doc, "label")?);
        let f = |b: bool| if b { 1.0 } else { 0.0 };
        Ok(vec![f(yes == label), f64::NAN, f64::NAN, f64::NAN, f(yes)])
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        let mut preds = Vec::with_capacity(docs.len());
        let mut labels = Vec::with_capacity(docs.len());
        for (doc, r) in docs.iter().zip(responses) {
            let text = r.first().map(Response::text).unwrap_or("");
            preds.push(doc_protocol(doc)?.answer_text(text));
            labels.push(parse_label(field(doc, "label")?));
        }
        let s = score(&preds, &labels).map_err(|e| Error::Config(e.to_string()))?;
        Ok(vec![s.precision, s.recall, s.f1])
    }
    fn extracted(&self, doc: &Value, r: &[Response]) -> Option<Value> {
        answer(doc, r)
            .ok()
            .map(|yes| json!(if yes { "yes" } else { "no" }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(label: &str) -> Value {
        json!({"record": 0, "text": "Is there a dog in the image?", "label": label,
               "image": "x.jpg", "image_ref": "/coco/x.jpg", "protocol": "sbt"})
    }

    #[test]
    fn bundled_splits_have_3000_balanced_records() {
        for t in [RANDOM, POPULAR, ADVERSARIAL] {
            let docs = t.docs(&DataSource::default()).unwrap();
            assert_eq!(docs.len(), 3000, "{}", t.name);
            let yes = docs.iter().filter(|d| d["label"] == "yes").count();
            assert_eq!(yes, 1500);
            // No image root: the evaluator reports that the task needs --image-root.
            assert!(docs[0]["image_ref"].is_null());
            assert_eq!(docs[0]["image"], "COCO_val2014_000000310196.jpg");
        }
    }

    #[test]
    fn scores_parse_the_raw_sbt_output() {
        let docs = [doc("yes"), doc("no"), doc("no"), doc("yes")];
        // "No###" is not the word "No": SBT counts it as yes (faithful quirk).
        let outs = [" Yes, there is", " No, there is not", "No###", " no."];
        let resps: Vec<Vec<Response>> = outs
            .iter()
            .map(|o| vec![Response::Generated(o.to_string())])
            .collect();
        let per: Vec<Vec<f64>> = docs
            .iter()
            .zip(&resps)
            .map(|(d, r)| RANDOM.process_results(d, r).unwrap())
            .collect();
        assert_eq!(
            per.iter().map(|v| v[0]).collect::<Vec<_>>(),
            [1.0, 1.0, 0.0, 0.0]
        );
        let d: Vec<&Value> = docs.iter().collect();
        let r: Vec<&[Response]> = resps.iter().map(Vec::as_slice).collect();
        // TP 1, FP 1, TN 1, FN 1.
        assert_eq!(RANDOM.corpus_metrics(&d, &r).unwrap(), vec![0.5, 0.5, 0.5]);
        assert_eq!(RANDOM.extracted(&docs[2], &resps[2]), Some(json!("yes")));
    }

    #[test]
    fn requests_use_the_stripped_question_and_the_protocol() {
        let mut d = doc("yes");
        d["text"] = json!("  Is there a dog in the image? ");
        match &RANDOM.requests(&d).unwrap()[0] {
            Request::GenerateImage {
                context, decoding, ..
            } => {
                assert!(
                    context.ends_with("Human: <image>\nIs there a dog in the image?###Assistant:")
                );
                assert_eq!(decoding.max_new_tokens, 10);
                assert_eq!(decoding.temperature, 0.2);
            }
            other => panic!("{other:?}"),
        }
    }
}
