//! The retention tasks (issue 16) equal their references on the built-in stories260K model:
//! documents, few-shot examples and every metric.
//!
//! Fixture: `tests/fixtures/eval/retention_stories260k.json`, written by
//! `scripts/reference/make_retention_fixtures.py`: PyPI `lm_eval==0.3.0`'s own task classes and
//! evaluator (GSM8K with the paper commit's stop strings) answered by lm_eval 0.4.9.1 HFLM, and
//! the paper's `evaluate_mmlu.py` logic on transformers 4.46.3 (slow LlamaTokenizer, pandas).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sightline_eval::data::DataSource;
use sightline_eval::evaluator::{evaluate, EvalOptions, TaskResult};
use sightline_eval::lm::{fit_prompt, CandleLm};
use sightline_eval::task::Task;
use sightline_eval::tasks::{self, mmlu};
use sightline_model::score::ScoreOptions;
use sightline_model::{load, LoadOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> Value {
    let p = root().join("tests/fixtures/eval/retention_stories260k.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

fn model() -> CandleLm {
    CandleLm {
        loaded: load("builtin:stories260k", &LoadOptions::default()).unwrap(),
        score: ScoreOptions {
            batch_size: 16,
            ..Default::default()
        },
        max_gen_toks: 256,
        tag: String::new(),
        prefix_cache: Default::default(),
    }
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Every metric (and mean-stderr) of `r` equals the fixture; `null` in the fixture is a group
/// with no documents (NaN here).
fn check_metrics(r: &TaskResult, want: &Value) {
    let wm = &want["metrics"];
    for m in &r.metrics {
        match wm[m.name].as_f64() {
            Some(w) => assert!(
                (m.value - w).abs() <= 1e-6,
                "{} {}: {} vs reference {w}",
                r.name,
                m.name,
                m.value
            ),
            None => {
                assert!(
                    wm[m.name].is_null(),
                    "{} {} missing in fixture",
                    r.name,
                    m.name
                );
                assert!(
                    m.value.is_nan(),
                    "{} {}: {} vs no documents",
                    r.name,
                    m.name,
                    m.value
                );
            }
        }
        if let (Some(s), Some(ws)) = (m.stderr, wm[format!("{}_stderr", m.name)].as_f64()) {
            assert!(
                (s - ws).abs() <= 1e-6,
                "{} {}_stderr: {s} vs {ws}",
                r.name,
                m.name
            );
        }
    }
    let n_ref = wm
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.ends_with("_stderr"))
        .count();
    assert_eq!(r.metrics.len(), n_ref, "{}: metric count", r.name);
}

#[test]
fn harness_tasks_match_lm_eval_0_3_on_stories260k() {
    let g = golden();
    let lm = model();
    let tasks = tasks::resolve("gsm8k,mathqa,mathqa_0shot,boolq,squad2").unwrap();
    let opts = EvalOptions {
        limit: Some(g["limit"].as_u64().unwrap() as usize),
        log_samples: true,
        data: DataSource {
            mathqa_train: Some(root().join("tests/fixtures/retention/mathqa_train_sample.json")),
            ..Default::default()
        },
        ..Default::default()
    };
    let results = evaluate(&lm, &tasks, &opts, None, &mut |_, _, _| {}).unwrap();
    assert_eq!(results.len(), 5);
    for r in &results {
        let want = &g["tasks"][r.name];
        assert_eq!(r.doc_ids, ids(&want["doc_ids"]), "{}: documents", r.name);
        if let Some(shots) = want["fewshot_ids"].as_array() {
            let got: Vec<Vec<usize>> = r
                .samples
                .iter()
                .map(|s| ids(&s["doc"]["fewshot_ids"]))
                .collect();
            let want: Vec<Vec<usize>> = shots.iter().map(ids).collect();
            assert_eq!(got, want, "{}: few-shot examples", r.name);
        }
        check_metrics(r, want);
    }
}

/// stories260K with a rotary table of 2,048 positions: transformers computes rotary angles for
/// any position, so the reference generates past the model's 512 when a question alone is
/// longer than the (lowered) fit; sightline's table stops at `max_position_embeddings`, so the
/// test widens it. Log-likelihoods keep the harness's `max_length` of 512.
fn model_with_2048_positions() -> (tempfile::TempDir, CandleLm) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stories260k-2048");
    let src = root().join("data/models/stories260k");
    sightline_model::llama2c::convert_to_dir(
        &src.join("stories260K.bin"),
        &src.join("tok512.bin"),
        &dir,
    )
    .unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["max_position_embeddings"], 512);
    cfg["max_position_embeddings"] = 2048.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let lm = CandleLm {
        loaded: load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap(),
        score: ScoreOptions {
            batch_size: 16,
            max_length: Some(512),
            ..Default::default()
        },
        max_gen_toks: 256,
        tag: String::new(),
        prefix_cache: Default::default(),
    };
    (tmp, lm)
}

#[test]
fn mmlu_matches_the_papers_script_on_stories260k() {
    let g = golden();
    let (_dir, lm) = model_with_2048_positions();
    let fit = g["tasks"]["mmlu"]["fit_tokens"].as_u64().unwrap() as usize;
    let tasks: Vec<Box<dyn Task>> = vec![
        Box::new(mmlu::Mmlu { fit_tokens: fit }),
        Box::new(mmlu::MmluLoglik),
    ];
    let opts = EvalOptions {
        limit: Some(g["mmlu_limit"].as_u64().unwrap() as usize),
        log_samples: true,
        ..Default::default()
    };
    let results = evaluate(&lm, &tasks, &opts, None, &mut |_, _, _| {}).unwrap();
    // The generated text and the number of shots that fit, question by question.
    let want = &g["tasks"]["mmlu"];
    let tok = &lm.loaded.tokenizer;
    for (n, s) in results[0].samples.iter().enumerate() {
        assert_eq!(s["resps"][0], want["preds"][n], "mmlu doc {n}: generation");
        let d = &s["doc"];
        let shots: Vec<String> = d["shots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        let (h, q) = (
            d["header"].as_str().unwrap(),
            d["question"].as_str().unwrap(),
        );
        let (got, _) = fit_prompt(tok, h, &shots, q, fit).unwrap();
        let k = (0..=5)
            .find(|&k| {
                let mut ids = vec![tok.bos_id.unwrap()];
                ids.extend(
                    tok.encode(&format!("{h}{}{q}", shots[..k].concat()))
                        .unwrap(),
                );
                ids == got
            })
            .unwrap();
        assert_eq!(
            k as u64,
            want["ks"][n].as_u64().unwrap(),
            "mmlu doc {n}: shots kept"
        );
    }
    for r in &results {
        let want = &g["tasks"][r.name];
        assert_eq!(r.doc_ids, ids(&want["doc_ids"]), "{}: documents", r.name);
        check_metrics(r, want);
    }
}

/// The MMLU prefix cache (a subject's header and shots run once) changes no answer: the
/// questions of one subject through one model (cache hits) equal each through a fresh one.
#[test]
fn mmlu_prefix_cache_changes_no_answer() {
    use sightline_eval::lm::LanguageModel;
    let docs = mmlu::MMLU.docs(&DataSource::default()).unwrap();
    let shared = model();
    let mut texts = Vec::new();
    for d in docs.iter().filter(|d| d["subject"] == "marketing").take(6) {
        let shots: Vec<String> = d["shots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        let (h, q) = (
            d["header"].as_str().unwrap(),
            d["question"].as_str().unwrap(),
        );
        let a = shared.generate_fit(h, &shots, q, 500, 2).unwrap();
        let b = model().generate_fit(h, &shots, q, 500, 2).unwrap();
        assert_eq!(a, b, "{q}");
        texts.push(a);
    }
    assert!(
        shared
            .prefix_cache
            .hits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "no question reused the cached prefix"
    );
}
