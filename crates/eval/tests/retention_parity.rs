//! The retention tasks (issue 16) equal their references on the built-in stories260K model:
//! documents, few-shot examples and every metric.
//!
//! Fixture: `tests/fixtures/eval/retention_stories260k.json`, written by
//! `scripts/reference/make_retention_fixtures.py`: PyPI `lm_eval==0.3.0`'s own task classes and
//! evaluator (GSM8K with the paper commit's stop strings) answered by lm_eval 0.4.9.1 HFLM, and
//! the paper's `evaluate_mmlu.py` logic on transformers 4.46.3 (slow LlamaTokenizer, pandas).
//!
//! And the lm-eval 0.4 side: `tests/fixtures/eval/retention_v04_stories260k.json`, written by
//! `scripts/reference/make_retention_v04_fixtures.py`: lm_eval 0.4.9.1's own `gsm8k`, `boolq`
//! and `squadv2` through its `simple_evaluate`, for `--gsm8k-harness 0.4` and to show that BoolQ
//! and SQuAD2 need no such flag.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sightline_eval::data::DataSource;
use sightline_eval::evaluator::{evaluate, EvalOptions, TaskResult};
use sightline_eval::lm::{fit_prompt, CandleLm};
use sightline_eval::task::{Response, Task};
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
        chat_template: None,
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

