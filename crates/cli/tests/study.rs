//! `sightline study`: a tiny study (tests/fixtures/study/tiny.toml) run uninterrupted, rerun
//! (nothing recomputed, report byte-identical), and killed with SIGKILL once during a training
//! step and once during an evaluation — each rerun completes with the uninterrupted numbers.
//! Also the paper's study file in `--dry-run`, and one-line errors for bad study files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn tiny() -> PathBuf {
    root().join("tests/fixtures/study/tiny.toml")
}

fn study_cmd(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sightline"));
    c.current_dir(root())
        .arg("study")
        .arg("--config")
        .arg(tiny())
        .arg("--dir")
        .arg(dir)
        .args(extra);
    c
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_study(dir: &Path) -> String {
    let o = study_cmd(dir, &[]).output().expect("runs");
    ok(&o, "study")
}

/// Lines in a file (0 when it does not exist yet).
fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |t| t.lines().count())
}

/// Starts the study and SIGKILLs it once `ready` holds (polled every 2 ms); returns its
/// stderr. Panics if the study finishes first.
fn kill_when(dir: &Path, ready: impl Fn() -> bool) -> String {
    let log = dir.with_extension("log");
    let file = std::fs::File::create(&log).expect("log");
    let mut child: Child = study_cmd(dir, &[])
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawns");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            panic!(
                "the study ended ({st}) before the kill point:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if ready() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "no kill point");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::fs::read_to_string(&log).unwrap_or_default()
}

/// Every results file's metrics and every train log's numbers (no timings), by path.
fn numbers(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "cache" && !name.starts_with("checkpoint-") {
                    stack.push(p);
                }
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if name.starts_with("results") && name.ends_with(".json") {
                let v: serde_json::Value = serde_json::from_str(&text).expect("results json");
                out.push((rel, v["results"].to_string()));
            } else if name == "train_log.jsonl" {
                let cleaned: Vec<String> = text
                    .lines()
                    .map(|l| {
                        let mut v: serde_json::Value = serde_json::from_str(l).expect("log line");
                        v.as_object_mut().unwrap().remove("seconds");
                        v.to_string()
                    })
                    .collect();
                out.push((rel, cleaned.join("\n")));
            } else if name == "report.json" || name.starts_with("samples_") {
                out.push((rel, text));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_killed_study_resumes_to_the_numbers_of_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Uninterrupted.
    let a = tmp.path().join("a");
    run_study(&a);
    assert!(a.join("report.html").is_file() && a.join("report.md").is_file());
    let report: Vec<(String, Vec<u8>)> = ["report.md", "report.html", "report.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(a.join(f)).expect("report")))
        .collect();
    // Rerun: nothing recomputed, the report byte-identical.
    let t0 = Instant::now();
    let err = run_study(&a);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "rerun took {:?}",
        t0.elapsed()
    );
    assert!(
        !err.contains("running"),
        "a rerun recomputed something:\n{err}"
    );
    assert!(err.contains("up to date"), "{err}");
    for (f, bytes) in &report {
        assert_eq!(
            &std::fs::read(a.join(f)).unwrap(),
            bytes,
            "{f} changed on rerun"
        );
    }

    // Killed during a stage-2 training step (a checkpoint exists, the run is not finished).
    let b = tmp.path().join("b");
    let train = b.join("train-mm-full");
    kill_when(&b, || {
        lines(&train.join("out/train_log.jsonl")) >= 4
            && std::fs::read_dir(train.join("out"))
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
                })
                .unwrap_or(false)
    });
    assert!(
        !train.join("manifest.json").exists(),
        "training finished before the kill"
    );
    // Rerun, killed during an evaluation (some requests cached, no results yet).
    let eval = b.join("eval-mm-full-text");
    let log = kill_when(&b, || lines(&eval.join("cache/requests.jsonl")) >= 20);
    assert!(log.contains("train-mm-full: resuming"), "{log}");
    assert!(
        !eval.join("manifest.json").exists(),
        "evaluation finished before the kill"
    );
    // Rerun to the end.
    let err = run_study(&b);
    assert!(err.contains("eval-mm-full-text: resuming"), "{err}");
    let (na, nb) = (numbers(&a), numbers(&b));
    assert_eq!(
        na.iter().map(|x| &x.0).collect::<Vec<_>>(),
        nb.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((path, x), (_, y)) in na.iter().zip(&nb) {
        assert_eq!(x, y, "{path} differs after kill + resume");
    }
}

