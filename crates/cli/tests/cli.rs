//! End-to-end tests of the `sightline` binary: the built-in model's test vector, scoring
//! against lm-eval goldens, llama2.c conversion, and the one-line errors a new user sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// llama2.c `test_all.py` `expected_stdout` for stories260K (greedy, 200 steps from BOS).
const STORY: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\nLily didn't want to help her mom, so she";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/llama").join(name)
}

fn sightline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn builtin_greedy_story_is_the_llama2c_test_vector() {
    let o = sightline(&[
        "generate",
        "--model",
        "builtin:stories260k",
        "--prompt",
        "",
        "--max-new-tokens",
        "200",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{STORY}\n"));
    assert_eq!(STORY.len(), 464);
}

#[test]
fn generate_defaults_to_builtin_and_stops_at_stop_string() {
    let o = sightline(&[
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "60",
        "--stop",
        ".",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The story's first sentence after the prompt, cut before the first ".".
    assert_eq!(stdout(&o), ", there was a little girl named Lily\n");
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let run = |seed: &str| {
        stdout(&sightline(&[
            "generate",
            "--prompt",
            "Lily",
            "--max-new-tokens",
            "30",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ]))
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn score_cli_matches_lm_eval_goldens() {
    for name in ["tiny-mha-tied", "tiny-llama3-bin"] {
        let dir = fixture(name);
        let o = sightline(&[
            "score",
            "--model",
            dir.to_str().unwrap(),
            "--requests",
            dir.join("requests.jsonl").to_str().unwrap(),
            "--batch-size",
            "5",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        let want = golden["results"].as_array().unwrap();
        let got: Vec<serde_json::Value> = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        // The summary line times scoring apart from loading, as lm-eval times loglikelihood.
        let summary = format!("scored {} requests in ", want.len());
        assert!(stderr(&o).contains(&summary), "{}", stderr(&o));
        for (g, w) in got.iter().zip(want) {
            let (g_lp, w_lp) = (
                g["logprob"].as_f64().unwrap(),
                w["logprob"].as_f64().unwrap(),
            );
            assert!(
                (g_lp - w_lp).abs() / w_lp.abs().max(1.0) < 1e-4,
                "{name}: {g_lp} vs {w_lp}"
            );
            assert_eq!(g["is_greedy"], w["is_greedy"]);
        }
    }
}

#[test]
fn converted_llama2c_directory_tells_the_same_story() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stories260k-hf");
    let data = root().join("data/models/stories260k");
    let o = sightline(&[
        "convert",
        "llama2c",
        data.join("stories260K.bin").to_str().unwrap(),
        data.join("tok512.bin").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let o = sightline(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "200",
    ]);
    assert_eq!(stdout(&o), format!("{STORY}\n"), "{}", stderr(&o));
    // A second conversion must not replace what is there.
    let again = sightline(&[
        "convert",
        "llama2c",
        data.join("stories260K.bin").to_str().unwrap(),
        data.join("tok512.bin").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists"));
}

/// Asserts a clean failure: exit code 1, one `error:` line naming every `needle`, no panic.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

/// A writable copy of a fixture checkpoint.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (tmp, dst)
}

fn score_with(dir: &Path) -> Output {
    sightline(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--requests",
        fixture("tiny-mha-tied")
            .join("requests.jsonl")
            .to_str()
            .unwrap(),
    ])
}

fn rewrite_safetensors(
    dir: &Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_fixture("tiny-mha-tied");
    rewrite_safetensors(&dir, |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    assert_one_line_error(
        &score_with(&dir),
        &[
            "model.safetensors",
            "model.layers.1.mlp.up_proj.weight",
            "missing",
        ],
    );
}

#[test]
fn wrong_shape_is_named() {
    let (_t, dir) = copy_fixture("tiny-mha-tied");
    rewrite_safetensors(&dir, |t| {
        let w = candle_core::Tensor::zeros(
            (32, 64),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        t.insert("model.layers.0.self_attn.k_proj.weight".into(), w);
    });
    assert_one_line_error(
        &score_with(&dir),
        &[
            "model.safetensors",
            "model.layers.0.self_attn.k_proj.weight",
            "[32, 64]",
            "[64, 64]",
        ],
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let (_t, dir) = copy_fixture("tiny-mha-tied");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &score_with(&dir),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn missing_shard_and_tokenizer_are_named() {
    let (_t, dir) = copy_fixture("tiny-gqa-untied");
    std::fs::remove_file(dir.join("model-00003-of-00005.safetensors")).unwrap();
    assert_one_line_error(
        &score_with(&dir),
        &[
            "model.safetensors.index.json",
            "model-00003-of-00005.safetensors",
        ],
    );
    let (_t, dir) = copy_fixture("tiny-mha-tied");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_one_line_error(&score_with(&dir), &["tokenizer.json"]);
}

#[test]
fn foreign_architecture_and_small_vocab_are_refused() {
    let (_t, dir) = copy_fixture("tiny-mha-tied");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_one_line_error(&score_with(&dir), &["config.json", "GPT2LMHeadModel"]);

    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    cfg["vocab_size"] = serde_json::json!(256);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_one_line_error(&score_with(&dir), &["tokenizer.json", "vocab_size 256"]);
}

#[test]
fn bad_requests_name_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let req = tmp.path().join("req.jsonl");
    std::fs::write(
        &req,
        "{\"context\": \"a\", \"continuation\": \" b\"}\n{\"context\": \"a\"}\n",
    )
    .unwrap();
    let o = sightline(&["score", "--requests", req.to_str().unwrap()]);
    assert_one_line_error(&o, &["req.jsonl:2", "continuation"]);
}

#[test]
fn existing_output_is_never_overwritten_without_asking() {
    let tmp = tempfile::tempdir().unwrap();
    let req = tmp.path().join("req.jsonl");
    std::fs::write(
        &req,
        "{\"context\": \"Once upon\", \"continuation\": \" a time\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("out.jsonl");
    std::fs::write(&out, "precious\n").unwrap();
    let o = sightline(&[
        "score",
        "--requests",
        req.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, &["out.jsonl", "already exists"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious\n");
    let o = sightline(&[
        "score",
        "--requests",
        req.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert!(line["logprob"].as_f64().unwrap() < 0.0);
}

/// `--device cuda` on a binary built without the `cuda` feature says which of the two things
/// CUDA needs is missing (the build, not the GPU) in one line, for every command that runs a
/// model.
#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_on_a_cpu_build_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let req = tmp.path().join("req.jsonl");
    std::fs::write(
        &req,
        "{\"context\": \"Once\", \"continuation\": \" upon\"}\n",
    )
    .unwrap();
    let o = sightline(&[
        "score",
        "--requests",
        req.to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    assert_one_line_error(
        &o,
        &[
            "--device cuda",
            "built without CUDA",
            "scripts/cuda/build.sh",
        ],
    );
    let o = sightline(&["generate", "--prompt", "Once", "--device", "cuda:1"]);
    assert_one_line_error(&o, &["--device cuda:1", "built without CUDA"]);
    let o = sightline(&[
        "eval",
        "--tasks",
        "ethics_cm",
        "--limit",
        "2",
        "--device",
        "gpu",
    ]);
    assert_one_line_error(&o, &["--device `gpu`", "expected cpu, cuda or cuda:N"]);
}

/// `sightline train --device cuda` on the CPU build: the same one line as eval's, before the
/// run file is even read (no output directory is created).
#[test]
fn train_device_cuda_on_a_cpu_build_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out_arg = format!("output_dir={:?}", out.display().to_string());
    let o = sightline(&[
        "train",
        "--config",
        "configs/text-only.toml",
        "--device",
        "cuda",
        &out_arg,
        "max_steps=1",
    ]);
    assert_one_line_error(
        &o,
        &[
            "--device cuda",
            "built without CUDA",
            "scripts/cuda/build.sh",
        ],
    );
    assert!(!out.exists(), "a refused run created {}", out.display());
    let o = sightline(&[
        "train",
        "--config",
        "configs/text-only.toml",
        "--device",
        "tpu",
        &out_arg,
    ]);
    assert_one_line_error(&o, &["--device `tpu`", "expected cpu, cuda or cuda:N"]);
}
