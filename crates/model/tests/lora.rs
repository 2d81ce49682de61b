//! LoRA adapters applied unmerged: parity with PEFT 0.21.2 (`PeftModel.from_pretrained`) and
//! lm-eval 0.4.9.1 `HFLM(peft=...)` on the tiny GQA fixture, and one-line errors for broken
//! adapters.
//!
//! Fixtures: `tests/fixtures/lora/`, written by `scripts/reference/make_lora_fixtures.py` on top
//! of `tests/fixtures/llama/tiny-gqa-untied` (see its docstring for what each adapter exercises).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use sightline_model::score::{score, Request, ScoreOptions, Scored};
use sightline_model::{load, LoadOptions, LoadedModel};

/// (adapter directory, what it exercises).
const ADAPTERS: &[(&str, &str)] = &[
    (
        "tiny-gqa-untied-lora-r4",
        "r=4 on all seven projections, safetensors",
    ),
    (
        "tiny-gqa-untied-rslora-r2",
        "use_rslora, r=2 on q/v, adapter_model.bin",
    ),
    (
        "tiny-gqa-untied-lora-pattern",
        "rank_pattern, alpha_pattern, layers_to_transform",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn base_dir() -> PathBuf {
    root().join("llama/tiny-gqa-untied")
}

fn adapter_dir(name: &str) -> PathBuf {
    root().join("lora").join(name)
}

#[derive(Deserialize)]
struct LogitProbe {
    ids: Vec<u32>,
    positions: Vec<usize>,
    rows: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Golden {
    base: String,
    requests: Vec<Request>,
    results: Vec<Scored>,
    logits: Vec<LogitProbe>,
}

fn golden(name: &str) -> Golden {
    let text = std::fs::read_to_string(adapter_dir(name).join("golden.json")).expect("golden");
    serde_json::from_str(&text).expect("golden.json parses")
}

fn open(adapter: Option<PathBuf>) -> sightline_model::Result<LoadedModel> {
    let opts = LoadOptions {
        adapter,
        ..Default::default()
    };
    load(base_dir().to_str().expect("utf-8 path"), &opts)
}

/// Logits rows at `positions` of one probe.
fn rows(m: &LoadedModel, probe: &LogitProbe) -> Vec<Vec<f32>> {
    let ids = Tensor::new(probe.ids.as_slice(), m.model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = m.model.forward(&ids, None).unwrap().squeeze(0).unwrap();
    probe
        .positions
        .iter()
        .map(|&p| logits.get(p).unwrap().to_vec1().unwrap())
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        for (u, v) in x.iter().zip(y) {
            worst = worst.max((u - v).abs());
        }
    }
    worst
}

#[test]
fn logits_match_peft_unmerged() {
    for (name, what) in ADAPTERS {
        let g = golden(name);
        assert_eq!(g.base, "tests/fixtures/llama/tiny-gqa-untied");
        let m = open(Some(adapter_dir(name))).expect("adapter loads");
        let base = open(None).unwrap();
        for probe in &g.logits {
            let got = rows(&m, probe);
            let worst = max_abs_diff(&got, &probe.rows);
            eprintln!(
                "{name}: max |logit - PEFT| {worst:e} over {} ids",
                probe.ids.len()
            );
            assert!(
                worst < 1e-4,
                "{name} ({what}): max |logit diff| {worst:e} over {} ids",
                probe.ids.len()
            );
            // The adapter must matter, or the comparison above proves nothing.
            let moved = max_abs_diff(&rows(&base, probe), &probe.rows);
            assert!(
                moved > 0.5,
                "{name}: PEFT's logits are within {moved} of the base model's"
            );
        }
    }
}

#[test]
fn loglikelihoods_match_lm_eval_peft() {
    for (name, what) in ADAPTERS {
        let g = golden(name);
        let m = open(Some(adapter_dir(name))).unwrap();
        let base = open(None).unwrap();
        let base_scores = score(
            &base.model,
            &base.tokenizer,
            &g.requests,
            &ScoreOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        let mut worst = 0f64;
        for batch_size in [1, 4] {
            for shared_prefix in [false, true] {
                let opts = ScoreOptions {
                    batch_size,
                    shared_prefix,
                    ..Default::default()
                };
                let got =
                    score(&m.model, &m.tokenizer, &g.requests, &opts, &mut |_, _| {}).unwrap();
                assert_eq!(got.len(), g.results.len());
                for ((s, w), r) in got.iter().zip(&g.results).zip(&g.requests) {
                    let rel = (s.logprob - w.logprob).abs() / w.logprob.abs().max(1.0);
                    worst = worst.max(rel);
                    assert!(
                        rel < 1e-4,
                        "{name} ({what}), batch {batch_size}, shared_prefix {shared_prefix}: \
                         {r:?}: logprob {} vs lm-eval {}",
                        s.logprob,
                        w.logprob
                    );
                    assert_eq!(s.is_greedy, w.is_greedy, "{name}: is_greedy of {r:?}");
                }
            }
        }
        eprintln!("{name}: max relative log-likelihood difference vs lm-eval {worst:e}");
        let changed = base_scores
            .iter()
            .zip(&g.results)
            .filter(|(b, w)| (b.logprob - w.logprob).abs() > 1e-2)
            .count();
        assert!(
            changed * 2 > g.results.len(),
            "{name}: the adapter changes only {changed} of {} log-likelihoods",
            g.results.len()
        );
    }
}

/// Copies an adapter into a temp dir, letting `edit` change its tensors and config first.
fn edited_adapter(
    name: &str,
    edit_tensors: impl FnOnce(&mut HashMap<String, Tensor>),
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let src = adapter_dir(name);
    let dir = tempfile::tempdir().unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    edit_tensors(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    edit_config(&mut cfg);
    std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn adapter_name_infix_in_keys_is_accepted() {
    // Some PEFT versions save `lora_A.default.weight`; the numbers must not change.
    let dir = edited_adapter(
        "tiny-gqa-untied-lora-r4",
        |t| {
            *t = t
                .drain()
                .map(|(k, v)| (k.replace(".weight", ".default.weight"), v))
                .collect();
        },
        |_| {},
    );
    let g = golden("tiny-gqa-untied-lora-r4");
    let m = open(Some(dir.path().to_path_buf())).unwrap();
    let worst = max_abs_diff(&rows(&m, &g.logits[0]), &g.logits[0].rows);
    assert!(worst < 1e-4, "{worst}");
}

/// The error message of loading the base fixture with `adapter`.
fn load_error(adapter: &Path) -> String {
    match open(Some(adapter.to_path_buf())) {
        Ok(_) => panic!("{} loaded", adapter.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "not one line: {msg}");
            msg
        }
    }
}

const Q0_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q1_B: &str = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";

#[test]
fn missing_lora_b_is_named() {
    let dir = edited_adapter(
        "tiny-gqa-untied-lora-r4",
        |t| {
            t.remove(Q1_B);
        },
        |_| {},
    );
    let msg = load_error(dir.path());
    assert!(
        msg.contains("adapter_model.safetensors") && msg.contains(Q1_B) && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn wrong_rank_shape_is_named() {
    let dir = edited_adapter(
        "tiny-gqa-untied-lora-r4",
        |t| {
            t.insert(
                Q0_A.to_string(),
                Tensor::zeros((5, 64), DType::F32, &Device::Cpu).unwrap(),
            );
        },
        |_| {},
    );
    let msg = load_error(dir.path());
    assert!(
        msg.contains("adapter_model.safetensors")
            && msg.contains(Q0_A)
            && msg.contains("[5, 64]")
            && msg.contains("[4, 64]"),
        "{msg}"
    );
}

#[test]
fn unknown_target_module_is_named() {
    let dir = edited_adapter(
        "tiny-gqa-untied-lora-r4",
        |_| {},
        |c| c["target_modules"] = serde_json::json!(["q_proj", "qkv_proj"]),
    );
    let msg = load_error(dir.path());
    assert!(
        msg.contains("adapter_config.json") && msg.contains("qkv_proj"),
        "{msg}"
    );
}

#[test]
fn tensor_for_a_module_the_model_lacks_is_named() {
    // A layer the 3-layer model does not have: an adapter for a bigger model.
    let key = "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight";
    let dir = edited_adapter(
        "tiny-gqa-untied-lora-r4",
        |t| {
            let a = t[Q0_A].clone();
            t.insert(key.to_string(), a);
        },
        |_| {},
    );
    let msg = load_error(dir.path());
    assert!(
        msg.contains("adapter_model.safetensors")
            && msg.contains(key)
            && msg.contains("matches no module"),
        "{msg}"
    );
}

#[test]
fn tensor_for_an_untargeted_module_is_named() {
    let dir = edited_adapter(
        "tiny-gqa-untied-lora-r4",
        |_| {},
        |c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj"]),
    );
    let msg = load_error(dir.path());
    assert!(
        msg.contains("adapter_model.safetensors")
            && msg.contains("k_proj.lora_A.weight")
            && msg.contains("does not target"),
        "{msg}"
    );
}

#[test]
fn dora_is_refused_naming_the_config() {
    let dir = edited_adapter(
        "tiny-gqa-untied-lora-r4",
        |_| {},
        |c| c["use_dora"] = serde_json::json!(true),
    );
    let msg = load_error(dir.path());
    assert!(
        msg.contains("adapter_config.json") && msg.contains("use_dora"),
        "{msg}"
    );
}

#[test]
fn directory_without_adapter_files_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("adapter_config.json"), "{msg}");
    std::fs::copy(
        adapter_dir("tiny-gqa-untied-lora-r4").join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("adapter_model.safetensors"), "{msg}");
    std::fs::write(dir.path().join("adapter_model.safetensors"), b"truncated").unwrap();
    let msg = load_error(dir.path());
    assert!(
        msg.contains("adapter_model.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
}

#[test]
fn builtin_model_takes_an_adapter() {
    let base = load("builtin:stories260k", &LoadOptions::default()).unwrap();
    let cfg = base.model.config.clone();
    let (hs, is) = (cfg.hidden_size, cfg.intermediate_size);
    let write = |b_scale: f64| {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        for i in 0..cfg.num_hidden_layers {
            for (module, out_dim, in_dim) in [
                (
                    "self_attn.q_proj",
                    cfg.num_attention_heads * cfg.head_dim(),
                    hs,
                ),
                ("mlp.down_proj", hs, is),
            ] {
                let p = format!("base_model.model.model.layers.{i}.{module}");
                let a = Tensor::randn(0f32, 0.3, (2, in_dim), &dev).unwrap();
                let b = (Tensor::randn(0f32, 0.3, (out_dim, 2), &dev).unwrap() * b_scale).unwrap();
                t.insert(format!("{p}.lora_A.weight"), a);
                t.insert(format!("{p}.lora_B.weight"), b);
            }
        }
        candle_core::safetensors::save(&t, dir.path().join("adapter_model.safetensors")).unwrap();
        let cfg = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
            "target_modules": ["q_proj", "down_proj"], "base_model_name_or_path": "builtin"});
        std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).unwrap();
        dir
    };
    let logits = |adapter: Option<&Path>| -> Vec<f32> {
        let opts = LoadOptions {
            adapter: adapter.map(Path::to_path_buf),
            ..Default::default()
        };
        let m = load("builtin:stories260k", &opts).unwrap();
        let ids = m.tokenizer.encode("Once upon a time").unwrap();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.model
            .forward_last(&ids, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let plain = logits(None);
    // B = 0 (PEFT's init) is the identity, bit for bit.
    let zero = write(0.0);
    assert_eq!(logits(Some(zero.path())), plain);
    let live = write(1.0);
    let moved = max_abs_diff(&[logits(Some(live.path()))], &[plain]);
    assert!(moved > 1e-2, "the adapter moved the logits by only {moved}");
    // The tiny-gqa-untied adapter does not fit stories260k: a named tensor, not a panic.
    let opts = LoadOptions {
        adapter: Some(adapter_dir("tiny-gqa-untied-lora-r4")),
        ..Default::default()
    };
    let msg = load("builtin:stories260k", &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("adapter_model.safetensors") && msg.contains("base_model.model.model.layers."),
        "{msg}"
    );
}
