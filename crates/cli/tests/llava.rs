//! `sightline generate --image` and `sightline score` with images, on the tiny LLaVA fixtures of
//! both checkpoint layouts (and a stage-1 projector on a text LLM), with the repo's own images;
//! and the one-line errors a new user gets for bad images and bad prompts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

const PHOTO: &str = "data/llava/examples/extreme_ironing.jpg";
const SKETCH: &str = "data/unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png";

/// Offline with an empty Hub cache: the original-layout fixture's `mm_vision_tower` is a Hub id
/// (`openai/clip-vit-large-patch14`), which must not be fetched or found in a developer's cache.
fn sightline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", "/nonexistent/sightline-test-hub-cache")
        .env_remove("TRANSFORMERS_CACHE")
        .output()
        .expect("runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/llava/golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `generate` with the case's model flags, prompt and image; returns stdout.
fn generate_case(name: &str) -> (String, String) {
    let g = golden();
    let c = &g["cases"][name];
    let f = root().join("tests/fixtures/llava");
    let model = f.join(c["model"].as_str().unwrap()).display().to_string();
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        model,
        "--image".into(),
        path(c["image"].as_str().unwrap()),
        "--prompt".into(),
        c["prompt"].as_str().unwrap().into(),
        "--max-new-tokens".into(),
        "12".into(),
    ];
    for key in ["vision_tower", "mm_projector"] {
        if let Some(p) = c[key].as_str() {
            args.push(format!("--{}", key.replace('_', "-")));
            args.push(f.join(p).display().to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = sightline(&args);
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        c["greedy_text"].as_str().unwrap().to_string(),
    )
}

#[test]
fn generate_with_image_on_both_layouts_and_a_stage1_projector() {
    for name in [
        "hf_raw_ironing",
        "orig_v1_ironing",
        "stage1_sketch",
        "hf_raw_sketch",
    ] {
        let (got, want) = generate_case(name);
        assert_eq!(got, format!("{want}\n"), "{name}");
    }
}

#[test]
fn conv_mode_builds_the_llava_prompt() {
    // hf_v1_waterview's prompt is the v1 template around "<image>\nDescribe the scene.".
    let g = golden();
    let want = g["cases"]["hf_v1_waterview"]["greedy_text"]
        .as_str()
        .unwrap();
    let o = sightline(&[
        "generate",
        "--model",
        &path("tests/fixtures/llava/tiny-llava-hf"),
        "--image",
        &path("data/llava/examples/waterview.jpg"),
        "--conv-mode",
        "v1",
        "--prompt",
        "Describe the scene.",
        "--max-new-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{want}\n"));
}

#[test]
fn score_reads_an_image_field() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("req.jsonl");
    std::fs::write(
        &req,
        format!(
            "{}\n{}\n",
            serde_json::json!({"context": "<image>\nA sketch of a", "continuation": " dog",
                "image": path(SKETCH)}),
            serde_json::json!({"context": "Once upon a", "continuation": " time"}),
        ),
    )
    .unwrap();
    let o = sightline(&[
        "score",
        "--model",
        &path("tests/fixtures/llava/tiny-llava-hf"),
        "--requests",
        req.to_str().unwrap(),
        // The request names the sketch by its absolute path, outside the requests' folder.
        "--allow-outside-paths",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let lp = l["logprob"].as_f64().unwrap();
        assert!(lp < 0.0 && lp.is_finite(), "{l}");
    }
}

/// Each mistake gives exit code 1 and one error line that names what is wrong.
#[test]
fn bad_images_and_prompts_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.jpg");
    std::fs::write(&text_file, "not an image").unwrap();
    let truncated = dir.path().join("cut.jpg");
    let bytes = std::fs::read(root().join(PHOTO)).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let hf = path("tests/fixtures/llava/tiny-llava-hf");
    let orig = path("tests/fixtures/llava/tiny-llava-orig");
    let photo = path(PHOTO);
    let missing = dir.path().join("missing.png").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--model", &hf, "--image", &missing, "--prompt", "<image>"],
            "missing.png",
        ),
        (
            vec![
                "--model",
                &hf,
                "--image",
                text_file.to_str().unwrap(),
                "--prompt",
                "<image>",
            ],
            "notes.jpg",
        ),
        (
            vec![
                "--model",
                &hf,
                "--image",
                truncated.to_str().unwrap(),
                "--prompt",
                "<image>",
            ],
            "cut.jpg",
        ),
        (
            vec![
                "--model",
                &hf,
                "--image",
                &photo,
                "--prompt",
                "no placeholder",
            ],
            "needs exactly one",
        ),
        (
            vec![
                "--model",
                &hf,
                "--image",
                &photo,
                "--prompt",
                "<image><image>",
            ],
            "2 `<image>` placeholders",
        ),
        (
            vec!["--model", &hf, "--prompt", "<image> what?"],
            "no --image",
        ),
        (
            vec!["--model", &orig, "--image", &photo, "--prompt", "<image>"],
            "--vision-tower",
        ),
        (
            vec!["--image", &photo, "--prompt", "<image>"],
            "text-only model",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["generate", "--max-new-tokens", "2"];
        full.extend(args.iter().copied());
        let o = sightline(&full);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected `{needle}` in {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
