//! `sightline train` on every example config in `configs/` (shortened with `max_steps`), each
//! checkpoint loaded back into `generate` and `eval` the way the config's header says, plus
//! `sightline merge-lora` and the one-line errors of bad runs.

use std::path::Path;
use std::process::Output;

mod drill_support;
use drill_support::ok;

/// Runs the binary in the repository root (the configs' paths are relative to it), offline: a
/// missing path that reads as a Hub id must not reach for the network.
fn sightline(args: &[&str]) -> Output {
    drill_support::command().args(args).output().expect("runs")
}

fn one_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    err
}

const SKETCH: &str = "data/unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png";
const BASE: &str = "tests/fixtures/train/base";
const CLIP: &str = "tests/fixtures/llava/tiny-clip";

fn train(config: &str, out: &Path, extra: &[&str]) -> String {
    let out_arg = format!("output_dir={:?}", out.display().to_string());
    let mut args = vec!["train", "--config", config, &out_arg, "max_steps=2"];
    args.extend_from_slice(extra);
    let stdout = ok(&sightline(&args), config);
    for f in ["train_log.jsonl", "data_order.json", "train_config.json"] {
        assert!(out.join(f).is_file(), "{config}: no {f}");
    }
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).expect("log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{config}: {log}");
    for l in &lines {
        for k in ["step", "loss", "lr", "grad_norm", "tokens", "seconds"] {
            assert!(l.get(k).is_some(), "{config}: log line without {k}: {l}");
        }
        assert!(l["loss"].as_f64().is_some_and(f64::is_finite), "{l}");
        assert!(l["tokens"].as_u64().is_some_and(|t| t > 0), "{l}");
    }
    stdout
}

fn eval_mc1(model_args: &[&str], out: &Path) {
    let o = out.display().to_string();
    let mut args = vec![
        "eval",
        "--tasks",
        "truthfulqa_mc1",
        "--limit",
        "2",
        "--output",
        &o,
    ];
    args.extend_from_slice(model_args);
    ok(&sightline(&args), "eval");
    assert!(out.join("results.json").is_file() || std::fs::read_dir(out).is_ok());
}

fn generate(model_args: &[&str]) -> String {
    let mut args = vec![
        "generate",
        "--image",
        SKETCH,
        "--conv-mode",
        "v1",
        "--prompt",
        "What is drawn here?",
        "--max-new-tokens",
        "4",
    ];
    args.extend_from_slice(model_args);
    ok(&sightline(&args), "generate")
}

/// The four example runs in the order their headers give, each loaded back.
#[test]
fn every_example_config_trains_and_loads_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let stage1 = d.join("stage1");
    let proj = stage1.join("mm_projector.safetensors");
    let proj_arg = format!("pretrain_mm_mlp_adapter={:?}", proj.display().to_string());
    let proj_s = proj.display().to_string();

    train("configs/stage1-projector.toml", &stage1, &[]);
    assert!(proj.is_file() && stage1.join("config.json").is_file());
    generate(&[
        "--model",
        BASE,
        "--vision-tower",
        CLIP,
        "--mm-projector",
        &proj_s,
    ]);

    let full = d.join("full");
    train("configs/stage2-full.toml", &full, &[&proj_arg]);
    let full_s = full.display().to_string();
    generate(&["--model", &full_s]);
    eval_mc1(&["--model", &full_s], &d.join("eval-full"));

    let lora = d.join("lora");
    train("configs/stage2-lora.toml", &lora, &[&proj_arg]);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lora.join("adapter_config.json")).expect("adapter config"),
    )
    .expect("json");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["mm_projector"]));
    let lora_s = lora.display().to_string();
    let lora_proj = lora.join("mm_projector.safetensors").display().to_string();
    generate(&[
        "--model",
        BASE,
        "--vision-tower",
        CLIP,
        "--mm-projector",
        &lora_proj,
        "--adapter",
        &lora_s,
    ]);
    eval_mc1(
        &["--model", BASE, "--adapter", &lora_s],
        &d.join("eval-lora"),
    );

    let text = d.join("text");
    train("configs/text-only.toml", &text, &[]);
    let text_s = text.display().to_string();
    eval_mc1(&["--model", &text_s], &d.join("eval-text"));
}

/// `bf16 = true` (mixed precision) with `--device cpu`: stage 1 → stage 2 LoRA from its bf16
/// projector, and a text-only full run, each loaded back by `generate`/`eval` from the bf16
/// artefacts the runs save (config.json says `torch_dtype = "bfloat16"`).
#[test]
fn bf16_runs_train_and_load_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let bf16 = ["--device", "cpu", "bf16=true"];
    let stage1 = d.join("stage1");
    train("configs/stage1-projector.toml", &stage1, &bf16);
    let proj = stage1.join("mm_projector.safetensors");
    let proj_s = proj.display().to_string();
    let proj_arg = format!("pretrain_mm_mlp_adapter={proj_s:?}");
    let lora = d.join("lora");
    let mut extra = bf16.to_vec();
    extra.push(&proj_arg);
    train("configs/stage2-lora.toml", &lora, &extra);
    let lora_s = lora.display().to_string();
    let lora_proj = lora.join("mm_projector.safetensors").display().to_string();
    generate(&[
        "--model",
        BASE,
        "--vision-tower",
        CLIP,
        "--mm-projector",
        &lora_proj,
        "--adapter",
        &lora_s,
        "--dtype",
        "bf16",
    ]);
    let text = d.join("text");
    train("configs/text-only.toml", &text, &bf16);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(text.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    eval_mc1(
        &["--model", &text.display().to_string()],
        &d.join("eval-text"),
    );
}

