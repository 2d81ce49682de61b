//! Evaluation and run files: the task CSVs a `--data-dir` holds, the request-cache log
//! (`--cache DIR`), results folders that `sightline report` reads (sightline's, lm-eval's,
//! lmms-eval's), and the TOML run and study files.

use std::path::Path;

use sightline_eval::cache::RequestCache;
use sightline_eval::data::DataSource;
use sightline_study::StudyFile;
use sightline_train::config::TrainConfig;

use crate::{parts, put, scratch};

/// The tasks that read a CSV file and the file each reads (under `--data-dir`).
const CSV_TASKS: &[(&str, &str)] = &[
    ("ethics_cm", "ethics/commonsense/cm_test.csv"),
    ("ethics_deontology", "ethics/deontology/deontology_test.csv"),
    ("ethics_justice", "ethics/justice/justice_test.csv"),
    (
        "ethics_utilitarianism",
        "ethics/utilitarianism/util_test.csv",
    ),
    ("ethics_virtue", "ethics/virtue/virtue_test.csv"),
    ("truthfulqa_gen", "truthfulqa/v0/TruthfulQA.csv"),
];

/// One task's CSV: the first byte picks the task (modulo the six in [`CSV_TASKS`]), the rest
/// is its file in a `--data-dir`; then the task's documents (`Task::docs`, which reads it with
/// `DataSource::read_csv`) and every document's requests, as `sightline eval` builds them.
pub fn task_csv(data: &[u8]) {
    let Some((&pick, csv)) = data.split_first() else {
        return;
    };
    let (name, rel) = CSV_TASKS[pick as usize % CSV_TASKS.len()];
    let dir = scratch();
    put(dir.path(), rel, csv);
    let source = DataSource {
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let Ok(tasks) = sightline_eval::tasks::resolve(name) else {
        return;
    };
    for task in tasks {
        if let Ok(docs) = task.docs(&source) {
            for doc in &docs {
                let _ = task.requests(doc);
            }
        }
    }
}

/// A `requests.jsonl` in a `--cache` folder through [`RequestCache::open`] (which loads every
/// entry, drops a torn last line and terminates it).
pub fn request_cache(data: &[u8]) {
    let dir = scratch();
    put(dir.path(), "requests.jsonl", data);
    let _ = RequestCache::open(dir.path());
}

/// A results folder for `sightline report`: `results.json` NUL `samples_truthfulqa_mc1.jsonl`
/// NUL `train_log.jsonl` (each written when present) through
/// [`sightline_report::input::load`], which finds, parses and pairs them.
pub fn results_folder(data: &[u8]) {
    let dir = scratch();
    let names = [
        "results.json",
        "samples_truthfulqa_mc1.jsonl",
        "train_log.jsonl",
    ];
    for (name, bytes) in names.iter().zip(parts(data, names.len())) {
        put(dir.path(), name, bytes);
    }
    let _ = sightline_report::input::load(&[(dir.path().to_path_buf(), "run".into())]);
}

/// A training run file through [`TrainConfig::from_toml_str`] (what `from_toml` calls on the
/// file's text): TOML, the fields, their ranges.
pub fn run_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = TrainConfig::from_toml_str(text, Path::new("run.toml"), &[]);
}

/// A study file through [`StudyFile::from_str`]: TOML, the fields, names, sources and
/// references. (Not the plan built from it: planning the embedded toy study took 4 s in a test
/// build (among other things it hashes every bundled data file), so a plan per input would be a
/// timeout per input.)
pub fn study_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = StudyFile::from_str(text, Path::new("study.toml"));
}
