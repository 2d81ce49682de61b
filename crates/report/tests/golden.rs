//! The report of two real lm-evaluation-harness 0.4.9.1 folders against the Python reference
//! (`scripts/reference/make_report_fixtures.py`: scipy, statsmodels, numpy):
//! values and stderrs exactly as lm-eval wrote them, McNemar, paired bootstrap (p and CI), the
//! unpaired z-test, Holm, and the bootstrap's numpy index stream.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sightline_report::{build, stats, Entry, Options, Test};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("golden.json"))
        .expect("golden.json (run make_report_fixtures.py)");
    serde_json::from_str(&text).expect("valid JSON")
}

fn inputs() -> Vec<(PathBuf, String)> {
    ["stories260k", "tiny-base"]
        .iter()
        .map(|m| (fixtures().join("lm-eval").join(m), m.to_string()))
        .collect()
}

fn entry<'a>(es: &'a [Entry], model: &str, task: &str, metric: &str) -> &'a Entry {
    es.iter()
        .find(|e| e.model == model && e.task == task && e.metric == metric)
        .unwrap_or_else(|| panic!("no entry {model} {task} {metric}"))
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

#[test]
fn values_and_stderrs_are_lm_evals() {
    let g = golden();
    let r = build(&inputs(), None, &Options::default()).unwrap();
    assert_eq!(r.baseline, "stories260k");
    let mut n = 0;
    for (model, tasks) in g["values"].as_object().unwrap() {
        for (task, v) in tasks.as_object().unwrap() {
            let e = entry(&r.entries, model, task, "acc");
            assert_eq!(e.value, v["acc"].as_f64(), "{model} {task}");
            assert_eq!(e.stderr, v["acc_stderr"].as_f64(), "{model} {task}");
            n += 1;
        }
    }
    assert_eq!(n, 8);
    // To the last bit: the shortest representation of each value is the text lm-eval wrote
    // (Python's repr), found in its results file.
    let mut texts = String::new();
    for (dir, _) in inputs() {
        for f in std::fs::read_dir(dir).unwrap() {
            let p = f.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("results_")
            {
                texts.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    for e in &r.entries {
        if e.task == "ethics_average" {
            continue;
        }
        for (k, v) in [("acc,none", e.value), ("acc_stderr,none", e.stderr)] {
            let needle = format!("\"{k}\": {}", v.unwrap());
            assert!(
                texts.contains(&needle),
                "{} {}: {needle} not in lm-eval's files",
                e.model,
                e.task
            );
        }
    }
    // The tables print them (4 decimals) and report.json carries them exactly.
    let md = file(&r, "report.md");
    let e = entry(&r.entries, "tiny-base", "truthfulqa_mc2", "acc");
    let cell = format!("{:.4} ± {:.4}", e.value.unwrap(), e.stderr.unwrap());
    assert!(md.contains(&cell), "{cell} not in report.md");
    let json: Value = serde_json::from_str(&file(&r, "report.json")).unwrap();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["model"] == "tiny-base" && x["task"] == "truthfulqa_mc2")
        .unwrap();
    assert_eq!(row["value"].as_f64(), e.value);
    assert_eq!(row["stderr"].as_f64(), e.stderr);
    assert_eq!(row["n"], g["compare"]["tiny-base"]["truthfulqa_mc2"]["n"]);
    assert_eq!(row["test"], "paired_bootstrap");
    for k in [
        "model", "task", "metric", "value", "stderr", "n", "delta", "test", "p_value",
    ] {
        assert!(row.get(k).is_some(), "report.json lacks {k}");
    }
}

fn file(r: &sightline_report::Report, name: &str) -> String {
    let (_, bytes) = r
        .files
        .iter()
        .find(|(p, _)| p == Path::new(name))
        .unwrap_or_else(|| panic!("no {name}"));
    String::from_utf8(bytes.clone()).unwrap()
}

#[test]
fn paired_tests_match_scipy_statsmodels_numpy() {
    let g = golden();
    assert_eq!(g["bootstrap"]["B"], 10_000);
    assert_eq!(g["bootstrap"]["seed"], 1234);
    let r = build(&inputs(), None, &Options::default()).unwrap();
    let cmp = g["compare"]["tiny-base"].as_object().unwrap();
    for (task, want) in cmp {
        let e = entry(&r.entries, "tiny-base", task, "acc");
        assert_eq!(e.n_paired, want["n"].as_u64(), "{task}");
        close(
            e.delta.unwrap(),
            want["delta"].as_f64().unwrap(),
            1e-12,
            task,
        );
        close(e.p_value.unwrap(), want["p"].as_f64().unwrap(), 1e-6, task);
        close(
            e.p_holm.unwrap(),
            want["p_holm"].as_f64().unwrap(),
            1e-6,
            task,
        );
        match want["test"].as_str().unwrap() {
            "mcnemar_exact" => {
                assert_eq!(e.test, Some(Test::McnemarExact), "{task}");
                close(
                    e.p_value.unwrap(),
                    want["p_scipy"].as_f64().unwrap(),
                    1e-6,
                    task,
                );
            }
            "paired_bootstrap" => {
                assert_eq!(e.test, Some(Test::PairedBootstrap), "{task}");
                let ci = e.ci95.unwrap();
                close(ci[0], want["ci"][0].as_f64().unwrap(), 1e-6, task);
                close(ci[1], want["ci"][1].as_f64().unwrap(), 1e-6, task);
            }
            t => panic!("unknown test {t}"),
        }
    }
    assert_eq!(cmp.len(), 4);
    // The baseline is not compared with itself.
    let b = entry(&r.entries, "stories260k", "ethics_cm", "acc");
    assert!(b.test.is_none() && b.delta.is_none() && b.p_value.is_none());
}

#[test]
fn mcnemar_on_large_counts_matches_statsmodels() {
    for case in golden()["mcnemar_large"].as_array().unwrap() {
        let (b, c) = (case["b"].as_u64().unwrap(), case["c"].as_u64().unwrap());
        let p = stats::mcnemar_exact(b, c);
        close(
            p,
            case["p_statsmodels"].as_f64().unwrap(),
            1e-9,
            &format!("b={b} c={c}"),
        );
        close(
            p,
            case["p_scipy"].as_f64().unwrap(),
            1e-9,
            &format!("b={b} c={c}"),
        );
    }
}

#[test]
fn holm_matches_multipletests() {
    for case in golden()["holm_cases"].as_array().unwrap() {
        let p: Vec<f64> = case["p"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let want = case["holm"].as_array().unwrap();
        for (a, w) in stats::holm(&p).iter().zip(want) {
            close(*a, w.as_f64().unwrap(), 1e-12, "holm");
        }
    }
}

#[test]
fn unpaired_z_matches_scipy() {
    let g = golden();
    let v = &g["values"];
    for (task, want) in g["compare"]["tiny-base"].as_object().unwrap() {
        let (a, b) = (&v["stories260k"][task], &v["tiny-base"][task]);
        let p = stats::z_test(
            a["acc"].as_f64().unwrap(),
            a["acc_stderr"].as_f64().unwrap(),
            b["acc"].as_f64().unwrap(),
            b["acc_stderr"].as_f64().unwrap(),
        )
        .unwrap();
        close(p, want["z_p"].as_f64().unwrap(), 1e-9, task);
    }
}

#[test]
fn bootstrap_indices_are_numpys_randint_stream() {
    let g = golden();
    let want: Vec<i64> = g["randint_1234_n7_first20"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let mut rs = sightline_random::RandomState::from_u32(1234);
    let got: Vec<i64> = (0..20).map(|_| rs.randint(0, 7)).collect();
    assert_eq!(got, want);
    // And the first two resamples of the mc2 bootstrap.
    let mc2 = &g["compare"]["tiny-base"]["truthfulqa_mc2"];
    let (first, n) = (&mc2["first_indices"], mc2["n"].as_i64().unwrap());
    let mut rs = sightline_random::RandomState::from_u32(1234);
    let mut rows = Vec::new();
    for _ in 0..2 {
        let row: Vec<i64> = (0..n).map(|_| rs.randint(0, n)).collect();
        rows.push(row[..10].to_vec());
    }
    let want: Vec<Vec<i64>> = serde_json::from_value(first.clone()).unwrap();
    assert_eq!(rows, want);
}

#[test]
fn report_states_tests_b_seed_and_ethics_average() {
    let r = build(&inputs(), None, &Options::default()).unwrap();
    let md = file(&r, "report.md");
    for s in [
        "McNemar's exact test",
        "paired bootstrap",
        "B = 10000",
        "seed 1234",
        "unweighted mean of the 2 subset accuracies",
        "p < 0.05",
        "## TruthfulQA",
        "## ETHICS",
    ] {
        assert!(md.contains(s), "report.md lacks {s:?}");
    }
    // The eval dates of the lm-eval files (in their names and their "date" fields) appear
    // nowhere.
    let mut dates = Vec::new();
    for (dir, _) in inputs() {
        for f in std::fs::read_dir(&dir).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(d) = name
                .strip_prefix("results_")
                .and_then(|d| d.strip_suffix(".json"))
            {
                dates.push(d[..10].to_string());
                let j: Value =
                    serde_json::from_str(&std::fs::read_to_string(dir.join(&name)).unwrap())
                        .unwrap();
                dates.push(format!("{}", j["date"].as_f64().unwrap() as i64));
            }
        }
    }
    assert_eq!(dates.len(), 8);
    for (name, bytes) in &r.files {
        let text = String::from_utf8_lossy(bytes);
        for d in &dates {
            assert!(!text.contains(d.as_str()), "{d} in {}", name.display());
        }
    }
}

/// Writes a sightline POPE run (results.json + samples with `doc.label` and
/// `filtered_resps`) from 0/1 answers and labels.
fn write_pope(dir: &Path, preds: &[i64], gold: &[i64], f1: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let word = |b: i64| if b == 1 { "yes" } else { "no" };
    let acc: Vec<f64> = preds
        .iter()
        .zip(gold)
        .map(|(p, g)| f64::from(u8::from(p == g)))
        .collect();
    let mean = acc.iter().sum::<f64>() / acc.len() as f64;
    let results = serde_json::json!({
        "results": {"pope_random": {"acc,none": mean, "acc_stderr,none": 0.05,
                                     "f1,none": f1, "f1_stderr,none": "N/A"}},
        "n-samples": {"pope_random": {"original": 3000, "effective": preds.len()}},
    });
    std::fs::write(dir.join("results.json"), results.to_string()).unwrap();
    let mut text = String::new();
    for (i, (p, g)) in preds.iter().zip(gold).enumerate() {
        let rec = serde_json::json!({"doc_id": i, "doc": {"record": i, "label": word(*g)},
            "arguments": [], "resps": [[format!("{}.", word(*p))]],
            "filtered_resps": [word(*p)], "acc": acc[i], "yes_ratio": *p as f64});
        text.push_str(&rec.to_string());
        text.push('\n');
    }
    std::fs::write(dir.join("samples_pope_random.jsonl"), text).unwrap();
}

#[test]
fn pope_f1_bootstrap_recomputes_f1_like_numpy() {
    let g = golden();
    let case = &g["pope_f1"];
    let ints = |k: &str| -> Vec<i64> {
        case[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("base"), tmp.path().join("other"));
    write_pope(
        &a,
        &ints("base"),
        &ints("gold"),
        case["f1_base"].as_f64().unwrap(),
    );
    write_pope(
        &b,
        &ints("other"),
        &ints("gold"),
        case["f1_other"].as_f64().unwrap(),
    );
    let r = build(
        &[(a, "base".into()), (b, "other".into())],
        None,
        &Options::default(),
    )
    .unwrap();
    let e = entry(&r.entries, "other", "pope_random", "f1");
    assert_eq!(e.test, Some(Test::PairedBootstrap));
    close(
        e.delta.unwrap(),
        case["delta"].as_f64().unwrap(),
        1e-12,
        "delta",
    );
    close(e.p_value.unwrap(), case["p"].as_f64().unwrap(), 1e-6, "p");
    let ci = e.ci95.unwrap();
    close(ci[0], case["ci"][0].as_f64().unwrap(), 1e-6, "ci lo");
    close(ci[1], case["ci"][1].as_f64().unwrap(), 1e-6, "ci hi");
    // p < 0.05: marked in the POPE block.
    let md = file(&r, "report.md");
    assert!(md.contains("## POPE"), "{md}");
    assert!(
        md.contains(&format!("{:+.4}* (p=", e.delta.unwrap())),
        "{md}"
    );
}
