//! VQAv2 (Goyal et al., CVPR 2017) on the paper's 5,000-question val2014 subset
//! (`spec/multimodal-eval.md` E2, E6).
//!
//! Data: user-supplied (the VQA licence does not let us bundle it):
//! `--vqav2-questions v2_OpenEnded_mscoco_val2014_questions.json` (`questions`),
//! `--vqav2-annotations v2_mscoco_val2014_annotations.json` (`annotations`, aligned with the
//! questions by position; the `question_id`s are checked), and the COCO val2014 images under
//! `--image-root` (`COCO_val2014_%012d.jpg`).
//!
//! Subset and demos, as Sight-Beyond-Text's `evaluate_vqa` after `setup_seed(42)`: numpy's
//! legacy `choice(len(questions), 5000 + 2048, replace=False)`; the first 2,048 indices are the
//! demo pool, the other 5,000 the evaluated questions, in that order. Each evaluated question
//! gets `random.sample(pool, 3)` from Python's seed-42 `random` (drawn in that order), each demo
//! being `(question.strip(), answers[0].strip())`. Query: `question.strip()`.
//!
//! Scoring: SBT's `postprocess_vqa_generation` on the protocol's answer text, then the official
//! 10-annotator accuracy (`sightline_metrics::vqa`, quirks kept: when the ten answers are
//! identical nothing is normalised, so `"Yes"` ≠ `"yes"`). `acc` is the mean per-question
//! accuracy as a 0..1 float (the official script prints `round(100·mean, 2)`); per answer type
//! as corpus means.

use std::path::Path;

use serde_json::{json, Value};
use sightline_metrics::vqa::{accuracy, postprocess_generation};
use sightline_random::{PyRandom, RandomState};

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::mm::{doc_demos, doc_protocol, image_ref, image_request};
use crate::task::{field, int_field, Metric, Request, Response, Task};

/// SBT's `max_generation_length` default.
const SBT_MAX_NEW_TOKENS: usize = 10;
/// Evaluated questions and demo pool size (E6.2).
const EVAL: usize = 5000;
const POOL: usize = 2048;
const DEMOS: usize = 3;

const METRICS: &[Metric] = &[
    Metric::mean("acc"),
    Metric::corpus("acc_yes/no"),
    Metric::corpus("acc_number"),
    Metric::corpus("acc_other"),
];

pub struct Vqav2;

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::data(
            &path.display().to_string(),
            e.line(),
            format!("not valid JSON: {e}"),
        )
    })
}

fn list<'a>(v: &'a Value, key: &str, path: &Path) -> Result<&'a Vec<Value>> {
    v.get(key).and_then(Value::as_array).ok_or_else(|| {
        Error::data(
            &path.display().to_string(),
            0,
            format!("no `{key}` list at the top level"),
        )
    })
}

/// One aligned (question, annotation) pair.
struct Item {
    question_id: i64,
    image_id: i64,
    question: String,
    answers: Vec<String>,
    answer_type: String,
    question_type: String,
}

