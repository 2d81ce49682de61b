//! `--model`, `--vision-tower`, `--mm-projector` by Hugging Face Hub id, end to end, from a Hub
//! cache built out of the committed fixtures (layout: `crates/model/tests/common/hub_cache.rs`)
//! with `HF_HUB_CACHE` pointing at it and `HF_HUB_OFFLINE=1` (no test touches the network): the
//! same generations and eval results as by path, an original-layout LLaVA whose config names
//! its tower `openai/clip-vit-large-patch14`, results.json recording the id as given, the
//! one-line error for what is not cached, and a local directory named like an id winning.

#[path = "../../model/tests/common/hub_cache.rs"]
mod hub_cache;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hub_cache::{commit, HubCache};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

const LLAVA: &str = "sightline-test/tiny-llava-orig";
const CLIP: &str = "openai/clip-vit-large-patch14";
const STAGE1: &str = "sightline-test/tiny-stage1";
const GQA: &str = "sightline-test/tiny-gqa-untied";
const MHA: &str = "sightline-test/tiny-mha-tied";

/// A cache with every repository the tests name (`with_clip` = false leaves the tower out).
fn build_cache(dir: &Path, with_clip: bool) -> HubCache {
    let c = HubCache::new(dir);
    let f = fixtures();
    let put = |repo: &str, src: PathBuf| {
        c.put(repo, &commit(repo), &src, &[]);
        c.set_ref(repo, "main", &commit(repo));
    };
    put(LLAVA, f.join("llava/tiny-llava-orig"));
    // The committed config already names the tower by id; set it explicitly all the same.
    let cfg_path = f.join("llava/tiny-llava-orig/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg_path).unwrap()).unwrap();
    cfg["mm_vision_tower"] = CLIP.into();
    c.put_bytes(
        LLAVA,
        &commit(LLAVA),
        "config.json",
        cfg.to_string().as_bytes(),
    );
    put(STAGE1, f.join("llava/tiny-stage1"));
    put(GQA, f.join("llama/tiny-gqa-untied"));
    put(MHA, f.join("llama/tiny-mha-tied"));
    if with_clip {
        put(CLIP, f.join("llava/tiny-clip"));
    }
    c
}

fn run(cache: &Path, cwd: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sightline"));
    cmd.args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("TRANSFORMERS_CACHE");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.output().expect("runs")
}

fn ok_stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn golden(case: &str) -> (String, String, String) {
    let text = std::fs::read_to_string(fixtures().join("llava/golden.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &g["cases"][case];
    let s = |k: &str| c[k].as_str().unwrap().to_string();
    (
        root().join(s("image")).display().to_string(),
        s("prompt"),
        format!("{}\n", s("greedy_text")),
    )
}

fn generate(cache: &Path, model_flags: &[&str], case: &str) -> String {
    let (image, prompt, _) = golden(case);
    let mut args = vec!["generate"];
    args.extend_from_slice(model_flags);
    args.extend([
        "--image",
        &image,
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "12",
    ]);
    ok_stdout(&run(cache, None, &args))
}

#[test]
fn llava_by_id_finds_its_mm_vision_tower_on_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = build_cache(&tmp.path().join("hub"), true);
    let (_, _, want) = golden("orig_v1_ironing");
    assert_eq!(
        generate(&cache.dir, &["--model", LLAVA], "orig_v1_ironing"),
        want
    );
    // Every flag by id: a stage-1 projector and a tower on a text LLM, at explicit revisions.
    let (_, _, want) = golden("stage1_sketch");
    let got = generate(
        &cache.dir,
        &[
            "--model",
            GQA,
            "--mm-projector",
            &format!("{STAGE1}@main"),
            "--vision-tower",
            &format!("{CLIP}@{}", commit(CLIP)),
        ],
        "stage1_sketch",
    );
    assert_eq!(got, want);

    // Without the tower in the cache: one line naming the config field, the repo and the cache.
    let bare = build_cache(&tmp.path().join("bare"), false);
    let (image, prompt, _) = golden("orig_v1_ironing");
    let o = run(
        &bare.dir,
        None,
        &[
            "generate", "--model", LLAVA, "--image", &image, "--prompt", &prompt,
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for needle in ["mm_vision_tower", CLIP, "revision main", "HF_HUB_OFFLINE"] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    assert!(err.contains(&bare.dir.display().to_string()), "{err}");
}

#[test]
fn eval_by_id_matches_by_path_and_records_the_id() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = build_cache(&tmp.path().join("hub"), false);
    let eval = |model: &str, out: &Path| {
        let o = run(
            &cache.dir,
            None,
            &[
                "eval",
                "--model",
                model,
                "--tasks",
                "ethics_virtue,truthfulqa_mc2",
                "--limit",
                "6",
                "--output",
                &out.display().to_string(),
            ],
        );
        ok_stdout(&o);
        let text = std::fs::read_to_string(out.join("results.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    // The LLaVA checkpoint's decoder (text tasks), whose 256 positions fit TruthfulQA.
    let by_id = eval(LLAVA, &tmp.path().join("id"));
    let path = fixtures()
        .join("llava/tiny-llava-orig")
        .display()
        .to_string();
    let by_path = eval(&path, &tmp.path().join("path"));
    assert_eq!(by_id["results"], by_path["results"]);
    assert_eq!(by_id["config"]["model_args"], LLAVA);
    assert_eq!(by_id["config"]["model_revision"], "main");
    assert_eq!(by_id["config"]["model_sha"], commit(LLAVA).as_str());
    assert_eq!(by_path["config"]["model_args"], path.as_str());
    assert!(by_path["config"].get("model_sha").is_none());
}

#[test]
fn offline_and_not_cached_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = build_cache(&tmp.path().join("hub"), false);
    let o = run(
        &cache.dir,
        None,
        &[
            "generate",
            "--model",
            "PahaII/MM-LLaMA-2-7B-lora@v2",
            "--prompt",
            "Hi",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for needle in [
        "PahaII/MM-LLaMA-2-7B-lora",
        "revision v2",
        "refs/v2",
        "HF_HUB_OFFLINE",
        &cache.dir.display().to_string(),
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
}

#[test]
fn a_local_directory_named_like_an_id_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = build_cache(&tmp.path().join("hub"), false);
    // ./sightline-test/tiny-gqa-untied holds the MHA model; the cache has the GQA one.
    let work = tmp.path().join("work");
    let local = work.join(GQA);
    std::fs::create_dir_all(&local).unwrap();
    let src = fixtures().join("llama/tiny-mha-tied");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), local.join(e.file_name())).unwrap();
    }
    let gen = |cwd: &Path, model: &str| {
        ok_stdout(&run(
            &cache.dir,
            Some(cwd),
            &[
                "generate",
                "--model",
                model,
                "--prompt",
                "Once upon a time",
                "--max-new-tokens",
                "8",
            ],
        ))
    };
    let mha = gen(tmp.path(), &src.display().to_string());
    let from_hub = gen(tmp.path(), GQA);
    assert_ne!(
        mha, from_hub,
        "the two models must differ for this test to mean anything"
    );
    assert_eq!(gen(&work, GQA), mha);
}

/// `sightline train` in the repository root (the configs' paths are relative to it) with
/// `overrides`; returns the logged losses.
fn train(cache: &Path, config: &str, out: &Path, overrides: &[String]) -> Vec<f64> {
    let mut args = vec![
        "train".to_string(),
        "--config".into(),
        config.into(),
        format!("output_dir={:?}", out.display().to_string()),
        "max_steps=2".into(),
    ];
    args.extend_from_slice(overrides);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok_stdout(&run(cache, Some(&root()), &args));
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    log.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_training_run_takes_its_base_tower_and_stage1_projector_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = build_cache(&tmp.path().join("hub"), true);
    let base = "sightline-test/train-base";
    cache.put(base, &commit(base), &fixtures().join("train/base"), &[]);
    cache.set_ref(base, "main", &commit(base));
    let by_id = [
        format!("model_name_or_path={base:?}"),
        format!("vision_tower={CLIP:?}"),
    ];
    let s1_id = tmp.path().join("s1-id");
    let s1_path = tmp.path().join("s1-path");
    let losses = train(&cache.dir, "configs/stage1-projector.toml", &s1_id, &by_id);
    assert_eq!(
        losses,
        train(&cache.dir, "configs/stage1-projector.toml", &s1_path, &[])
    );
    // The saved config names the tower as LLaVA does: by the id it was given.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s1_id.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["mm_vision_tower"], CLIP, "{cfg}");

    // Stage 2 from the stage-1 projector published as a repository.
    let proj = "sightline-test/stage1-out";
    cache.put(
        proj,
        &commit(proj),
        &s1_id,
        &["mm_projector.safetensors", "config.json"],
    );
    cache.set_ref(proj, "main", &commit(proj));
    let mut s2 = by_id.to_vec();
    s2.push(format!("pretrain_mm_mlp_adapter={proj:?}"));
    let by_path = format!(
        "pretrain_mm_mlp_adapter={:?}",
        s1_id.join("mm_projector.safetensors").display().to_string()
    );
    assert_eq!(
        train(
            &cache.dir,
            "configs/stage2-full.toml",
            &tmp.path().join("s2-id"),
            &s2
        ),
        train(
            &cache.dir,
            "configs/stage2-full.toml",
            &tmp.path().join("s2-path"),
            &[by_path]
        )
    );
}