/// Text-only LoRA → merge-lora: the merged model equals base + adapter on the probes (the
/// command checks it), loads, and a bad tolerance makes it refuse without writing anything.
#[test]
fn merge_lora_checks_and_refuses() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = dir.path().join("lora");
    train(
        "configs/text-only.toml",
        &run,
        &["lora_enable=true", "lora_r=4", "learning_rate=0.05"],
    );
    let (run_s, merged) = (
        run.display().to_string(),
        dir.path().join("merged").display().to_string(),
    );
    let out = ok(
        &sightline(&[
            "merge-lora",
            "--model",
            BASE,
            "--adapter",
            &run_s,
            "--output",
            &merged,
        ]),
        "merge-lora",
    );
    assert!(out.contains("merged 14 LoRA layers"), "{out}");
    eval_mc1(&["--model", &merged], &dir.path().join("eval"));
    // An existing output is never overwritten.
    let err = one_error(&sightline(&[
        "merge-lora",
        "--model",
        BASE,
        "--adapter",
        &run_s,
        "--output",
        &merged,
    ]));
    assert!(err.contains("already exists"), "{err}");
    // A tolerance no merge can meet: refused, nothing left behind.
    let refused = dir.path().join("refused");
    let err = one_error(&sightline(&[
        "merge-lora",
        "--model",
        BASE,
        "--adapter",
        &run_s,
        "--output",
        &refused.display().to_string(),
        "--tolerance=-1",
    ]));
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!refused.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn bad_runs_fail_with_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = format!(
        "output_dir={:?}",
        dir.path().join("x").display().to_string()
    );
    let err = one_error(&sightline(&[
        "train",
        "--config",
        "configs/text-only.toml",
        &out,
        "learning_rat=1",
    ]));
    assert!(err.contains("learning_rat"), "{err}");
    let err = one_error(&sightline(&["train", "--config", "configs/missing.toml"]));
    assert!(err.contains("missing.toml"), "{err}");
    // Image records in a text-only run: the record and what to do.
    let err = one_error(&sightline(&[
        "train",
        "--config",
        "configs/text-only.toml",
        &out,
        "data_path=\"data/training/sketch/sketch_instruct.json\"",
    ]));
    assert!(
        err.contains("record 0") && err.contains("strip-images"),
        "{err}"
    );
    // A missing image.
    let err = one_error(&sightline(&[
        "train",
        "--config",
        "configs/stage2-full.toml",
        &out,
        "image_folder=\"data/llava\"",
        "pretrain_mm_mlp_adapter=\"nowhere/mm_projector.bin\"",
    ]));
    assert!(
        err.contains("does not exist") || err.contains("nowhere"),
        "{err}"
    );
}

/// A launcher that asks for several ranks this build cannot serve is refused in one line
/// before anything is written, instead of N processes training N independent copies:
/// torchrun's variables without an address or in a build without NCCL, `srun` tasks with
/// neither MPI nor an address, and, in a build without the `mpi` feature, an MPI launcher's.
#[test]
fn multi_rank_launches_without_a_backend_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("run");
    let out = format!("output_dir={:?}", out_dir.display().to_string());
    let args = [
        "train",
        "--config",
        "configs/text-only.toml",
        &out,
        "max_steps=1",
    ];
    let refused = |vars: &[(&str, &str)]| {
        let mut c = drill_support::command();
        c.args(args);
        for (k, v) in vars {
            c.env(k, v);
        }
        let err = one_error(&c.output().expect("runs"));
        assert!(
            !out_dir.exists(),
            "a refused launch wrote {}",
            out_dir.display()
        );
        err
    };
    let err = refused(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")]);
    assert!(
        err.contains("WORLD_SIZE=2") && err.contains("MASTER_ADDR"),
        "{err}"
    );
    let err = refused(&[("SLURM_STEP_NUM_TASKS", "4")]);
    assert!(err.contains("srun --mpi=pmix"), "{err}");
    #[cfg(not(feature = "nccl"))]
    {
        let torchrun = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ];
        let err = refused(&torchrun);
        assert!(
            err.contains("built without NCCL") && err.contains("mpirun -np 2"),
            "{err}"
        );
        // Naming the backend asks for it even with one rank.
        let mut c = drill_support::command();
        c.args(args).args(["--ddp-backend", "nccl"]);
        let err = one_error(&c.output().expect("runs"));
        assert!(
            err.contains("--ddp-backend nccl") && err.contains("built without NCCL"),
            "{err}"
        );
        assert!(!out_dir.exists());
    }
    let mut c = drill_support::command();
    c.args(args).args(["--ddp-backend", "gloo"]);
    let o = c.output().expect("runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected auto, mpi or nccl"), "{err}");
    #[cfg(not(feature = "mpi"))]
    {
        let err = refused(&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "0")]);
        assert!(err.contains("--features mpi"), "{err}");
    }
    // One rank is one process.
    let mut c = drill_support::command();
    c.args(args).env("WORLD_SIZE", "1").env("RANK", "0");
    ok(&c.output().expect("runs"), "WORLD_SIZE=1");
}
