//! Reading runs: sightline result folders (written here in `sightline eval`'s schema, see
//! crates/eval/src/report.rs), label merging, conflicts, the unpaired fallback, NaN handling,
//! corrupted-image sweeps, training logs, bad input and determinism.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sightline_report::{build, Entry, Error, Options, Test};

/// Writes `results<suffix>.json` and, with `samples`, `samples_<task><suffix>.jsonl` for one
/// task with per-document values of `metric` (mean and stderr as sightline computes them).
fn write_run(dir: &Path, suffix: &str, task: &str, metric: &str, xs: &[f64], samples: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let ok: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = ok.len() as f64;
    let mean = ok.iter().sum::<f64>() / n;
    let var = ok.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let results = json!({
        "results": {task: {"alias": task, format!("{metric},none"): mean,
                           format!("{metric}_stderr,none"): (var / n).sqrt()}},
        "group_subtasks": {},
        "n-samples": {task: {"original": 100, "effective": xs.len()}},
        "config": {"model": "sightline"},
        "date": 1_700_000_000.5,
    });
    let name = format!("results{suffix}.json");
    let text = serde_json::to_string_pretty(&results).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    if samples {
        let mut out = String::new();
        for (i, x) in xs.iter().enumerate() {
            let v = if x.is_finite() {
                json!(x)
            } else {
                json!("NaN")
            };
            let rec =
                json!({"doc_id": i, "doc": {"q": i}, "arguments": [], "resps": [], metric: v});
            out.push_str(&serde_json::to_string(&rec).unwrap());
            out.push('\n');
        }
        std::fs::write(dir.join(format!("samples_{task}{suffix}.jsonl")), out).unwrap();
    }
}

fn entry<'a>(es: &'a [Entry], model: &str, task: &str, metric: &str) -> &'a Entry {
    es.iter()
        .find(|e| {
            e.model == model && e.task == task && e.metric == metric && e.corruption.is_none()
        })
        .unwrap_or_else(|| panic!("no entry {model} {task} {metric}"))
}

fn md(r: &sightline_report::Report) -> String {
    let (_, b) = r
        .files
        .iter()
        .find(|(p, _)| p == Path::new("report.md"))
        .unwrap();
    String::from_utf8(b.clone()).unwrap()
}

fn bits(n: usize, ones: &[usize]) -> Vec<f64> {
    (0..n)
        .map(|i| if ones.contains(&i) { 1.0 } else { 0.0 })
        .collect()
}

#[test]
fn sightline_folders_parse_and_compare_paired() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("base"), tmp.path().join("tuned"));
    // b = 1 (doc 0), c = 6 (docs 10..16): McNemar p = 2·(1 + 7)/128.
    write_run(&a, "", "ethics_virtue", "acc", &bits(20, &[0, 1, 2]), true);
    write_run(
        &b,
        "",
        "ethics_virtue",
        "acc",
        &bits(20, &[1, 2, 10, 11, 12, 13, 14, 15]),
        true,
    );
    let r = build(
        &[(a, "base".into()), (b, "tuned".into())],
        None,
        &Options::default(),
    )
    .unwrap();
    let e = entry(&r.entries, "tuned", "ethics_virtue", "acc");
    assert_eq!(e.test, Some(Test::McnemarExact));
    assert!((e.p_value.unwrap() - 16.0 / 128.0).abs() < 1e-12);
    assert!((e.delta.unwrap() - 0.25).abs() < 1e-12);
    assert_eq!(e.n, Some(20));
    assert_eq!(e.n_paired, Some(20));
    assert!(md(&r).contains("## ETHICS"));
}

