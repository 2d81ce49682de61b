//! End-to-end tests of `sightline report` on the committed lm-evaluation-harness fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sightline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report/lm-eval")
}

#[test]
fn report_writes_tables_json_html_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rep");
    let (a, b) = (fixtures().join("stories260k"), fixtures().join("tiny-base"));
    let o = sightline()
        .arg("report")
        .arg(&a)
        .arg(&b)
        .arg("--label")
        .arg(format!("{}=tiny", b.display()))
        .args(["--baseline", "tiny", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "report.md",
        "report.html",
        "report.json",
        "plots/bars_truthfulqa.svg",
        "plots/bars_truthfulqa.png",
        "plots/bars_ethics.svg",
        "plots/delta_stories260k.svg",
        "plots/delta_stories260k.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Baseline: **tiny**"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 8 + 2); // and the ETHICS average of each model
    assert!(rows
        .iter()
        .any(|r| r["task"] == "ethics_average" && r["model"] == "tiny"));
    assert!(rows
        .iter()
        .any(|r| r["model"] == "stories260k" && r["test"] == "mcnemar_exact"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script"));

    // A second run refuses to replace the report unless asked.
    let again = sightline()
        .arg("report")
        .arg(&a)
        .arg(&b)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    let o = sightline()
        .arg("report")
        .arg(&a)
        .arg(&b)
        .arg("--overwrite")
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Default labels are the directories' names, and the first is the baseline.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Baseline: **stories260k**"), "{md}");
}

#[test]
fn bad_labels_and_inputs_are_clear_errors() {
    let a = fixtures().join("stories260k");
    let o = sightline()
        .arg("report")
        .arg(&a)
        .args(["--label", "elsewhere=x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--label elsewhere=x"), "{err}");
    let o = sightline()
        .arg("report")
        .arg(&a)
        .args(["--baseline", "nobody"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--baseline nobody"));
}

/// Real `sightline eval` output on two models (the built-in stories260K and the tiny training
/// base model): the report pairs the documents and runs the paired tests.
#[test]
fn report_reads_real_sightline_eval_output() {
    let tmp = tempfile::tempdir().unwrap();
    let base_model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train/base");
    let runs = [
        ("a", "builtin:stories260k".to_string()),
        ("b", base_model.display().to_string()),
    ];
    for (name, model) in &runs {
        let o = sightline()
            .args([
                "eval",
                "--model",
                model,
                "--tasks",
                "truthfulqa_mc2,ethics_justice",
                "--limit",
                "12",
                "--log-samples",
                "--output",
            ])
            .arg(tmp.path().join(name))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out = tmp.path().join("rep");
    let o = sightline()
        .arg("report")
        .arg(tmp.path().join("a"))
        .arg(tmp.path().join("b"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let row = |task: &str, metric: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == "b" && r["task"] == task && r["metric"] == metric)
            .unwrap_or_else(|| panic!("no b {task} {metric}"))
            .clone()
    };
    let mc2 = row("truthfulqa_mc2", "acc");
    assert_eq!(mc2["test"], "paired_bootstrap");
    assert_eq!(mc2["n_paired"], 12);
    assert!(mc2["ci95"].is_array());
    let acc = row("ethics_justice", "acc");
    assert_eq!(acc["test"], "mcnemar_exact");
    // ETHICS `em` is computed over groups of 4 documents: no per-document value, no test.
    let em = row("ethics_justice", "em");
    assert!(em["test"].is_null(), "{em}");
    assert!(
        em["note"].as_str().unwrap().contains("no paired test"),
        "{em}"
    );
}
