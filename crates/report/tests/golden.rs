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
    assert_eq!(row["n"], 20);
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
    let mut rs = sightline_corrupt::rng::RandomState::from_u32(1234);
    let got: Vec<i64> = (0..20).map(|_| rs.randint(0, 7)).collect();
    assert_eq!(got, want);
    // And the first two resamples of the mc2 bootstrap (n = 20).
    let first = &g["compare"]["tiny-base"]["truthfulqa_mc2"]["first_indices"];
    let mut rs = sightline_corrupt::rng::RandomState::from_u32(1234);
    let mut rows = Vec::new();
    for _ in 0..2 {
        let row: Vec<i64> = (0..20).map(|_| rs.randint(0, 20)).collect();
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
