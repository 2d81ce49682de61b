//! Helpers shared by the `sightline data` end-to-end tests (`data.rs`, `data_build.rs`): run the
//! binary offline, read its outputs and the Python reference fixtures.
// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

pub const PRETRAIN: &str = "data/training/llava/blip_laion_cc_sbu_100.json";
pub const QA: &str = "data/training/llava/coco2014_val_gpt4_qa_30x3.jsonl";
pub const ALPACA: &str = "data/training/alpaca/alpaca_small_100.json";
pub const ORCA: &str = "data/training/orca/orca_dpo_pairs_validation_30.jsonl";
pub const TINY_TOKENIZER: &str = "tests/fixtures/llava/tiny-llava-orig";

pub fn sightline<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    // Offline: a mistyped path that reads as a Hub id must not reach for the network.
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("runs");
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    o
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs and expects success.
pub fn ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let o = sightline(args);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// Runs and expects exit code 1 with exactly one line on stderr, `error: …`; returns it.
pub fn one_error<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let o = sightline(args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

pub fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn fixture(name: &str) -> Value {
    read_json(&root().join("tests/fixtures/data").join(name))
}

pub fn records(p: &Path) -> Vec<Value> {
    read_json(p).as_array().cloned().expect("a JSON array")
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Every record of `file` goes through LLaVA's preprocessing under `template` (what
/// `sightline train` will do with it): `stats` reports no rejected record.
pub fn trains_under(file: &Path, template: &str) {
    let o = ok(&[
        "data",
        "stats",
        &file.display().to_string(),
        "--tokenizer",
        &path(TINY_TOKENIZER),
        "--template",
        template,
        "--json",
    ]);
    let j: Value = serde_json::from_str(stdout(&o).trim()).expect("stats --json");
    let t = &j["tokens"];
    assert_eq!(t["failed"], 0, "{}: {template}: {j}", file.display());
    assert_eq!(t["samples"], j["records"]);
    assert!(t["trained_tokens"].as_u64().unwrap_or(0) > 0);
}
