//! MME (Fu et al. 2023): yes/no questions in 12 sub-tasks, two per image
//! (`spec/multimodal-eval.md` E4). MME may not be redistributed: the user points
//! `--mme-dir DIR` at their copy of `MME_Benchmark_release_version`.
//!
//! Layout (Sight-Beyond-Text `eval_datasets.MmeDataset`): one folder per sub-task; a folder with
//! exactly two entries holds `images/` and `questions_answers_YN/<qid>.txt`, any other folder is
//! flat with `<qid>.txt` next to the image. Each txt has two `question\tanswer` lines. The image
//! is `<qid>.jpg` for Perception sub-tasks and `<qid>.png` for Cognition ones; a qid is the file
//! name before its single `.` (names with more dots are an error, as they break SBT). Files are
//! read in sorted name order (SBT uses `os.listdir`, whose order the file system decides).
//!
//! Prompt: the protocol's `v0` prompt with the question as is (it already ends with "Please
//! answer yes or no."). Scoring: SBT's result line `image\tquestion\tGT\tpred` (tabs removed from
//! the prediction, newlines from the line, stripped) through `sightline_metrics::mme`:
//! per sub-task acc, acc+ and score (`100·acc + 100·acc+`), Perception (8 sub-tasks, max 1600)
//! and Cognition (4, max 800). Under `--limit` only images whose two questions were both
//! selected are scored, and a total is NaN unless all its sub-tasks were scored in full.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sightline_guard::Folder;
use sightline_metrics::mme::{score_task, COGNITION, PERCEPTION};

use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::mm::{doc_protocol, image_request};
use crate::protocol::Protocol;
use crate::task::{field, int_field, Metric, Request, Response, Task};

/// SBT's `max_generation_length` default.
const SBT_MAX_NEW_TOKENS: usize = 10;

macro_rules! sub_task_metrics {
    ($($t:literal),*) => {
        &[
            Metric::corpus("perception"),
            Metric::corpus("cognition"),
            $(
                Metric::corpus(concat!($t, "_acc")),
                Metric::corpus(concat!($t, "_acc_plus")),
                Metric::corpus(concat!($t, "_score")),
            )*
        ]
    };
}

const METRICS: &[Metric] = sub_task_metrics!(
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "OCR",
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning"
);

pub struct Mme;

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

/// Sorted entry names of a directory.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(|err| io(dir, err))
        })
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

