//! End-to-end tests of `sightline eval`: lm-eval's results schema, samples, and a request
//! cache that survives SIGKILL.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sightline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

#[test]
fn results_json_follows_lm_eval_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = sightline()
        .args([
            "eval",
            "--tasks",
            "truthfulqa_mc1,ethics_virtue",
            "--limit",
            "10",
            "--log-samples",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("|truthfulqa_mc1") && table.contains("|acc"),
        "{table}"
    );
    let r = results(&out);
    let acc = r["results"]["truthfulqa_mc1"]["acc,none"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(r["results"]["truthfulqa_mc1"]["acc_stderr,none"]
        .as_f64()
        .is_some());
    assert_eq!(r["results"]["ethics_virtue"]["em_stderr,none"], "N/A");
    assert_eq!(r["versions"]["ethics_virtue"], 0);
    assert_eq!(r["n-samples"]["truthfulqa_mc1"]["original"], 817);
    assert_eq!(r["n-samples"]["truthfulqa_mc1"]["effective"], 10);
    assert_eq!(r["config"]["limit"], 10);
    assert_eq!(r["config"]["model_args"], "builtin:stories260k");
    assert_eq!(
        r["task_hashes"]["ethics_virtue"].as_str().unwrap().len(),
        64
    );
    let samples = std::fs::read_to_string(out.join("samples_ethics_virtue.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 10);
    let first: serde_json::Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    assert_eq!(first["arguments"].as_array().unwrap().len(), 2);
    assert!(first["acc"].as_f64().is_some());
    // A second run refuses to replace the results.
    let again = sightline()
        .args([
            "eval",
            "--tasks",
            "ethics_virtue",
            "--limit",
            "2",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
}

/// Issue 16: the `retention` group runs from a fresh clone on bundled data (MathQA's few-shot
/// pool from the test fixture) and writes lm-eval's schema.
#[test]
fn retention_group_runs_on_bundled_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = sightline()
        .args([
            "eval",
            "--tasks",
            "retention",
            "--limit",
            "3",
            "--mathqa-train",
        ])
        .arg(root.join("tests/fixtures/retention/mathqa_train_sample.json"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The stand-in pool is not the official train.json: one warning line names it.
    let err = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning: --mathqa-train"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("mathqa_train_sample.json") && warnings[0].contains("64 records"),
        "{}",
        warnings[0]
    );
    let r = results(&out);
    for (task, n) in [
        ("mmlu", 14042),
        ("gsm8k", 1319),
        ("mathqa", 2985),
        ("boolq", 3270),
        ("squad2", 11873),
    ] {
        assert_eq!(r["n-samples"][task]["original"], n, "{task}");
        assert_eq!(r["n-samples"][task]["effective"], 3, "{task}");
    }
    assert!(r["results"]["mathqa"]["acc_norm,none"].as_f64().is_some());
    assert!(r["results"]["squad2"]["best_f1,none"].as_f64().is_some());
    assert!(
        r["results"]["mmlu"]["acc_stem,none"].is_number()
            || r["results"]["mmlu"]["acc_stem,none"] == "NaN"
    );
    // The 4-shot MathQA without its training file says which file and which flag.
    let o = sightline()
        .args(["eval", "--tasks", "mathqa", "--limit", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("train.json") && err.contains("--mathqa-train"),
        "{err}"
    );
    // A pool with a bad record: the file, the record and the field, before anything runs.
    let bad = tmp.path().join("pool.json");
    std::fs::write(
        &bad,
        r#"[{"Problem": "p", "options": "a ) 1 , e ) 2", "correct": "a"}, {"Problem": "q", "correct": "b"}]"#,
    )
    .unwrap();
    let o = sightline()
        .args([
            "eval",
            "--tasks",
            "mathqa",
            "--limit",
            "1",
            "--mathqa-train",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pool.json: record 2: field `options`"),
        "{err}"
    );
    // lm-eval 0.4.9.1's gsm8k: its metric keys, version and shots in results.json.
    let out04 = tmp.path().join("out04");
    let o = sightline()
        .args([
            "eval",
            "--tasks",
            "gsm8k",
            "--gsm8k-harness",
            "0.4",
            "--limit",
            "2",
            "--output",
        ])
        .arg(&out04)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = results(&out04);
    for k in ["exact_match,strict-match", "exact_match,flexible-extract"] {
        assert!(
            r["results"]["gsm8k"][k].is_number(),
            "{k}: {}",
            r["results"]
        );
    }
    assert!(r["results"]["gsm8k"]["exact_match_stderr,strict-match"].is_number());
    assert_eq!(r["versions"]["gsm8k"], 3);
    assert_eq!(r["n-shot"]["gsm8k"], 5);
}

#[test]
fn unknown_task_is_a_clear_error() {
    let o = sightline()
        .args(["eval", "--tasks", "hellaswag"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown task `hellaswag`") && err.contains("truthfulqa_mc1"),
        "{err}"
    );
}

#[test]
fn killed_cached_run_resumes_to_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let args = [
        "eval",
        "--tasks",
        "ethics_cm,truthfulqa_mc2,truthfulqa_gen",
        "--limit",
        "24",
        "--batch-size",
        "4",
    ];

    // Reference: one uninterrupted run without a cache.
    let plain = tmp.path().join("plain");
    let o = sightline()
        .args(args)
        .arg("--output")
        .arg(&plain)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A cached run, SIGKILLed once some requests have been logged.
    let mut child = sightline()
        .args(args)
        .arg("--cache")
        .arg(&cache)
        .arg("--output")
        .arg(tmp.path().join("killed"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = cache.join("requests.jsonl");
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 40 || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed"
    );
    let logged = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(logged >= 40);

    let resumed = tmp.path().join("resumed");
    let o = sightline()
        .args(args)
        .arg("--cache")
        .arg(&cache)
        .arg("--output")
        .arg(&resumed)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (results(&plain), results(&resumed));
    assert_eq!(
        a["results"], b["results"],
        "resumed results differ from an uninterrupted run"
    );
    let hits = b["cached_requests"].as_u64().unwrap();
    assert!(hits >= 40, "only {hits} requests reused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("reused"));

    // A third run computes nothing at all: the log does not grow.
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    let third = tmp.path().join("third");
    let o = sightline()
        .args(args)
        .arg("--cache")
        .arg(&cache)
        .arg("--output")
        .arg(&third)
        .output()
        .unwrap();
    assert!(o.status.success());
    let all = results(&third)["cached_requests"].as_u64().unwrap();
    assert_eq!(results(&third)["results"], a["results"]);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        before
    );
    assert!(
        all > hits,
        "the third run reuses what the second computed too ({all} vs {hits})"
    );
}
