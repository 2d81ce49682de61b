//! MathQA (Amini et al. 2019) as the paper ran it: lm-evaluation-harness 0.3-era `master`
//! `MathQA(MultipleChoiceTask)` (identical in PyPI `lm_eval==0.3.0`) with `--num_fewshot 4`:
//! four random training examples from the seed-42 stream, log-likelihood of `" " + choice` for
//! each of the choices the harness's regex cuts out of `options`, `acc` and `acc_norm`
//! (log-likelihood per character). Spec: `shared/spec/other-nlp.md` items 15–18 and E-MQA-1.
//!
//! The training split (`train.json`) is not bundled (see `data/mathqa/SOURCES.md`): `mathqa`
//! needs `--mathqa-train FILE`; `mathqa_0shot` runs on the bundled test split alone.

use std::path::Path;

use serde_json::{json, Value};
use sha2::Digest;
use sightline_random::PyRandom;

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::task::{field, int_field, np_argmax, Metric, Request, Response, Task};

/// `eval_nlp.sh`: `--num_fewshot 4`.
pub const SHOTS: usize = 4;

/// The harness's `re.findall(r"[abcd] \) .*?, |e \) .*?$", options)`. Written out because
/// Python's `$` also matches before a final `"\n"`, which the `regex` crate's `$` does not;
/// `.` stops at `"\n"` in both.
pub fn find_options(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = match_at(s, i) {
            out.push(&s[i..end]);
            i = end;
        } else {
            // Advance one character (the pattern starts with an ASCII letter).
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

/// The end of a match starting at byte `i`, trying the two alternatives in order.
fn match_at(s: &str, i: usize) -> Option<usize> {
    let rest = &s[i..];
    let c = rest.as_bytes()[0];
    if matches!(c, b'a'..=b'd') && rest[1..].starts_with(" ) ") {
        // `.*?, `: the first ", " before any newline.
        let body = &rest[4..];
        let line_end = body.find('\n').unwrap_or(body.len());
        if let Some(p) = body[..line_end].find(", ") {
            return Some(i + 4 + p + 2);
        }
    }
    if c == b'e' && rest[1..].starts_with(" ) ") {
        // `.*?$`: the earliest end-of-string (or just before a final "\n") with no newline
        // in between.
        let body = &rest[4..];
        match body.find('\n') {
            None => return Some(s.len()),
            Some(p) if i + 4 + p == s.len() - 1 => return Some(i + 4 + p),
            Some(_) => {}
        }
    }
    None
}

/// `_process_doc`: `{query, choices, gold}` from a raw MathQA record.
fn process(raw: &Value, file: &str, record: usize) -> Result<Value> {
    let get = |k: &str| {
        raw.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::data(file, record, format!("field `{k}` must be a string")))
    };
    let correct = get("correct")?;
    let gold = ["a", "b", "c", "d", "e"]
        .iter()
        .position(|l| *l == correct)
        .ok_or_else(|| {
            Error::data(
                file,
                record,
                format!("field `correct` must be one of a-e, found {correct:?}"),
            )
        })?;
    let choices: Vec<String> = find_options(get("options")?)
        .into_iter()
        .map(|c| {
            c.chars()
                .skip(4)
                .collect::<String>()
                .trim_end_matches([' ', ','])
                .to_string()
        })
        .collect();
    Ok(json!({
        "query": format!("Question: {}\nAnswer:", get("Problem")?),
        "choices": choices,
        "gold": gold,
    }))
}

/// The problem text of a processed document: its `query` without the `Question: ` and
/// `\nAnswer:` that [`process`] wrapped it in.
pub(crate) fn problem(doc: &Value) -> Result<&str> {
    let query = field(doc, "query")?;
    query
        .strip_prefix("Question: ")
        .and_then(|q| q.strip_suffix("\nAnswer:"))
        .ok_or_else(|| {
            Error::Config(format!(
                "mathqa: query not of the form \"Question: ...\\nAnswer:\": {query:?}"
            ))
        })
}

/// Reads a MathQA JSON array (the archive's `test.json` / `train.json` layout).
fn read_docs(text: &str, file: &str) -> Result<Vec<Value>> {
    let raw: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| Error::data(file, 0, format!("not a JSON array of MathQA records: {e}")))?;
    raw.iter()
        .enumerate()
        .map(|(i, r)| process(r, file, i + 1))
        .collect()
}

/// Records in MathQA's official `train.json` (HF `math_qa` train).
pub const TRAIN_RECORDS: usize = 29837;
/// sha256 of MathQA's official `train.json` (the oid of its Git LFS pointer, see
/// `data/mathqa/SOURCES.md`).
pub const TRAIN_SHA256: &str = "00e8919347d65dbba9289bf04ed998a6c48dbf451ca909eeb66a35f2419c2bf6";