#[test]
fn directories_with_one_label_are_one_model_and_conflicts_name_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let (text, img, train) = (
        tmp.path().join("llava/text"),
        tmp.path().join("llava/img"),
        tmp.path().join("llava/train"),
    );
    write_run(&base, "", "truthfulqa_mc1", "acc", &bits(10, &[0, 1]), true);
    // Subfolders of an input directory belong to it.
    write_run(
        &base.join("img"),
        "",
        "pope_random",
        "acc",
        &bits(10, &[0]),
        false,
    );
    write_run(
        &text,
        "",
        "truthfulqa_mc1",
        "acc",
        &bits(10, &[0, 1, 2]),
        true,
    );
    write_run(&img, "", "pope_random", "acc", &bits(10, &[0, 5]), false);
    std::fs::create_dir_all(&train).unwrap();
    std::fs::write(
        train.join("train_log.jsonl"),
        "{\"step\":1,\"epoch\":0.5,\"loss\":2.5,\"lr\":0.00002,\"grad_norm\":1.5,\"tokens\":100,\"seconds\":0.1}\n\
         {\"step\":2,\"epoch\":1.0,\"loss\":null,\"lr\":0.00001,\"grad_norm\":1.2,\"tokens\":100,\"seconds\":0.1}\n",
    )
    .unwrap();
    let inputs = vec![
        (base.clone(), "base".to_string()),
        (text.clone(), "llava".to_string()),
        (img.clone(), "llava".to_string()),
        (train.clone(), "llava".to_string()),
    ];
    let r = build(&inputs, Some("base"), &Options::default()).unwrap();
    let models: std::collections::BTreeSet<&str> =
        r.entries.iter().map(|e| e.model.as_str()).collect();
    assert_eq!(models.len(), 2);
    let e = entry(&r.entries, "llava", "truthfulqa_mc1", "acc");
    assert!(e.p_value.is_some(), "{e:?}");
    assert!(entry(&r.entries, "llava", "pope_random", "acc")
        .p_value
        .is_some());
    assert!(r
        .files
        .iter()
        .any(|(p, _)| p == Path::new("plots/training.svg")));
    assert!(r
        .files
        .iter()
        .any(|(p, _)| p == Path::new("plots/training.png")));

    // The same task with another value in a second directory of the same model.
    let dup = tmp.path().join("llava/text-again");
    write_run(&dup, "", "truthfulqa_mc1", "acc", &bits(10, &[0]), true);
    let mut inputs2 = inputs.clone();
    inputs2.push((dup.clone(), "llava".to_string()));
    let err = build(&inputs2, None, &Options::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Conflict(_)), "{msg}");
    assert!(
        msg.contains("truthfulqa_mc1") && msg.contains("acc"),
        "{msg}"
    );
    assert!(
        msg.contains(&text.join("results.json").display().to_string())
            && msg.contains(&dup.join("results.json").display().to_string()),
        "{msg}"
    );
    // An identical copy is not a conflict.
    let same = tmp.path().join("llava/text-copy");
    write_run(
        &same,
        "",
        "truthfulqa_mc1",
        "acc",
        &bits(10, &[0, 1, 2]),
        true,
    );
    let mut inputs3 = inputs.clone();
    inputs3.push((same, "llava".to_string()));
    build(&inputs3, None, &Options::default()).unwrap();
}

#[test]
fn missing_samples_fall_back_to_the_unpaired_z_test() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_run(&a, "", "ethics_cm", "acc", &bits(30, &[0, 1, 2, 3]), true);
    write_run(
        &b,
        "",
        "ethics_cm",
        "acc",
        &bits(30, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        false,
    );
    let r = build(
        &[(a, "a".into()), (b, "b".into())],
        None,
        &Options::default(),
    )
    .unwrap();
    let e = entry(&r.entries, "b", "ethics_cm", "acc");
    assert_eq!(e.test, Some(Test::ZUnpaired));
    let (v1, v2) = (4.0 / 30.0, 10.0 / 30.0);
    let se = |p: f64| (p * (1.0 - p) / 29.0f64).sqrt();
    let z = (v2 - v1) / (se(v1).powi(2) + se(v2).powi(2)).sqrt();
    let p = sightline_report::stats::normal_two_sided(z);
    assert!((e.p_value.unwrap() - p).abs() < 1e-12);
    assert!(e.note.as_deref().unwrap().contains("unpaired"));
    let text = md(&r);
    assert!(text.contains("unpaired"), "{text}");
    // Different document sets are not paired either.
    let c = tmp.path().join("c");
    write_run(&c, "", "ethics_cm", "acc", &bits(25, &[0]), true);
    let a = tmp.path().join("a");
    let r = build(
        &[(a, "a".into()), (c, "c".into())],
        None,
        &Options::default(),
    )
    .unwrap();
    let e = entry(&r.entries, "c", "ethics_cm", "acc");
    assert_eq!(e.test, Some(Test::ZUnpaired));
    assert!(
        e.note.as_deref().unwrap().contains("not paired"),
        "{:?}",
        e.note
    );
}