/// The documents of one sub-task folder. Image names come from the folder's listing; an image
/// that is a symlink out of the MME folder is refused (`--allow-outside-paths` lets it).
fn read_task(mme: &Folder, task: &str, ext: &str, out: &mut Vec<Value>) -> Result<()> {
    let root = mme.root();
    let dir = root.join(task);
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "{}: missing MME sub-task folder (expected MME_Benchmark_release_version with one folder per sub-task)",
            dir.display()
        )));
    }
    let listing = entries(&dir)?;
    let (qdir, idir): (PathBuf, PathBuf) = if listing.len() == 2 {
        (dir.join("questions_answers_YN"), dir.join("images"))
    } else {
        (dir.clone(), dir.clone())
    };
    for name in entries(&qdir)? {
        if !name.ends_with(".txt") {
            continue;
        }
        let path = qdir.join(&name);
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() != 2 {
            return Err(Error::data(
                &path.display().to_string(),
                0,
                "the file name has more than one `.` (SBT's qid split breaks on it)",
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != 2 {
            return Err(Error::data(
                &path.display().to_string(),
                0,
                format!(
                    "expected 2 `question\\tanswer` lines, found {}",
                    lines.len()
                ),
            ));
        }
        let image = format!("{}.{ext}", parts[0]);
        let rel = idir.strip_prefix(root).unwrap_or(&idir).join(&image);
        let image_ref = mme
            .join(&rel)
            .map_err(|e| Error::data(&path.display().to_string(), 0, format!("its image: {e}")))?;
        for (k, line) in lines.iter().enumerate() {
            let (q, a) = line.split_once('\t').ok_or_else(|| {
                Error::data(
                    &path.display().to_string(),
                    k + 1,
                    "no tab between question and answer",
                )
            })?;
            out.push(json!({
                "record": out.len(),
                "task": task,
                "image": format!("{task}/{image}"),
                "image_ref": image_ref.display().to_string(),
                "question": q,
                "answer": a,
            }));
        }
    }
    Ok(())
}

/// SBT's result line for one document and its raw prediction.
fn result_line(doc: &Value, pred: &str) -> Result<String> {
    let image = field(doc, "image")?.rsplit('/').next().unwrap_or("");
    let line = format!(
        "{image}\t{}\t{}\t{}",
        field(doc, "question")?,
        field(doc, "answer")?,
        pred.replace('\t', "")
    );
    Ok(line.replace('\n', "").trim().to_string())
}

impl Task for Mme {
    fn name(&self) -> &'static str {
        "mme"
    }
    fn version(&self) -> u32 {
        0
    }
    fn needs_images(&self) -> bool {
        true
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        let Some(root) = &data.mme_dir else {
            return Err(Error::Config(
                "mme: MME may not be redistributed, so it is not bundled: pass --mme-dir DIR (your MME_Benchmark_release_version folder)".into(),
            ));
        };
        let mme = Folder::new(root, data.allow_outside_paths)
            .map_err(|e| Error::Config(format!("--mme-dir: {e}")))?;
        let mut docs = Vec::new();
        for t in PERCEPTION {
            read_task(&mme, t, "jpg", &mut docs)?;
        }
        for t in COGNITION {
            read_task(&mme, t, "png", &mut docs)?;
        }
        let protocol = data.protocol.name();
        for d in &mut docs {
            d["protocol"] = json!(protocol);
        }
        Ok(docs)
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
    fn process_results(&self, _doc: &Value, _r: &[Response]) -> Result<Vec<f64>> {
        Ok(vec![f64::NAN; METRICS.len()])
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        // Result lines per sub-task and image, in dataset order.
        let mut order: Vec<usize> = (0..docs.len()).collect();
        order.sort_by_key(|&i| docs[i]["record"].as_i64().unwrap_or(0));
        let mut by_image: HashMap<(&str, &str), Vec<String>> = HashMap::new();
        let mut image_order: Vec<(&str, &str)> = Vec::new();
        for &i in &order {
            let p = doc_protocol(docs[i])?;
            let raw = responses[i].first().map(Response::text).unwrap_or("");
            let key = (field(docs[i], "task")?, field(docs[i], "image")?);
            if !by_image.contains_key(&key) {
                image_order.push(key);
            }
            by_image
                .entry(key)
                .or_default()
                .push(result_line(docs[i], &p.answer_text(raw))?);
        }
        let mut per_task: Vec<f64> = Vec::new();
        let mut totals = [0.0f64; 2];
        for (g, names) in [(0, &PERCEPTION[..]), (1, &COGNITION[..])] {
            for &t in names {
                let mut lines: Vec<&str> = Vec::new();
                let mut partial = false;
                for key in image_order.iter().filter(|k| k.0 == t) {
                    match by_image[key].as_slice() {
                        [a, b] => lines.extend([a.as_str(), b.as_str()]),
                        _ => partial = true,
                    }
                }
                if lines.is_empty() {
                    per_task.extend([f64::NAN; 3]);
                    totals[g] = f64::NAN;
                    continue;
                }
                let s = score_task(t, &lines).map_err(|e| Error::Config(e.to_string()))?;
                per_task.extend([s.acc, s.acc_plus, s.score]);
                totals[g] = if partial {
                    f64::NAN
                } else {
                    totals[g] + s.score
                };
            }
        }
        let mut out = vec![totals[0], totals[1]];
        out.extend(per_task);
        Ok(out)
    }
    fn extracted(&self, doc: &Value, r: &[Response]) -> Option<Value> {
        let p = Protocol::parse(doc["protocol"].as_str()?)?;
        let raw = r.first().map(Response::text).unwrap_or("");
        let line = result_line(doc, &p.answer_text(raw)).ok()?;
        let pred = line.split('\t').nth(3).unwrap_or("");
        Some(json!(match sightline_metrics::mme::parse_pred(pred) {
            sightline_metrics::mme::Answer::Yes => "yes",
            sightline_metrics::mme::Answer::No => "no",
            _ => "other",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MME-shaped folder: every sub-task with one image and its two questions; `existence`
    /// in the two-folder layout, the rest flat.
    pub(crate) fn write_mme(root: &Path) {
        for (i, t) in PERCEPTION.iter().chain(COGNITION.iter()).enumerate() {
            let ext = if i < PERCEPTION.len() { "jpg" } else { "png" };
            let dir = root.join(t);
            let (qdir, idir) = if *t == "existence" {
                (dir.join("questions_answers_YN"), dir.join("images"))
            } else {
                (dir.clone(), dir.clone())
            };
            std::fs::create_dir_all(&qdir).unwrap();
            std::fs::create_dir_all(&idir).unwrap();
            // Flat folders get two images: a flat folder of exactly two entries would be read
            // as the two-folder layout, as SBT reads it.
            let n = if *t == "existence" { 1 } else { 2 };
            for k in 1..=n {
                std::fs::write(
                    qdir.join(format!("000{k}.txt")),
                    "Is there a dog? Please answer yes or no.\tYes\nIs there a cat? Please answer yes or no.\tNo\n",
                )
                .unwrap();
                std::fs::write(idir.join(format!("000{k}.{ext}")), b"not read here").unwrap();
            }
        }
    }

    #[test]
    fn reads_both_layouts_and_names_images_by_kind() {
        let tmp = tempfile::tempdir().unwrap();
        write_mme(tmp.path());
        let data = DataSource {
            mme_dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        };
        let docs = Mme.docs(&data).unwrap();
        assert_eq!(docs.len(), 2 + 11 * 4);
        assert!(docs[0]["image_ref"]
            .as_str()
            .unwrap()
            .ends_with("existence/images/0001.jpg"));
        assert!(docs[docs.len() - 1]["image_ref"]
            .as_str()
            .unwrap()
            .ends_with("code_reasoning/0002.png"));
        assert_eq!(docs[1]["answer"], "No");
        let err = Mme.docs(&DataSource::default()).unwrap_err().to_string();
        assert!(
            err.contains("--mme-dir") && err.contains("not bundled"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_image_that_links_out_of_the_mme_folder_is_refused_naming_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        write_mme(tmp.path());
        let img = tmp.path().join("count/0002.jpg");
        std::fs::remove_file(&img).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), &img).unwrap();
        let mut data = DataSource {
            mme_dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        };
        let err = Mme.docs(&data).unwrap_err().to_string();
        assert!(
            err.contains("count/0002.txt") && err.contains("symlink"),
            "{err}"
        );
        assert!(err.contains(sightline_guard::ALLOW_OUTSIDE_FLAG), "{err}");
        data.allow_outside_paths = true;
        assert_eq!(Mme.docs(&data).unwrap().len(), 2 + 11 * 4);
    }

    #[test]
    fn scores_pairs_per_sub_task_and_sums_the_groups() {
        let tmp = tempfile::tempdir().unwrap();
        write_mme(tmp.path());
        let data = DataSource {
            mme_dir: Some(tmp.path().to_path_buf()),
            protocol: Protocol::Sbt,
            ..Default::default()
        };
        let docs = Mme.docs(&data).unwrap();
        // Every answer right except the second question of `count`; a tab inside a prediction
        // is removed, not split on.
        let resps: Vec<Vec<Response>> = docs
            .iter()
            .map(|d| {
                let right = d["answer"] == "Yes";
                let wrong = d["task"] == "count" && !right;
                let text = if right != wrong { " Ye\ts" } else { " No" };
                vec![Response::Generated(text.into())]
            })
            .collect();
        let d: Vec<&Value> = docs.iter().collect();
        let r: Vec<&[Response]> = resps.iter().map(Vec::as_slice).collect();
        let m = Mme.corpus_metrics(&d, &r).unwrap();
        let get = |name: &str| m[METRICS.iter().position(|x| x.name == name).unwrap()];
        assert_eq!(get("count_acc"), 0.5);
        assert_eq!(get("count_acc_plus"), 0.0);
        assert_eq!(get("existence_score"), 200.0);
        assert_eq!(get("perception"), 7.0 * 200.0 + 50.0);
        assert_eq!(get("cognition"), 800.0);
        // Half an image (as --limit can leave) is not scored; its group total is NaN.
        let m = Mme.corpus_metrics(&d[1..], &r[1..]).unwrap();
        assert!(m[0].is_nan() && m[1] == 800.0);
    }
}