fn items(qpath: &Path, apath: &Path) -> Result<Vec<Item>> {
    let qv = read_json(qpath)?;
    let av = read_json(apath)?;
    let qs = list(&qv, "questions", qpath)?;
    let anns = list(&av, "annotations", apath)?;
    let (qname, aname) = (qpath.display().to_string(), apath.display().to_string());
    if qs.len() != anns.len() {
        return Err(Error::Config(format!(
            "{qname} has {} questions but {aname} has {} annotations",
            qs.len(),
            anns.len()
        )));
    }
    qs.iter()
        .zip(anns)
        .enumerate()
        .map(|(i, (q, a))| {
            let qid = q["question_id"]
                .as_i64()
                .ok_or_else(|| Error::data(&qname, i + 1, "no integer `question_id`"))?;
            if a["question_id"].as_i64() != Some(qid) {
                return Err(Error::data(
                    &aname,
                    i + 1,
                    format!(
                        "question_id {} does not match the question's {qid}",
                        a["question_id"]
                    ),
                ));
            }
            let answers = a["answers"]
                .as_array()
                .ok_or_else(|| Error::data(&aname, i + 1, "no `answers` list"))?
                .iter()
                .map(|x| {
                    x["answer"].as_str().map(str::to_string).ok_or_else(|| {
                        Error::data(&aname, i + 1, "field `answers[].answer` is not a string")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if answers.is_empty() {
                return Err(Error::data(&aname, i + 1, "empty `answers`"));
            }
            Ok(Item {
                question_id: qid,
                image_id: q["image_id"]
                    .as_i64()
                    .ok_or_else(|| Error::data(&qname, i + 1, "no integer `image_id`"))?,
                question: q["question"]
                    .as_str()
                    .ok_or_else(|| Error::data(&qname, i + 1, "no string `question`"))?
                    .to_string(),
                answers,
                answer_type: a["answer_type"].as_str().unwrap_or("").to_string(),
                question_type: a["question_type"].as_str().unwrap_or("").to_string(),
            })
        })
        .collect()
}

fn answer_of(doc: &Value, r: &[Response]) -> Result<String> {
    let p = doc_protocol(doc)?;
    let raw = r.first().map(Response::text).unwrap_or("");
    Ok(postprocess_generation(&p.answer_text(raw)))
}

fn answers_of(doc: &Value) -> Vec<String> {
    doc["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Task for Vqav2 {
    fn name(&self) -> &'static str {
        "vqav2"
    }
    fn version(&self) -> u32 {
        0
    }
    fn needs_images(&self) -> bool {
        true
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        let (Some(qpath), Some(apath)) = (&data.vqav2_questions, &data.vqav2_annotations) else {
            return Err(Error::Config(
                "vqav2 is not bundled: pass --vqav2-questions v2_OpenEnded_mscoco_val2014_questions.json and --vqav2-annotations v2_mscoco_val2014_annotations.json (and --image-root with the COCO val2014 images)".into(),
            ));
        };
        let all = items(qpath, apath)?;
        if all.len() < EVAL + POOL || all.len() > u32::MAX as usize {
            return Err(Error::Config(format!(
                "{}: {} questions; the paper's subset draws {} of the val2014 questions (214,354)",
                qpath.display(),
                all.len(),
                EVAL + POOL
            )));
        }
        let idx = RandomState::from_u32(42).choice_without_replacement(all.len(), EVAL + POOL);
        let (pool, eval) = idx.split_at(POOL);
        let mut py = PyRandom::from_int(42);
        eval.iter()
            .enumerate()
            .map(|(k, &i)| {
                let it = &all[i];
                let picks = py
                    .sample_indices(POOL, DEMOS)
                    .ok_or_else(|| Error::Config("internal: demo sampling".into()))?;
                let demos: Vec<Value> = picks
                    .iter()
                    .map(|&j| {
                        let d = &all[pool[j]];
                        json!([d.question.trim(), d.answers[0].trim()])
                    })
                    .collect();
                let image = format!("COCO_val2014_{:012}.jpg", it.image_id);
                Ok(json!({
                    "record": k,
                    "question_id": it.question_id,
                    "image": image,
                    "image_ref": image_ref(data, &image, None, (&qpath.display().to_string(), i))?,
                    "question": it.question,
                    "answers": it.answers,
                    "answer_type": it.answer_type,
                    "question_type": it.question_type,
                    "demos": demos,
                    "protocol": data.protocol.name(),
                }))
            })
            .collect()
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        let p = doc_protocol(doc)?;
        let demos = doc_demos(doc);
        let record = int_field(doc, "record")? as usize;
        Ok(vec![image_request(
            doc,
            p.prompt(field(doc, "question")?.trim(), &demos)?,
            p.decoding(SBT_MAX_NEW_TOKENS, record),
        )?])
    }
    fn process_results(&self, doc: &Value, r: &[Response]) -> Result<Vec<f64>> {
        let acc = accuracy(&answer_of(doc, r)?, &answers_of(doc));
        Ok(vec![acc, f64::NAN, f64::NAN, f64::NAN])
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        let mut by_type: [(f64, usize); 3] = [(0.0, 0); 3];
        for (doc, r) in docs.iter().zip(responses) {
            let k = match doc["answer_type"].as_str() {
                Some("yes/no") => 0,
                Some("number") => 1,
                _ => 2,
            };
            by_type[k].0 += accuracy(&answer_of(doc, r)?, &answers_of(doc));
            by_type[k].1 += 1;
        }
        Ok(by_type
            .iter()
            .map(|&(s, n)| if n == 0 { f64::NAN } else { s / n as f64 })
            .collect())
    }
    fn extracted(&self, doc: &Value, r: &[Response]) -> Option<Value> {
        answer_of(doc, r).ok().map(Value::String)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic val2014-shaped files with `n` questions (question i about image i, answered
    /// `a{i}` by all ten annotators).
    fn write_files(dir: &Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
        let qs: Vec<Value> = (0..n)
            .map(|i| json!({"question_id": i * 10, "image_id": i, "question": format!(" q{i}? ")}))
            .collect();
        let anns: Vec<Value> = (0..n)
            .map(|i| {
                json!({"question_id": i * 10, "answer_type": if i % 2 == 0 {"yes/no"} else {"other"},
                       "question_type": "what", "answers": (0..10).map(|_| json!({"answer": format!(" a{i} ")})).collect::<Vec<_>>()})
            })
            .collect();
        let (q, a) = (dir.join("q.json"), dir.join("a.json"));
        std::fs::write(&q, json!({"questions": qs}).to_string()).unwrap();
        std::fs::write(&a, json!({"annotations": anns}).to_string()).unwrap();
        (q, a)
    }

    #[test]
    fn subset_and_demos_follow_e2() {
        let tmp = tempfile::tempdir().unwrap();
        let (q, a) = write_files(tmp.path(), 214_354);
        let data = DataSource {
            vqav2_questions: Some(q),
            vqav2_annotations: Some(a),
            ..Default::default()
        };
        let docs = Vqav2.docs(&data).unwrap();
        assert_eq!(docs.len(), 5000);
        // E2.1 vector: a[2048..2054] are the first evaluated questions.
        let ids: Vec<i64> = docs[..6]
            .iter()
            .map(|d| d["question_id"].as_i64().unwrap() / 10)
            .collect();
        assert_eq!(ids, [97523, 35728, 173064, 45734, 169516, 193443]);
        // E2.2 vector: the first question's demos are pool items 456, 102, 1126; the pool
        // starts 69992, 184029, ... so check through the first demo's pool position.
        let pool = RandomState::from_u32(42).choice_without_replacement(214_354, 2048);
        let want: Vec<String> = [456, 102, 1126]
            .iter()
            .map(|&j| format!("q{}?", pool[j]))
            .collect();
        let got: Vec<&str> = docs[0]["demos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[0].as_str().unwrap())
            .collect();
        assert_eq!(got, want);
        assert_eq!(docs[0]["image"], "COCO_val2014_000000097523.jpg");
        let ctx = match &Vqav2.requests(&docs[0]).unwrap()[0] {
            Request::GenerateImage { context, .. } => context.clone(),
            other => panic!("{other:?}"),
        };
        assert!(ctx.ends_with(&format!(
            "###Human: {}###Assistant: a{}###Human: <image>\nq97523?###Assistant:",
            want[2], pool[1126]
        )));
    }

    #[test]
    fn too_few_questions_or_no_files_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (q, a) = write_files(tmp.path(), 100);
        let data = DataSource {
            vqav2_questions: Some(q),
            vqav2_annotations: Some(a),
            ..Default::default()
        };
        assert!(Vqav2.docs(&data).unwrap_err().to_string().contains("7048"));
        let none = Vqav2.docs(&DataSource::default()).unwrap_err().to_string();
        assert!(none.contains("--vqav2-questions"), "{none}");
    }

    #[test]
    fn scoring_postprocesses_then_applies_vqa_accuracy() {
        let doc = json!({"protocol": "sbt", "answer_type": "yes/no",
                         "answers": vec!["yes"; 10]});
        let r = [Response::Generated(" Yes, it is.###".into())];
        // "Yes" vs ten identical "yes": no normalisation, so 0 (faithful quirk).
        assert_eq!(Vqav2.process_results(&doc, &r).unwrap()[0], 0.0);
        let doc2 = json!({"protocol": "sbt", "answer_type": "number",
                          "answers": ["2", "2", "2", "two", "3", "2", "2", "2", "2", "2"]});
        let r2 = [Response::Generated(" two###".into())];
        assert_eq!(Vqav2.process_results(&doc2, &r2).unwrap()[0], 1.0);
        let d = [&doc, &doc2];
        let rs: [&[Response]; 2] = [&r, &r2];
        let c = Vqav2.corpus_metrics(&d, &rs).unwrap();
        assert_eq!(&c[..2], &[0.0, 1.0]);
        assert!(c[2].is_nan());
    }
}
