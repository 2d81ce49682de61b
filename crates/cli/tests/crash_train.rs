//! Crash drills for the commands that write checkpoints (issue 19 item 6): `sightline train`
//! and `sightline merge-lora` SIGKILLed while an output is half written. Each output is
//! written under a temporary name and renamed when complete, so the kill leaves no output
//! under its real name, every earlier checkpoint loads, and the next run removes the
//! temporary the killed one left and completes.

mod drill_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use drill_support::{
    command, kill_mid_write, kill_mid_write_of, ok, run, temporaries, train_args, BASE,
};

/// `generate` loads `model` and says something (the checkpoint is whole).
fn loads(model: &Path) {
    let o = run(&[
        "generate".into(),
        "--model".into(),
        model.display().to_string(),
        "--prompt".into(),
        "Once upon a time".into(),
        "--max-new-tokens".into(),
        "2".into(),
    ]);
    ok(&o, &format!("generate --model {}", model.display()));
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .expect("output_dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort();
    names
}

#[test]
fn sigkill_while_a_checkpoint_is_written_keeps_the_last_one_and_resume_completes() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("run");
    // A checkpoint every step, the last two kept: most of the run's time is spent saving.
    let overrides = ["save_steps=1", "save_total_limit=2", "max_steps=40"];
    let args = train_args(&out, &overrides);
    // Caught writing checkpoint-2 or later, so that there is an earlier one to keep: the
    // writes of checkpoint-1 are let through (stopping at the first temporary seen made this
    // drill depend on missing checkpoint-1's write, which a loaded machine rarely did).
    let step_of = |stem: &str| -> Option<usize> { stem.strip_prefix("checkpoint-")?.parse().ok() };
    let mut caught = None;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&out);
        let mut child = command()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("train");
        let limit = Duration::from_secs(120);
        let later = |stem: &str| step_of(stem).is_some_and(|s| s >= 2);
        if let Some(tmp) = kill_mid_write_of(&mut child, &out, &later, limit) {
            let stem = tmp
                .trim_start_matches('.')
                .split(".tmp-")
                .next()
                .unwrap_or("");
            let step = step_of(stem).expect("step of the temporary");
            caught = Some((tmp, step));
            break;
        }
    }
    let (tmp, tmp_step) = caught.expect("never caught checkpoint-2 or later being written");
    eprintln!("killed while writing {tmp}");
    // Every checkpoint under its real name is whole and loads, and is older than the one
    // being written.
    let kept = checkpoints(&out);
    assert!(!kept.is_empty(), "no checkpoint before {tmp}");
    for c in &kept {
        let dir = out.join(c);
        for f in [
            "trainer_state.json",
            "trainer_state.safetensors",
            "model.safetensors",
        ] {
            assert!(dir.join(f).is_file(), "{c} has no {f}");
        }
        let step: usize = c["checkpoint-".len()..].parse().expect("step");
        assert!(
            step < tmp_step,
            "{c} is not older than the half-written {tmp}"
        );
        loads(&dir);
    }
    // Resume: the stale temporary goes, the run finishes from the last whole checkpoint.
    let o = run(&[args.clone(), vec!["--resume".into()]].concat());
    let stdout = ok(&o, "train --resume");
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    assert!(out.join("model.safetensors").is_file(), "{stdout}");
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).expect("log");
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("log line");
            v["step"].as_u64().expect("step")
        })
        .collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>(), "{log}");
    loads(&out);
}

#[test]
fn sigkill_during_merge_lora_leaves_no_output_and_a_rerun_completes() {
    let d = tempfile::tempdir().expect("tmp");
    let adapter = d.path().join("lora");
    let o = run(&train_args(
        &adapter,
        &["lora_enable=true", "lora_r=4", "max_steps=2"],
    ));
    ok(&o, "train a LoRA adapter");
    let merged = d.path().join("merged");
    let args: Vec<String> = [
        "merge-lora",
        "--model",
        BASE,
        "--adapter",
        &adapter.display().to_string(),
        "--output",
        &merged.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut caught = None;
    for _ in 0..10 {
        let _ = std::fs::remove_dir_all(&merged);
        let mut child = command()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("merge-lora");
        caught = kill_mid_write(&mut child, d.path(), "merged", Duration::from_secs(120));
        if caught.is_some() {
            break;
        }
    }
    let tmp = caught.expect("never caught merge-lora writing in 10 runs");
    assert!(!merged.exists(), "a killed merge left {}", merged.display());
    assert!(
        d.path().join(&tmp).is_dir(),
        "{tmp} is what the killed merge left"
    );
    // The rerun sweeps the dead merge's temporary and writes a whole, loadable model.
    let out = ok(&run(&args), "merge-lora rerun");
    assert!(out.contains("merged"), "{out}");
    assert!(
        temporaries(d.path()).is_empty(),
        "{:?}",
        temporaries(d.path())
    );
    loads(&merged);
}