#[test]
fn changing_an_input_redoes_that_step_and_what_depends_on_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("records.json");
    std::fs::copy(
        root().join("data/training/sketch/sketch_instruct.json"),
        &data,
    )
    .unwrap();
    let file = tmp.path().join("s.toml");
    std::fs::write(
        &file,
        format!(
            "[[base]]\nname = 'b'\nmodel = 'builtin:stories260k'\n\
             [[data]]\nname = 'given'\nfile = {:?}\n\
             [[data]]\nname = 'text'\nstrip_images = 'given'\n\
             [[data]]\nname = 'few'\nsample = {{ from = 'text', count = 5 }}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let dir = tmp.path().join("s");
    let study = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
            .args(["study", "--config"])
            .arg(&file)
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .output()
            .expect("runs");
        ok(&o, "study")
    };
    let err = study(&["--only", "data"]);
    assert!(
        err.contains("data-text: running") && err.contains("data-few: running"),
        "{err}"
    );
    assert!(
        !dir.join("eval-b-text").exists(),
        "--only data ran an evaluation"
    );
    let err = study(&["--only", "data"]);
    assert!(
        err.contains("data-text: up to date") && err.contains("data-few: up to date"),
        "{err}"
    );
    // The given file changed: its step and the one after it run again.
    let mut text = std::fs::read_to_string(&data).unwrap();
    text = text.replacen("sketch", "drawing", 1);
    std::fs::write(&data, text).unwrap();
    let err = study(&["--only", "data"]);
    assert!(
        err.contains("data-text: running") && err.contains("data-few: running"),
        "{err}"
    );
    // --force redoes a step and everything after it, even when up to date.
    let err = study(&["--only", "data", "--force", "data-few"]);
    assert!(
        err.contains("data-text: up to date") && err.contains("data-few: running"),
        "{err}"
    );
}

#[test]
fn the_paper_study_dry_run_prints_its_plan_and_missing_files() {
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .current_dir(root())
        .args([
            "study",
            "--config",
            "studies/sight-beyond-text.toml",
            "--dry-run",
            "--dir",
        ])
        .arg(tempfile::tempdir().unwrap().path().join("sbt"))
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "train-llama-2-7b-stage1",
        "train-llama-2-7b-mm-ft",
        "train-llama-2-7b-chat-mm-lora",
        "train-llama-2-7b-orca",
        "train-llama-2-7b-conversation-20k",
        "eval-llama-2-7b-text",
        "meta-llama/Llama-2-7b-hf (hub id",
        "learning_rate=2e-3",
        "paper-data/LLaVA-Instruct-150K/llava_instruct_80k.json (MISSING)",
        "input paths are missing",
        "report",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
}

#[test]
fn bad_study_files_are_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (text, want) in [
        ("[[base]]\nname = 'a'\nmodel = 'builtin:stories260k'\ncolour = 1\n", "colour"),
        (
            "[[base]]\nname = 'a'\nmodel = 'builtin:stories260k'\n[[variant]]\nname = 'v'\nrun = 'bundled:configs/text-only.toml'\ndata = 'nothing'\n",
            "no [[data]] named `nothing`",
        ),
        (
            "[[base]]\nname = 'a'\nmodel = 'builtin:stories260k'\n[report]\nbaseline = 'zzz'\n",
            "baseline `zzz`",
        ),
    ] {
        let f = tmp.path().join("s.toml");
        std::fs::write(&f, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
            .args(["study", "--dry-run", "--config"])
            .arg(&f)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(want), "want `{want}` in: {err}");
    }
}

/// A stage-2 variant whose stage-1 variant's run file is missing: the error names that file
/// (it used to say the stage-1 variant "is not a stage-1 run").
#[test]
fn a_missing_stage1_run_file_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let text = "vision_tower = 'builtin:tiny-clip'\n\
        [[base]]\nname = 'a'\nmodel = 'builtin:stories260k'\n\
        [[data]]\nname = 'captions'\nfile = 'bundled:training/sketch/sketch_captions.json'\n\
        image_folder = 'bundled:images'\n\
        [[variant]]\nname = 'stage1'\nrun = 'no/such/stage1.toml'\ndata = 'captions'\n\
        [[variant]]\nname = 'mm'\nrun = 'bundled:configs/stage2-full.toml'\ndata = 'captions'\n\
        stage1 = 'stage1'\n";
    let f = tmp.path().join("s.toml");
    std::fs::write(&f, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .current_dir(tmp.path())
        .args(["study", "--dry-run", "--config"])
        .arg(&f)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stage1 `stage1`: its run file no/such/stage1.toml does not exist"),
        "{err}"
    );
    assert!(!err.contains("is not a stage-1 run"), "{err}");
}