#[test]
fn nan_documents_are_left_out_and_identical_runs_give_p_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let xs = [0.1, 0.5, f64::NAN, 0.7, 0.2, 0.9];
    let mut ys = xs;
    ys[4] = f64::NAN;
    write_run(&a, "", "truthfulqa_mc2", "acc", &xs, true);
    write_run(&b, "", "truthfulqa_mc2", "acc", &ys, true);
    let r = build(
        &[(a.clone(), "a".into()), (b, "b".into())],
        None,
        &Options::default(),
    )
    .unwrap();
    let e = entry(&r.entries, "b", "truthfulqa_mc2", "acc");
    assert_eq!(e.test, Some(Test::PairedBootstrap));
    assert_eq!((e.n_paired, e.n_nan), (Some(4), Some(2)));
    assert_eq!((e.delta, e.p_value), (Some(0.0), Some(1.0)));
    // The same directory twice under two labels: zero variance.
    let r = build(
        &[(a.clone(), "a".into()), (a, "a2".into())],
        None,
        &Options::default(),
    )
    .unwrap();
    let e = entry(&r.entries, "a2", "truthfulqa_mc2", "acc");
    assert_eq!(
        (e.delta, e.p_value, e.ci95),
        (Some(0.0), Some(1.0), Some([0.0, 0.0]))
    );
}

#[test]
fn corrupted_runs_make_sweeps() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    write_run(
        &m,
        "",
        "pope_random",
        "acc",
        &bits(10, &[0, 1, 2, 3, 4, 5, 6, 7]),
        true,
    );
    for (c, drop) in [("gaussian_noise", 1usize), ("fog", 2)] {
        for s in 1..=3usize {
            let k = 8usize.saturating_sub(drop * s);
            let ones: Vec<usize> = (0..k).collect();
            write_run(
                &m,
                &format!("_{c}_{s}"),
                "pope_random",
                "acc",
                &bits(10, &ones),
                true,
            );
        }
    }
    let r = build(&[(m, "m".into())], None, &Options::default()).unwrap();
    let sweep: Vec<&Entry> = r
        .entries
        .iter()
        .filter(|e| e.corruption.is_some())
        .collect();
    assert_eq!(sweep.len(), 6);
    assert!(sweep
        .iter()
        .any(|e| e.corruption.as_deref() == Some("gaussian_noise") && e.severity == Some(3)));
    assert!(r
        .files
        .iter()
        .any(|(p, _)| p == Path::new("plots/corruption_m_pope_random.svg")));
    assert!(md(&r).contains("pope_random [fog 2]"));
}

#[test]
fn bad_input_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    write_run(&a, "", "ethics_cm", "acc", &bits(4, &[0]), true);
    // A samples line without doc_id.
    let sp = a.join("samples_ethics_cm.jsonl");
    let text = std::fs::read_to_string(&sp).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[1] = "{\"doc\": {}, \"acc\": 1.0}".into();
    std::fs::write(&sp, lines.join("\n")).unwrap();
    let err = build(&[(a.clone(), "a".into())], None, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:2:", sp.display())) && err.contains("doc_id"),
        "{err}"
    );
    // A truncated results file.
    let rp = a.join("results.json");
    let text = std::fs::read_to_string(&rp).unwrap();
    std::fs::write(&rp, &text[..text.len() / 2]).unwrap();
    let err = build(&[(a, "a".into())], None, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}:", rp.display())) && err.contains("JSON"),
        "{err}"
    );
    // A bad training log line.
    let t = tmp.path().join("t");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("train_log.jsonl"),
        "{\"step\":1,\"loss\":1.0,\"lr\":0.1}\n",
    )
    .unwrap();
    let err = build(&[(t.clone(), "t".into())], None, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train_log.jsonl:1") && err.contains("grad_norm"),
        "{err}"
    );
    // Nothing to report, an unknown baseline.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = build(&[(empty.clone(), "e".into())], None, &Options::default()).unwrap_err();
    assert!(err.to_string().contains("no results files"), "{err}");
    let ok = tmp.path().join("ok");
    write_run(&ok, "", "ethics_cm", "acc", &bits(4, &[0]), true);
    let err = build(&[(ok, "t".into())], Some("nope"), &Options::default()).unwrap_err();
    assert!(err.to_string().contains("--baseline nope"), "{err}");
}

