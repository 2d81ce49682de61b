//! Parity with transformers 4.46.3 + lm-eval 0.4.9.1 on tiny random LLaMA checkpoints.
//!
//! Fixtures: `tests/fixtures/llama/`, written by `scripts/reference/make_llama_fixtures.py`
//! (see its docstring for what each file holds and which library produced it).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sightline_model::generate::{generate_ids, GenerateOptions};
use sightline_model::score::{encode_request, score, Request, ScoreOptions, Scored};
use sightline_model::{load, LoadOptions, LoadedModel, Tokenizer};

const MODELS: &[&str] = &["tiny-mha-tied", "tiny-gqa-untied", "tiny-llama3-bin"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llama")
}

#[derive(Deserialize)]
struct Encoded {
    context: Vec<u32>,
    continuation: Vec<u32>,
}

#[derive(Deserialize)]
struct LogitProbe {
    ids: Vec<u32>,
    positions: Vec<usize>,
    rows: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Generated {
    prompt: String,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
}

#[derive(Deserialize)]
struct Golden {
    max_length: usize,
    requests: Vec<Request>,
    encoded: Vec<Encoded>,
    results: Vec<Scored>,
    logits: Vec<LogitProbe>,
    generations: Vec<Generated>,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    fast: Vec<u32>,
}

#[derive(Deserialize)]
struct Tokenization {
    strings: Vec<TokCase>,
}

fn golden(model: &str) -> Golden {
    let text =
        std::fs::read_to_string(fixtures().join(model).join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

fn open(model: &str) -> LoadedModel {
    let dir = fixtures().join(model);
    load(dir.to_str().expect("utf-8 path"), &LoadOptions::default()).expect("fixture loads")
}

fn assert_ids(tok: &Tokenizer, who: &str) {
    let text =
        std::fs::read_to_string(fixtures().join("tokenization.json")).expect("tokenization.json");
    let cases: Tokenization = serde_json::from_str(&text).expect("parses");
    assert!(cases.strings.len() >= 25);
    for c in &cases.strings {
        assert_eq!(
            tok.encode(&c.text).unwrap(),
            c.fast,
            "{who}: ids of {:?}",
            c.text
        );
    }
}

#[test]
fn fixture_tokenizer_ids_equal_transformers_fast_tokenizer() {
    assert_ids(&open("tiny-mha-tied").tokenizer, "fixture tokenizer.json");
}

#[test]
fn converted_llama2c_tokenizer_ids_equal_transformers_conversion() {
    // The built-in model's tokenizer is sightline's own conversion of tok512.bin; the fixture's
    // comes from SentencePiece + transformers' converter. Same ids on every tricky string.
    let m = load("builtin:stories260k", &LoadOptions::default()).unwrap();
    assert_ids(&m.tokenizer, "builtin:stories260k");
}

#[test]
fn request_encoding_equals_lm_eval_encode_pair() {
    for name in MODELS {
        let m = open(name);
        let g = golden(name);
        for (r, e) in g.requests.iter().zip(&g.encoded) {
            let enc = encode_request(&m.tokenizer, r, &ScoreOptions::default()).unwrap();
            assert_eq!(enc.context, e.context, "{name}: context ids of {r:?}");
            assert_eq!(
                enc.continuation, e.continuation,
                "{name}: continuation ids of {r:?}"
            );
        }
    }
}

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        let m = open(name);
        for probe in golden(name).logits {
            let ids = candle_core::Tensor::new(probe.ids.as_slice(), m.model.device())
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = m.model.forward(&ids, None).unwrap().squeeze(0).unwrap();
            let mut worst = 0f32;
            for (pos, want) in probe.positions.iter().zip(&probe.rows) {
                let got: Vec<f32> = logits.get(*pos).unwrap().to_vec1().unwrap();
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(want) {
                    worst = worst.max((a - b).abs());
                }
            }
            assert!(
                worst < 1e-4,
                "{name}: max |logit diff| {worst:e} over {} ids",
                probe.ids.len()
            );
        }
    }
}

fn check_scores(name: &str, got: &[Scored], want: &[Scored], requests: &[Request], what: &str) {
    assert_eq!(got.len(), want.len());
    for ((g, w), r) in got.iter().zip(want).zip(requests) {
        let rel = (g.logprob - w.logprob).abs() / w.logprob.abs().max(1.0);
        assert!(
            rel < 1e-4,
            "{name} {what}: {r:?}: logprob {} vs lm-eval {}",
            g.logprob,
            w.logprob
        );
        assert_eq!(
            g.is_greedy, w.is_greedy,
            "{name} {what}: is_greedy of {r:?}"
        );
    }
}

#[test]
fn loglikelihoods_match_lm_eval_for_every_batch_size_and_path() {
    for name in MODELS {
        let m = open(name);
        let g = golden(name);
        assert_eq!(g.max_length, m.model.config.max_position_embeddings);
        let mut baseline: Option<Vec<Scored>> = None;
        for batch_size in [1, 3, 8] {
            for shared_prefix in [false, true] {
                let opts = ScoreOptions {
                    batch_size,
                    shared_prefix,
                    ..Default::default()
                };
                let got =
                    score(&m.model, &m.tokenizer, &g.requests, &opts, &mut |_, _| {}).unwrap();
                let what = format!("batch {batch_size}, shared_prefix {shared_prefix}");
                check_scores(name, &got, &g.results, &g.requests, &what);
                match &baseline {
                    None => baseline = Some(got),
                    Some(base) => {
                        // 1e-5 relative (absolute below |ll| = 1): a 28-token sum of f32 log-probs
                        // carries ~1e-7 relative rounding whatever the batch shape.
                        for (a, b) in got.iter().zip(base) {
                            let tol = 1e-5 * b.logprob.abs().max(1.0);
                            assert!(
                                (a.logprob - b.logprob).abs() <= tol,
                                "{name} {what}: {} vs {}",
                                a.logprob,
                                b.logprob
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_generate() {
    for name in MODELS {
        let m = open(name);
        for gen in golden(name).generations {
            assert_eq!(
                m.tokenizer.encode_prompt(&gen.prompt).unwrap(),
                gen.prompt_ids,
                "{name}: prompt ids"
            );
            let opts = GenerateOptions {
                max_new_tokens: gen.tokens.len().max(24),
                ..Default::default()
            };
            let out = generate_ids(&m.model, &m.tokenizer, &gen.prompt_ids, &opts).unwrap();
            assert_eq!(
                out.tokens, gen.tokens,
                "{name}: tokens after {:?}",
                gen.prompt
            );
            assert_eq!(out.text, gen.text, "{name}: text after {:?}", gen.prompt);
        }
    }
}
