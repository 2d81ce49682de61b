//! The entry points of sightline's fuzz targets, in one place so that two runners share them:
//! the cargo-fuzz targets in `fuzz/fuzz_targets/` (nightly, libFuzzer), each a three-line
//! `fuzz_target!` calling one function here, and the replay test `tests/replay.rs` (stable, in
//! `cargo test --workspace`), which runs every committed corpus entry and every finding through
//! the same functions so that CI keeps them fixed.
//!
//! Each entry takes the fuzzer's bytes, hands them to a reader that sightline runs on files from
//! elsewhere, through the public function the product calls, and ignores `Ok` and `Err`: a
//! refusal is the right answer to most inputs. What counts as a bug is a panic, a hang, or an
//! allocation the limits should have stopped (libFuzzer's `-timeout` and `-rss_limit_mb`
//! catch those two). Where a reader takes a path, the bytes are written to a file of the name
//! the product looks for in a fresh temporary folder. Where a reader takes several files, the
//! input holds them one after the other, separated by NUL bytes ([`parts`]; no text file the
//! readers accept contains one).
//!
//! FUZZING.md at the repository root says how to run the targets and what they have found.
//! Modules: [`model`] (checkpoints, configs, tokenizers, pickles, adapters), [`vision`]
//! (images), [`data`] (training records and sources), [`eval`] (task CSVs, the request cache,
//! results folders, run and study files), [`serve`] (HTTP bodies of `sightline serve`); they
//! import only the helpers of this file, not each other.

#[cfg(feature = "capped-alloc")]
mod alloc;
pub mod data;
pub mod eval;
pub mod model;
pub mod serve;
pub mod vision;

use std::path::{Path, PathBuf};

/// One fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the corpus folder
/// `fuzz/corpus/<name>/`) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target. The replay test walks this list, so a target without a corpus fails it.
pub const TARGETS: &[Target] = &[
    ("safetensors", model::safetensors),
    ("shard_index", model::shard_index),
    ("model_config", model::model_config),
    ("tokenizer", model::tokenizer),
    ("pickle", model::pickle),
    ("pickle_zip", model::pickle_zip),
    ("peft_config", model::peft_config),
    ("image", vision::image),
    ("jpeg", vision::jpeg),
    ("llava_records", data::llava_records),
    ("sources", data::sources),
    ("task_csv", eval::task_csv),
    ("request_cache", eval::request_cache),
    ("results_folder", eval::results_folder),
    ("run_toml", eval::run_toml),
    ("study_toml", eval::study_toml),
    ("serve", serve::serve),
];

/// The entry point of the target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The files packed into one input: the pieces between NUL bytes, at most `n` of them (the
/// last piece keeps any further NULs).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0).collect()
}

/// A fresh temporary folder for one input (removed when dropped). Creating it is the only
/// failure an entry point does not ignore: without it nothing can be tested.
pub(crate) fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("cannot create a temporary folder for the fuzz input")
}

/// Writes `bytes` to `dir/rel` (creating its folders) and returns the path.
pub(crate) fn put(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("cannot create a folder in the temporary folder");
    }
    std::fs::write(&path, bytes).expect("cannot write the fuzz input to the temporary folder");
    path
}
