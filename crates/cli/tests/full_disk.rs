//! Full-disk drills (issue 19 item 6): `sightline train` and `sightline eval` run on a tmpfs
//! too small for what they write. Each ends with one `error:` line that names the file and
//! says the disk is full, exit code 1, and loses nothing already written: earlier checkpoints,
//! the request cache and the results of an earlier run stay whole, none of a final model that
//! could not be written whole is put in place, no temporary is left, and the run resumes
//! where there is room.
//!
//! The tmpfs is mounted in a private mount namespace (`unshare`), so nothing is mounted
//! outside the test; where that is impossible the drills print why and skip, unless
//! `SIGHTLINE_REQUIRE_SMALL_DISK=1` (`.ci/run` sets it where it can mount one).

mod drill_support;

use std::path::Path;

use drill_support::{files, ok, on_small_disk, one_full_disk_line, pages, run, temporaries};
use drill_support::{train_args, BASE};

fn eval_args(limit: usize, dir: &Path, overwrite: bool) -> Vec<String> {
    let mut a: Vec<String> = ["eval", "--model", BASE, "--tasks", "truthfulqa_mc1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend([
        "--limit".into(),
        limit.to_string(),
        "--output".into(),
        dir.join("out").display().to_string(),
        "--cache".into(),
        dir.join("cache").display().to_string(),
        "--log-samples".into(),
    ]);
    if overwrite {
        a.push("--overwrite".into());
    }
    a
}

#[test]
fn a_full_disk_while_saving_a_checkpoint_keeps_the_last_one() {
    let d = tempfile::tempdir().expect("tmp");
    // What one checkpoint takes: a reference run stopped after its first step.
    let reference = d.path().join("reference");
    let o = run(&[
        train_args(&reference, &["save_steps=1", "max_steps=3"]),
        vec!["--stop-after".into(), "1".into()],
    ]
    .concat());
    ok(&o, "reference run");
    let checkpoint = pages(&reference.join("checkpoint-1"));
    // Room for the run's files and checkpoint-1, and half of checkpoint-2.
    let size = pages(&reference) + checkpoint / 2;
    let disk = d.path().join("disk");
    let out = disk.join("run");
    let overrides = ["save_steps=1", "max_steps=3"];
    let Some(r) = on_small_disk(&disk, size, None, &train_args(&out, &overrides)) else {
        return;
    };
    let line = one_full_disk_line(&r);
    assert!(line.contains("checkpoint-2"), "{line}");
    assert!(
        !line.contains(".tmp-"),
        "the message names a temporary: {line}"
    );
    let after = r.after.join("run");
    assert!(temporaries(&after).is_empty(), "{:?}", temporaries(&after));
    assert!(!after.join("checkpoint-2").exists());
    // checkpoint-1 is whole (the same files as the reference's) and the run resumes from it.
    let names = |dir: &Path| files(dir).into_keys().collect::<Vec<_>>();
    assert_eq!(
        names(&after.join("checkpoint-1")),
        names(&reference.join("checkpoint-1"))
    );
    let resumed = run(&[train_args(&after, &overrides), vec!["--resume".into()]].concat());
    ok(&resumed, "train --resume after the full disk");
    assert!(after.join("model.safetensors").is_file());
}

#[test]
fn a_full_disk_while_saving_the_final_model_puts_none_of_it_in_place() {
    let d = tempfile::tempdir().expect("tmp");
    let overrides = ["save_steps=1", "max_steps=2"];
    let reference = d.path().join("reference");
    ok(&run(&train_args(&reference, &overrides)), "reference run");
    // Room for everything but half of tokenizer.json, which is written after the weights and
    // config.json: the disk fills when part of the final model is already written.
    let tokenizer = std::fs::metadata(reference.join("tokenizer.json"))
        .expect("tokenizer.json")
        .len();
    let size = pages(&reference) - tokenizer.div_ceil(4096) * 4096 / 2;
    let disk = d.path().join("disk");
    let out = disk.join("run");
    let Some(r) = on_small_disk(&disk, size, None, &train_args(&out, &overrides)) else {
        return;
    };
    let line = one_full_disk_line(&r);
    assert!(
        !line.contains(".tmp-"),
        "the message names a temporary: {line}"
    );
    let after = r.after.join("run");
    assert!(temporaries(&after).is_empty(), "{:?}", temporaries(&after));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(
            !after.join(f).exists(),
            "{f} of a failed final save is in place"
        );
    }
    let resumed = run(&[train_args(&after, &overrides), vec!["--resume".into()]].concat());
    ok(&resumed, "train --resume after the full disk");
    assert!(after.join("model.safetensors").is_file());
}

#[test]
fn a_full_disk_while_evaluating_keeps_the_cache_and_the_earlier_results() {
    let d = tempfile::tempdir().expect("tmp");
    // An earlier run's results and cache: 2 documents.
    let seed = d.path().join("seed");
    ok(&run(&eval_args(2, &seed, false)), "earlier eval");
    let before = files(&seed);
    // 30 documents with two free pages: the cache's appends run out of room.
    let disk = d.path().join("disk");
    let Some(r) = on_small_disk(
        &disk,
        pages(&seed) + 8192,
        Some(&seed),
        &eval_args(30, &disk, true),
    ) else {
        return;
    };
    one_full_disk_line(&r);
    let after = files(&r.after);
    for (rel, bytes) in &before {
        let now = after
            .get(rel)
            .unwrap_or_else(|| panic!("{} is gone", rel.display()));
        if rel.ends_with("requests.jsonl") {
            assert!(now.starts_with(bytes), "the cache lost entries");
        } else {
            assert_eq!(now, bytes, "{} changed", rel.display());
        }
    }
    assert!(temporaries(&r.after.join("out")).is_empty());
    // Where there is room, the run completes from the cache it left, and the cache stays
    // readable on every later run (a torn append is cut, not left in the middle of the log).
    ok(
        &run(&eval_args(30, &r.after, true)),
        "eval after the full disk",
    );
    ok(
        &run(&eval_args(31, &r.after, true)),
        "a second eval on that cache",
    );
    let log = std::fs::read_to_string(r.after.join("cache/requests.jsonl")).expect("cache");
    for (i, line) in log.lines().enumerate() {
        let entry: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(entry.is_ok(), "cache line {}: {line:?}", i + 1);
    }
}

#[test]
fn a_full_disk_while_writing_results_keeps_the_earlier_ones_whole() {
    let d = tempfile::tempdir().expect("tmp");
    let seed = d.path().join("seed");
    // The cache answers 30 documents; the results are of an earlier 2-document run.
    ok(&run(&eval_args(30, &seed, false)), "filling the cache");
    std::fs::remove_dir_all(seed.join("out")).expect("rm");
    ok(&run(&eval_args(2, &seed, false)), "earlier eval");
    let before = files(&seed);
    let disk = d.path().join("disk");
    // Every answer is cached, so only the results are written: room for results.json, not
    // for the samples too.
    let Some(r) = on_small_disk(
        &disk,
        pages(&seed) + 8192,
        Some(&seed),
        &eval_args(30, &disk, true),
    ) else {
        return;
    };
    let line = one_full_disk_line(&r);
    assert!(line.contains("samples_truthfulqa_mc1.jsonl"), "{line}");
    // results.json and the samples are the earlier run's, both whole: not a new results.json
    // beside old samples.
    assert_eq!(files(&r.after), before);
}
