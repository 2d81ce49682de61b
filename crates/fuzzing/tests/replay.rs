//! Replays every committed fuzz input on stable: each file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through its target's entry point, so that CI (which has no
//! nightly toolchain) keeps every finding fixed and every corpus entry harmless.
//!
//! Fails on a panic in any thread (the server's engine runs the model on its own thread, where
//! a panic would otherwise only close a channel), on an input that takes longer than
//! [`SLOW`] (libFuzzer's limit is 1 s in a release build; this is a test build on a shared CI
//! machine, hence the margin), on a target without a corpus, on a folder that names no target,
//! and on an empty folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sightline_fuzzing::{target, TARGETS};

/// The longest one input may take. The slow findings took 8 s and more in a release build.
const SLOW: Duration = Duration::from_secs(5);

/// Panics seen by the hook, in any thread, since the test began.
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// The message of the last one.
static LAST: Mutex<String> = Mutex::new(String::new());

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The target folders under `fuzz/<kind>/`, sorted, with their files sorted.
fn folders(kind: &str) -> Vec<(String, Vec<PathBuf>)> {
    let root = fuzz_dir().join(kind);
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(e.path())
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        out.push((e.file_name().to_string_lossy().into_owned(), files));
    }
    out.sort();
    out
}

#[test]
fn every_corpus_and_finding_replays_without_a_panic() {
    // Counts every panic (and still prints it, so that a failure of the test itself shows).
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        *LAST.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string();
        print(info);
    }));
    let corpus = folders("corpus");
    for (name, _) in TARGETS {
        assert!(
            corpus
                .iter()
                .any(|(n, files)| n == name && !files.is_empty()),
            "target `{name}` has no corpus: add seeds under fuzz/corpus/{name}/"
        );
    }
    let mut failures = Vec::new();
    let mut replayed = 0;
    for kind in ["corpus", "regressions"] {
        for (name, files) in folders(kind) {
            let f = target(&name).unwrap_or_else(|| {
                panic!("fuzz/{kind}/{name}/ names no target in sightline_fuzzing::TARGETS")
            });
            assert!(!files.is_empty(), "fuzz/{kind}/{name}/ is empty");
            for file in files {
                let data = std::fs::read(&file).unwrap();
                let before = PANICS.load(Ordering::SeqCst);
                let start = Instant::now();
                let caught = std::panic::catch_unwind(|| f(&data));
                let took = start.elapsed();
                if caught.is_err() || PANICS.load(Ordering::SeqCst) != before {
                    let msg = LAST.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    failures.push(format!("{}: {msg}", file.display()));
                } else if took > SLOW {
                    failures.push(format!("{}: took {took:?}", file.display()));
                }
                replayed += 1;
            }
        }
    }
    let _ = std::panic::take_hook();
    assert!(
        failures.is_empty(),
        "{} of {replayed} fuzz inputs panic or are slow:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