fn golden_v04() -> Value {
    let p = root().join("tests/fixtures/eval/retention_v04_stories260k.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

/// `r`'s metrics equal lm-eval 0.4.9.1's `results[task]` entries (`name,filter` keys; a metric
/// without a filter in its name is `name,none`), values and stderrs, and no metric is missing.
fn check_metrics_v04(r: &TaskResult, want: &Value) {
    let wm = want["metrics"].as_object().unwrap();
    for m in &r.metrics {
        let (name, filter) = m.name.split_once(',').unwrap_or((m.name, "none"));
        let w = wm[&format!("{name},{filter}")].as_f64().unwrap();
        assert!(
            (m.value - w).abs() <= 1e-6,
            "{} {}: {} vs lm-eval 0.4.9.1 {w}",
            r.name,
            m.name,
            m.value
        );
        if let Some(ws) = wm[&format!("{name}_stderr,{filter}")].as_f64() {
            let s = m.stderr.expect("a mean metric has a stderr");
            assert!(
                (s - ws).abs() <= 1e-6,
                "{} {}_stderr: {s} vs {ws}",
                r.name,
                m.name
            );
        }
    }
    let n_ref = wm.keys().filter(|k| !k.contains("_stderr,")).count();
    assert_eq!(r.metrics.len(), n_ref, "{}: metric count", r.name);
}

/// `--gsm8k-harness 0.4`: lm-eval 0.4.9.1's own `gsm8k` (5-shot, seed-1234 sampler, its stops,
/// `exact_match` under `strict-match` and `flexible-extract`) on the same documents.
#[test]
fn gsm8k_v04_matches_lm_eval_0_4_9_1_on_stories260k() {
    let g = golden_v04();
    let want = &g["tasks"]["gsm8k"];
    let lm = model();
    let variants = tasks::Variants {
        gsm8k: tasks::gsm8k::Harness::V04,
    };
    let tasks = tasks::resolve_with("gsm8k", variants).unwrap();
    assert_eq!(
        tasks[0].num_fewshot() as u64,
        want["n_shot"].as_u64().unwrap()
    );
    let until: Vec<&str> = want["until"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(until, tasks::gsm8k::V04_UNTIL);
    let opts = EvalOptions {
        limit: Some(g["limit"].as_u64().unwrap() as usize),
        log_samples: true,
        ..Default::default()
    };
    let results = evaluate(&lm, &tasks, &opts, None, &mut |_, _, _| {}).unwrap();
    let r = &results[0];
    // lm-eval writes the YAML's `version: 3.0`.
    assert_eq!(f64::from(r.version), want["version"].as_f64().unwrap());
    // lm-eval evaluates the documents in index order; sightline in its shuffled order.
    let mut samples: Vec<&Value> = r.samples.iter().collect();
    samples.sort_by_key(|s| s["doc_id"].as_u64().unwrap());
    let doc_ids: Vec<usize> = samples
        .iter()
        .map(|s| s["doc_id"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(doc_ids, ids(&want["doc_ids"]), "documents");
    let shots: Vec<Vec<usize>> = samples
        .iter()
        .map(|s| ids(&s["doc"]["fewshot_ids"]))
        .collect();
    let want_shots: Vec<Vec<usize>> = want["fewshot_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    assert_eq!(shots, want_shots, "few-shot examples");
    for (k, s) in samples.iter().enumerate() {
        assert_eq!(
            s["resps"][0].as_str().unwrap(),
            want["responses"][k].as_str().unwrap(),
            "doc {}: generation",
            doc_ids[k]
        );
        assert_eq!(
            s["filtered_resps"][0], want["filtered"][k],
            "doc {}: filtered answers",
            doc_ids[k]
        );
    }
    check_metrics_v04(r, want);
}

/// The 0.4 `gsm8k` scoring on responses a story model never writes (numbers, signs, `$`,
/// commas, periods, case): both filters and `exact_match` equal lm_eval 0.4.9.1's own
/// `RegexFilter` and `exact_match_hf_evaluate` as `gsm8k.yaml` configures them.
#[test]
fn gsm8k_v04_scoring_matches_lm_eval_0_4_9_1_filters() {
    let g = golden_v04();
    let cases = g["gsm8k_scoring"].as_array().unwrap();
    let mut hits = 0.0;
    for c in cases {
        let response = c["response"].as_str().unwrap();
        let doc = serde_json::json!({"answer": c["gold"]});
        let got = tasks::gsm8k::Gsm8kV04
            .process_results(&doc, &[Response::Generated(response.to_string())])
            .unwrap();
        let extracted = tasks::gsm8k::Gsm8kV04
            .extracted(&doc, &[Response::Generated(response.to_string())])
            .unwrap();
        for (k, filter) in ["strict-match", "flexible-extract"].iter().enumerate() {
            assert_eq!(extracted[filter], c[filter], "{response:?}: {filter}");
            let want = c[format!("{filter}:exact_match")].as_f64().unwrap();
            assert_eq!(got[k], want, "{response:?}: exact_match under {filter}");
            hits += want;
        }
    }
    assert!(cases.len() >= 30 && hits >= 6.0);
}

/// BoolQ and SQuAD2 need no 0.4 flag: lm-eval 0.4.9.1's `boolq` (super_glue YAML) and
/// `squadv2` (task class) give sightline's numbers on the same documents.
#[test]
fn boolq_and_squad2_equal_lm_eval_0_4_9_1() {
    let g = golden_v04();
    let lm = model();
    let tasks = tasks::resolve("boolq,squad2").unwrap();
    let opts = EvalOptions {
        limit: Some(g["limit"].as_u64().unwrap() as usize),
        ..Default::default()
    };
    let results = evaluate(&lm, &tasks, &opts, None, &mut |_, _, _| {}).unwrap();
    for (r, key) in results.iter().zip(["boolq", "squadv2"]) {
        let want = &g["tasks"][key];
        let mut got = r.doc_ids.clone();
        got.sort_unstable();
        assert_eq!(got, ids(&want["doc_ids"]), "{key}: documents");
        check_metrics_v04(r, want);
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
        chat_template: None,
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
    let docs = mmlu::MMLU.docs(&DataSource::default()).unwrap();
    let prompts: Vec<(String, Vec<String>, String)> = docs
        .iter()
        .filter(|d| d["subject"] == "marketing")
        .take(6)
        .map(|d| {
            let shots = d["shots"].as_array().unwrap().iter();
            (
                d["header"].as_str().unwrap().to_string(),
                shots.map(|x| x.as_str().unwrap().to_string()).collect(),
                d["question"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let hits = prefix_cache_hits(model, &prompts);
    assert!(hits > 0, "no question reused the cached prefix");
}

/// The same with a byte-level BPE tokenizer (GPT-2's pre-tokenizer, as LLaMA 3 and SmolLM2
/// have), where the shots encoded alone end in one `\n\n` token that the whole prompt splits
/// into `\n`, `\n`: the cache must still be hit, since it holds the prompt's own first tokens.
/// Short prompts of one subject (one byte per token here, and stories260K has 512 positions).
#[test]
fn mmlu_prefix_cache_is_hit_with_a_byte_level_tokenizer() {
    let header = "The following are multiple choice questions (with answers) about  marketing.\n\n";
    let shot =
        |q: &str, a: &str| format!("{q}\nA. yes\nB. no\nC. both\nD. neither\nAnswer: {a}\n\n");
    let shots = vec![
        shot("Is a brand a promise?", "A"),
        shot("Is price a place?", "B"),
    ];
    let prompts: Vec<(String, Vec<String>, String)> = [
        "Is a logo a brand?",
        "What is 4P?",
        " Why sell?",
        "2 + 2?",
        "Who buys?",
        "Is ads marketing?",
    ]
    .iter()
    .map(|q| {
        (
            header.to_string(),
            shots.clone(),
            format!("{q}\nA. a\nB. b\nC. c\nD. d\nAnswer:"),
        )
    })
    .collect();
    // Six questions, one prefix: the first fills it, the other five reuse it.
    assert_eq!(prefix_cache_hits(byte_level_model, &prompts), 5);
}

/// Runs each prompt through one model (sharing its prefix cache) and through a fresh one,
/// asserts the answers are equal, and returns the shared model's cache hits.
fn prefix_cache_hits(make: fn() -> CandleLm, prompts: &[(String, Vec<String>, String)]) -> usize {
    use sightline_eval::lm::LanguageModel;
    let shared = make();
    for (h, shots, q) in prompts {
        let a = shared.generate_fit(h, shots, q, 500, 2).unwrap();
        let b = make().generate_fit(h, shots, q, 500, 2).unwrap();
        assert_eq!(a, b, "{q}");
    }
    shared
        .prefix_cache
        .hits
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// stories260K with a byte-level BPE tokenizer of 258 tokens: the 256 bytes in GPT-2's
/// printable mapping, one merge (`\n\n`, the one that matters here) and a BOS.
fn byte_level_model() -> CandleLm {
    let mut lm = model();
    let vocab: serde_json::Map<String, Value> = gpt2_byte_chars()
        .into_iter()
        .map(String::from)
        .chain(["ĊĊ".to_string()])
        .enumerate()
        .map(|(i, c)| (c, Value::from(i)))
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
        "added_tokens": [{"id": 257, "content": "<s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab, "merges": ["Ċ Ċ"]},
    });
    let config = br#"{"bos_token": "<s>"}"#;
    lm.loaded.tokenizer = sightline_model::Tokenizer::from_bytes(
        json.to_string().as_bytes(),
        Some(config),
        PathBuf::from("byte-level/tokenizer.json"),
        None,
        None,
    )
    .unwrap();
    lm
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the others for the
/// code points from U+0100 on, in byte order.
fn gpt2_byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 0x100;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}