#[test]
fn two_runs_write_byte_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report/lm-eval");
    let m = tmp.path().join("img");
    write_run(&m, "", "pope_random", "acc", &bits(10, &[0, 1, 2, 3]), true);
    write_run(&m, "_fog_1", "pope_random", "acc", &bits(10, &[0, 1]), true);
    std::fs::write(
        m.join("train_log.jsonl"),
        "{\"step\":1,\"epoch\":1.0,\"loss\":1.5,\"lr\":0.001,\"grad_norm\":0.5,\"tokens\":9,\"seconds\":0.25}\n",
    )
    .unwrap();
    let inputs: Vec<(PathBuf, String)> = vec![
        (fx.join("stories260k"), "stories260k".into()),
        (fx.join("tiny-base"), "tiny-base".into()),
        (m, "tiny-base".into()),
    ];
    let (o1, o2) = (tmp.path().join("o1"), tmp.path().join("o2"));
    build(&inputs, None, &Options::default())
        .unwrap()
        .write(&o1)
        .unwrap();
    build(&inputs, None, &Options::default())
        .unwrap()
        .write(&o2)
        .unwrap();
    let mut n = 0;
    for rel in [
        "report.md",
        "report.html",
        "report.json",
        "plots/bars_truthfulqa.svg",
        "plots/bars_truthfulqa.png",
        "plots/training.png",
        "plots/corruption_tiny-base_pope_random.png",
    ] {
        let (a, b) = (
            std::fs::read(o1.join(rel)).unwrap(),
            std::fs::read(o2.join(rel)).unwrap(),
        );
        assert!(!a.is_empty() && a == b, "{rel} differs");
        n += 1;
    }
    let count = |d: &Path| std::fs::read_dir(d.join("plots")).unwrap().count();
    assert_eq!(count(&o1), count(&o2));
    assert_eq!(n, 7);
    // The JSON report parses and lists every (model, task, metric) once.
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(o1.join("report.json")).unwrap()).unwrap();
    // 8 lm-eval entries, pope_random clean and corrupted, the ETHICS average of both models.
    assert_eq!(j.as_array().unwrap().len(), 8 + 2 + 2);
}

fn lm_eval_fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/report/lm-eval")
        .join(model)
}

/// Copies an lm-eval folder, renaming `results_<date>.json` / `samples_<task>_<date>.jsonl` by
/// `rename(kind, task, date)`.
fn copy_renamed(src: &Path, dst: &Path, rename: impl Fn(&str, Option<&str>, &str) -> String) {
    std::fs::create_dir_all(dst).unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let new = if let Some(d) = name.strip_prefix("results_") {
            rename("results", None, d.strip_suffix(".json").unwrap())
        } else {
            let rest = name
                .strip_prefix("samples_")
                .unwrap()
                .strip_suffix(".jsonl")
                .unwrap();
            // The date starts at the last "_20" (the task names have no such part).
            let at = rest.rfind("_20").unwrap();
            rename("samples", Some(&rest[..at]), &rest[at + 1..])
        };
        std::fs::copy(&p, dst.join(new)).unwrap();
    }
}

#[test]
fn lmms_eval_names_read_like_lm_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let lmms = tmp.path().join("lmms");
    copy_renamed(
        &lm_eval_fixture("tiny-base"),
        &lmms,
        |kind, task, date| match task {
            None => format!("{date}_{kind}.json"),
            Some(t) => format!("{date}_{kind}_{t}.jsonl"),
        },
    );
    let inputs = vec![
        (lm_eval_fixture("stories260k"), "a".to_string()),
        (lmms, "b".to_string()),
    ];
    let r = build(&inputs, None, &Options::default()).unwrap();
    let direct = build(
        &[
            (lm_eval_fixture("stories260k"), "a".to_string()),
            (lm_eval_fixture("tiny-base"), "b".to_string()),
        ],
        None,
        &Options::default(),
    )
    .unwrap();
    let key = |es: &[Entry]| -> Vec<String> {
        es.iter()
            .map(|e| format!("{} {:?} {:?} {:?}", e.task, e.value, e.test, e.p_value))
            .collect()
    };
    assert_eq!(key(&r.entries), key(&direct.entries));
    assert!(r
        .entries
        .iter()
        .filter(|e| e.model == "b" && e.task != "ethics_average")
        .all(|e| e.test.is_some()));
}

#[test]
fn lm_eval_takes_each_task_from_its_newest_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_renamed(
        &lm_eval_fixture("tiny-base"),
        &dir,
        |kind, task, date| match task {
            None => format!("{kind}_{date}.json"),
            Some(t) => format!("{kind}_{t}_{date}.jsonl"),
        },
    );
    // An older run of ethics_cm with another value: not a conflict, and not used.
    let old = json!({"results": {"ethics_cm": {"acc,none": 0.99, "acc_stderr,none": 0.01}}});
    std::fs::write(
        dir.join("results_2000-01-01T00-00-00.000000.json"),
        old.to_string(),
    )
    .unwrap();
    let r = build(&[(dir, "m".into())], None, &Options::default()).unwrap();
    let e = entry(&r.entries, "m", "ethics_cm", "acc");
    assert_ne!(e.value, Some(0.99));
    assert_eq!(e.n, Some(40));
}