/// What a `--mathqa-train` file holds, every record validated as the task reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainFile {
    pub records: usize,
    pub sha256: String,
}

impl TrainFile {
    /// Reads, validates (errors name the file, the 1-based record and the field) and hashes
    /// `path`.
    pub fn check(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::data(&name, 0, format!("not UTF-8: {e}")))?;
        let records = read_docs(text, &name)?.len();
        if records < SHOTS {
            return Err(Error::data(
                &name,
                0,
                format!("{records} records, fewer than the {SHOTS} examples each prompt draws"),
            ));
        }
        let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
        Ok(Self { records, sha256 })
    }

    /// One line for stderr when the file is not the official `train.json` (another pool is
    /// allowed, but its numbers are not the paper's); None when it is.
    pub fn warning(&self, path: &Path) -> Option<String> {
        (self.sha256 != TRAIN_SHA256).then(|| {
            format!(
                "warning: --mathqa-train {}: {} records, sha256 {} is not MathQA's official train.json ({TRAIN_RECORDS} records, sha256 {TRAIN_SHA256}); 4-shot mathqa will not be the paper's",
                path.display(),
                self.records,
                self.sha256
            )
        })
    }
}

/// The user's `train.json`, processed as the harness's `training_docs`.
fn train_docs(path: Option<&Path>) -> Result<Vec<Value>> {
    let path = path.ok_or_else(|| {
        Error::Config(format!(
            "mathqa: the 4-shot task draws its examples from MathQA's train.json (HF `math_qa` \
             train, {TRAIN_RECORDS} records, sha256 {TRAIN_SHA256}), \
             which is not bundled: pass --mathqa-train FILE, or run `mathqa_0shot`"
        ))
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    read_docs(&text, &path.display().to_string())
}

/// The choices the harness's regex cut out of `options`, in the data's order (a, b, ...).
pub(crate) fn choices(doc: &Value) -> Result<Vec<&str>> {
    doc["choices"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .ok_or_else(|| Error::Config(format!("document has no choices: {doc}")))
}

/// `MultipleChoiceTask.doc_to_target`: `" " + choices[gold]`.
fn target(doc: &Value) -> Result<String> {
    let gold = int_field(doc, "gold")? as usize;
    let c = choices(doc)?;
    c.get(gold).map(|c| format!(" {c}")).ok_or_else(|| {
        Error::Config(format!(
            "mathqa: a training example's gold index {gold} is past its {} choices (the harness raises IndexError): {doc}",
            c.len()
        ))
    })
}

const METRICS: &[Metric] = &[Metric::mean("acc"), Metric::mean("acc_norm")];

/// MathQA with `shots` training examples (4 = the paper's `mathqa`, 0 = `mathqa_0shot`).
pub struct MathQa {
    pub shots: usize,
}

pub const MATHQA: MathQa = MathQa { shots: SHOTS };
pub const MATHQA_0SHOT: MathQa = MathQa { shots: 0 };

impl Task for MathQa {
    fn num_fewshot(&self) -> usize {
        self.shots
    }

    fn name(&self) -> &'static str {
        if self.shots == 0 {
            "mathqa_0shot"
        } else {
            "mathqa"
        }
    }
    fn version(&self) -> u32 {
        0
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        let rel = "mathqa/test.json";
        read_docs(&data.read_text(rel)?, &data.describe(rel))
    }
    fn attach_fewshot(
        &self,
        docs: &mut [(usize, Value)],
        rnd: &mut PyRandom,
        data: &DataSource,
    ) -> Result<()> {
        if self.shots == 0 {
            for (_, doc) in docs.iter_mut() {
                doc["fewshot"] = json!("");
            }
            return Ok(());
        }
        let train = train_docs(data.mathqa_train.as_deref())?;
        for (_, doc) in docs.iter_mut() {
            let ids = rnd.sample(train.len(), self.shots).ok_or_else(|| {
                Error::Config(format!(
                    "mathqa: --mathqa-train has {} records, fewer than {}",
                    train.len(),
                    self.shots
                ))
            })?;
            let mut text = String::new();
            for &i in &ids {
                text.push_str(field(&train[i], "query")?);
                text.push_str(&target(&train[i])?);
                text.push_str("\n\n");
            }
            doc["fewshot_ids"] = json!(ids);
            doc["fewshot"] = json!(text);
        }
        Ok(())
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        let context = format!("{}{}", field(doc, "fewshot")?, field(doc, "query")?);
        Ok(choices(doc)?
            .into_iter()
            .map(|c| Request::Loglikelihood {
                context: context.clone(),
                continuation: format!(" {c}"),
            })
            .collect())
    }
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        let gold = int_field(doc, "gold")? as usize;
        let lls: Vec<f64> = responses.iter().map(Response::logprob).collect();
        let norm: Vec<f64> = lls
            .iter()
            .zip(choices(doc)?)
            .map(|(ll, c)| ll / c.chars().count() as f64)
            .collect();
        let hit = |xs: &[f64]| if np_argmax(xs) == gold { 1.0 } else { 0.0 };
        Ok(vec![hit(&lls), hit(&norm)])
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_regex_matches_python() {
        let s = "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these";
        let got: Vec<String> = find_options(s)
            .iter()
            .map(|c| c[4..].trim_end_matches([' ', ',']).to_string())
            .collect();
        assert_eq!(
            got,
            ["38", "27.675", "30", "data inadequate", "none of these"]
        );
        // Python list repr: stray quotes survive (E-MQA-1).
        let s = "['a ) 2 : 3', 'b ) 4 : 5', 'c ) 1 : 2', 'd ) 3 : 4', 'e ) 8 : 5']";
        let got = find_options(s);
        assert_eq!(got[0], "a ) 2 : 3', ");
        assert_eq!(got[4], "e ) 8 : 5']");
        // `$` before a final newline; an internal ", " cuts a choice short.
        assert_eq!(find_options("e ) 5\n"), ["e ) 5"]);
        assert!(find_options("e ) 5\nx").is_empty());
        assert_eq!(
            find_options("a ) 1 minute , 12 seconds , e ) 2"),
            ["a ) 1 minute , ", "e ) 2"]
        );
    }

    #[test]
    fn bundled_test_split_gives_five_choices_everywhere() {
        let docs = MATHQA.docs(&DataSource::default()).unwrap();
        assert_eq!(docs.len(), 2985);
        for d in &docs {
            assert_eq!(choices(d).unwrap().len(), 5);
        }
    }

    #[test]
    fn train_file_check_counts_hashes_and_names_bad_records() {
        let dir = std::env::temp_dir().join(format!("sightline-mathqa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/retention/mathqa_train_sample.json");
        let t = TrainFile::check(&sample).unwrap();
        assert_eq!(t.records, 64);
        assert_eq!(t.sha256.len(), 64);
        let w = t.warning(&sample).unwrap();
        assert!(
            w.contains("mathqa_train_sample.json") && w.contains(TRAIN_SHA256) && !w.contains('\n'),
            "{w}"
        );
        assert!(TrainFile {
            records: TRAIN_RECORDS,
            sha256: TRAIN_SHA256.into()
        }
        .warning(&sample)
        .is_none());
        // A bad record: the file, its 1-based index and the field.
        let rec = |correct: &str| {
            format!(
                r#"{{"Problem": "p", "options": "a ) 1 , b ) 2 , c ) 3 , d ) 4 , e ) 5", "correct": "{correct}"}}"#
            )
        };
        let bad = dir.join("bad.json");
        let recs: Vec<String> = (0..5)
            .map(|i| rec(if i == 2 { "z" } else { "a" }))
            .collect();
        std::fs::write(&bad, format!("[{}]", recs.join(","))).unwrap();
        let err = TrainFile::check(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("record 3:") && err.contains("`correct`"),
            "{err}"
        );
        let missing = dir.join("missing.json");
        std::fs::write(&missing, r#"[{"Problem": "p", "correct": "a"}]"#).unwrap();
        let err = TrainFile::check(&missing).unwrap_err().to_string();
        assert!(
            err.contains("missing.json") && err.contains("`options`"),
            "{err}"
        );
        let short = dir.join("short.json");
        std::fs::write(&short, format!("[{}]", rec("a"))).unwrap();
        let err = TrainFile::check(&short).unwrap_err().to_string();
        assert!(err.contains("fewer than the 4"), "{err}");
        let not_json = dir.join("not.json");
        std::fs::write(&not_json, "{").unwrap();
        assert!(TrainFile::check(&not_json)
            .unwrap_err()
            .to_string()
            .contains("not.json"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn four_shot_without_train_names_the_file() {
        let mut docs = vec![(0, json!({}))];
        let err = MATHQA
            .attach_fewshot(
                &mut docs,
                &mut PyRandom::from_int(42),
                &DataSource::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.json") && err.contains("--mathqa-train"),
            "{err}"
        );
    }
}
