//! Every task's metrics equal lm-evaluation-harness's on the built-in stories260K model.
//!
//! Fixture: `tests/fixtures/eval/stories260k.json`, written by
//! `scripts/reference/make_eval_fixtures.py` (lm_eval 0.4.9.1 HFLM for log-likelihoods and
//! generations, the 0.3-era task rules, sacrebleu 1.5.0, rouge_score 0.1.2, CPython `random`).

use std::path::Path;

use serde_json::Value;
use sightline_eval::evaluator::{evaluate, EvalOptions};
use sightline_eval::lm::CandleLm;
use sightline_eval::tasks;
use sightline_model::score::ScoreOptions;
use sightline_model::{load, LoadOptions};

fn golden() -> Value {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eval/stories260k.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

#[test]
fn all_tasks_match_the_harness_on_stories260k() {
    let g = golden();
    let limit = g["limit"].as_u64().unwrap() as usize;
    let lm = CandleLm {
        loaded: load("builtin:stories260k", &LoadOptions::default()).unwrap(),
        score: ScoreOptions {
            batch_size: 16,
            ..Default::default()
        },
        max_gen_toks: 256,
        tag: String::new(),
        prefix_cache: Default::default(),
        chat_template: None,
    };
    let tasks = tasks::resolve("truthfulqa,ethics").unwrap();
    let opts = EvalOptions {
        limit: Some(limit),
        ..Default::default()
    };
    let results = evaluate(&lm, &tasks, &opts, None, &mut |_, _, _| {}).unwrap();
    assert_eq!(results.len(), 8);
    for r in &results {
        let want = &g["tasks"][r.name];
        // --limit takes the same documents as the harness's seed-42 shuffle.
        let ids: Vec<usize> = want["doc_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(r.doc_ids, ids, "{}: documents", r.name);
        for m in &r.metrics {
            let w = want["metrics"][m.name]
                .as_f64()
                .unwrap_or_else(|| panic!("{} {} in fixture", r.name, m.name));
            assert!(
                (m.value - w).abs() <= 1e-6,
                "{} {}: {} vs harness {}",
                r.name,
                m.name,
                m.value,
                w
            );
            if let (Some(s), Some(ws)) = (
                m.stderr,
                want["metrics"][format!("{}_stderr", m.name)].as_f64(),
            ) {
                assert!(
                    (s - ws).abs() <= 1e-6,
                    "{} {}_stderr: {s} vs {ws}",
                    r.name,
                    m.name
                );
            }
        }
        assert_eq!(
            r.metrics.len(),
            want["metrics"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !k.ends_with("_stderr"))
                .count()
        );
    }
}

#[test]
fn first_requests_loglikelihoods_match_the_harness() {
    let g = golden();
    let m = load("builtin:stories260k", &LoadOptions::default()).unwrap();
    for (task, t) in g["tasks"].as_object().unwrap() {
        for s in t["samples"].as_array().unwrap() {
            let Some(want) = s["logprob"].as_f64() else {
                continue;
            };
            let req = sightline_model::score::Request {
                context: s["context"].as_str().unwrap().into(),
                continuation: s["continuation"].as_str().unwrap().into(),
            };
            let got = sightline_model::score::score(
                &m.model,
                &m.tokenizer,
                &[req],
                &ScoreOptions::default(),
                &mut |_, _| {},
            )
            .unwrap();
            assert!(
                (got[0].logprob - want).abs() / want.abs().max(1.0) < 1e-4,
                "{task}: {} vs {want}",
                got[0].logprob
            );
            assert_eq!(
                got[0].is_greedy,
                s["is_greedy"].as_bool().unwrap(),
                "{task}"
            );
        }
    }
}