/// lmms-eval logs POPE's metrics as per-document items `{question_id, score, prediction,
/// ground_truth}`: F1 and accuracy are recomputed on each bootstrap resample from them.
#[test]
fn lmms_eval_pope_items_are_bootstrapped() {
    let tmp = tempfile::tempdir().unwrap();
    let gold: Vec<bool> = (0..40).map(|i| i % 2 == 0).collect();
    for (name, wrong) in [("a", 9usize), ("b", 3)] {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let date = "20250101_000000";
        let mut text = String::new();
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (i, g) in gold.iter().enumerate() {
            let pred = if i < wrong { !g } else { *g };
            match (pred, g) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                _ => {}
            }
            let w = |b: bool| if b { "yes" } else { "no" };
            let item =
                json!({"question_id": i, "score": 1, "prediction": w(pred), "ground_truth": w(*g)});
            let rec =
                json!({"doc_id": i, "target": w(*g), "pope_accuracy": item, "pope_f1_score": item});
            text.push_str(&rec.to_string());
            text.push('\n');
        }
        let f1 = 2.0 * tp / (2.0 * tp + fp + fn_);
        let acc = 1.0 - wrong as f64 / 40.0;
        let res = json!({"results": {"pope_pop": {"pope_accuracy,none": acc, "pope_accuracy_stderr,none": "N/A",
                                                   "pope_f1_score,none": f1, "pope_f1_score_stderr,none": "N/A"}}});
        std::fs::write(d.join(format!("{date}_results.json")), res.to_string()).unwrap();
        std::fs::write(d.join(format!("{date}_samples_pope_pop.jsonl")), text).unwrap();
    }
    let r = build(
        &[
            (tmp.path().join("a"), "a".into()),
            (tmp.path().join("b"), "b".into()),
        ],
        None,
        &Options::default(),
    )
    .unwrap();
    for m in ["pope_accuracy", "pope_f1_score"] {
        let e = entry(&r.entries, "b", "pope_pop", m);
        assert_eq!(e.test, Some(Test::PairedBootstrap), "{m}");
        assert_eq!(e.n_paired, Some(40));
        let (va, vb) = (
            entry(&r.entries, "a", "pope_pop", m).value.unwrap(),
            e.value.unwrap(),
        );
        assert!((e.delta.unwrap() - (vb - va)).abs() < 1e-12, "{m}");
        assert!(e.p_value.unwrap() < 0.05, "{m}: {:?}", e.p_value);
    }
}

/// A GSM8K run under `--gsm8k-harness 0.4` reports lm-eval 0.4's `exact_match` per filter
/// instead of `acc`; the Retention block shows both filters next to the paper harness's `acc`.
#[test]
fn gsm8k_v04_exact_match_shows_in_the_retention_block() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("paper"), tmp.path().join("v04"));
    write_run(&a, "", "gsm8k", "acc", &bits(10, &[0, 1]), false);
    std::fs::create_dir_all(&b).unwrap();
    let results = json!({
        "results": {"gsm8k": {"alias": "gsm8k",
            "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
            "exact_match,flexible-extract": 0.375, "exact_match_stderr,flexible-extract": 0.1}},
        "group_subtasks": {},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 8}},
        "config": {"model": "sightline"},
        "date": 1_700_000_000.5,
    });
    std::fs::write(
        b.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
    let r = build(
        &[(a, "paper".into()), (b, "v04".into())],
        None,
        &Options::default(),
    )
    .unwrap();
    let e = entry(&r.entries, "v04", "gsm8k", "exact_match,flexible-extract");
    assert!((e.value.unwrap() - 0.375).abs() < 1e-12);
    let text = md(&r);
    let block = &text[text.find("## Retention").expect("a Retention block")..];
    let block = &block[..block[3..].find("\n## ").map_or(block.len(), |i| i + 3)];
    for col in [
        "GSM8K acc",
        "GSM8K (0.4) strict EM",
        "GSM8K (0.4) flexible EM",
    ] {
        assert!(block.contains(col), "{col} missing from:\n{block}");
    }
}
