//! LLaVA models against the goldens of `scripts/reference/make_llava_fixtures.py`
//! (transformers 4.46.3): tokenization with `<image>`, spliced-sequence logits within 1e-4 and
//! greedy generations token for token, for the llava-hf layout, the original LLaVA layout and a
//! stage-1 projector on a text LLM; then the same from the image files end to end, and
//! batched scoring against one-by-one scoring.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sightline_model::generate::{generate_embeds, GenerateOptions};
use sightline_model::score::{Request, ScoreOptions};
use sightline_vision::llava::{ImageRequest, Llava, LlavaOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/llava")
}

struct Case {
    name: String,
    v: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("golden.json")).expect("golden.json");
    let g: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut out: Vec<Case> = g["cases"]
        .as_object()
        .expect("cases")
        .iter()
        .map(|(k, v)| Case {
            name: k.clone(),
            v: v.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Loads the model a case was made with (`model`, `vision_tower`, `mm_projector` relative to
/// the fixture folder).
fn load(case: &Case) -> Llava {
    let f = fixtures();
    let opts = LlavaOptions {
        vision_tower: case.v["vision_tower"].as_str().map(|p| f.join(p)),
        mm_projector: case.v["mm_projector"].as_str().map(|p| f.join(p)),
        ..Default::default()
    };
    let model = f.join(case.v["model"].as_str().expect("model"));
    Llava::load(&model, &opts).unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

fn pixels() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("pixels.safetensors"), &Device::Cpu)
        .expect("pixels.safetensors")
}

fn ids(case: &Case) -> Vec<i64> {
    case.v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}

fn greedy(case: &Case) -> Vec<u32> {
    case.v["greedy"]
        .as_array()
        .expect("greedy")
        .iter()
        .map(|x| x.as_u64().expect("token") as u32)
        .collect()
}

fn gen_opts() -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    }
}

/// Max |a - b| over the golden logits rows.
fn logits_diff(m: &Llava, embeds: &Tensor, case: &Case) -> f32 {
    let hidden = m.llm.forward_hidden_embeds(embeds, None).expect("forward");
    let rows = case.v["logits"].as_object().expect("logits");
    let mut worst = 0f32;
    for (pos, want) in rows {
        let pos: usize = pos.parse().expect("row index");
        let h = hidden.get(0).unwrap().narrow(0, pos, 1).unwrap();
        let got: Vec<f32> = m
            .llm
            .logits(&h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), want.len(), "{}: vocab", case.name);
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs());
        }
    }
    worst
}

#[test]
fn prompts_tokenize_like_the_reference() {
    for case in cases() {
        let m = load(&case);
        let prompt = case.v["prompt"].as_str().unwrap();
        assert_eq!(m.tokenize(prompt).unwrap(), ids(&case), "{}", case.name);
    }
}

/// With the reference's own pixel values, the spliced forward pass and greedy decoding are
/// transformers' (this isolates the model from image decoding).
#[test]
fn logits_and_greedy_match_on_reference_pixels() {
    let px = pixels();
    for case in cases() {
        let m = load(&case);
        let ids = ids(&case);
        let feats = match px.get(&case.name) {
            Some(p) => vec![m
                .image_features(&p.unsqueeze(0).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()],
            None => vec![],
        };
        let embeds = m.splice(&ids, &feats).unwrap().unsqueeze(0).unwrap();
        assert_eq!(
            embeds.dim(1).unwrap() as u64,
            case.v["seq_len"].as_u64().unwrap(),
            "{}: spliced length",
            case.name
        );
        let diff = logits_diff(&m, &embeds, &case);
        assert!(diff < 1e-4, "{}: logits differ by {diff}", case.name);
        let g = generate_embeds(&m.llm, &m.tokenizer, &embeds, &gen_opts()).unwrap();
        assert_eq!(g.tokens, greedy(&case), "{}: greedy tokens", case.name);
        assert_eq!(
            g.text,
            case.v["greedy_text"].as_str().unwrap(),
            "{}: greedy text",
            case.name
        );
    }
}

/// From the image file: decode, preprocess, tower, projector, splice, generate. Images decode
/// and resize bit-exactly as Pillow does (JPEGs included, see `preprocess_parity.rs`), so pixel
/// values must be equal, logits within 1e-4 and greedy tokens identical for every image.
#[test]
fn image_file_to_generation_end_to_end() {
    let all_pixels = pixels();
    for case in cases() {
        let Some(image) = case.v["image"].as_str() else {
            continue;
        };
        let m = load(&case);
        let prompt = case.v["prompt"].as_str().unwrap();
        let path = root().join(image);
        let g = m.generate(prompt, Some(&path), &gen_opts()).unwrap();
        assert_eq!(g.tokens, greedy(&case), "{}: greedy tokens", case.name);
        let px = m.load_pixels(&path).unwrap();
        let pixel_diff = (px - &all_pixels[&case.name])
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap();
        assert_eq!(pixel_diff, 0.0, "{}: pixel values", case.name);
        let embeds = m.prompt_embeds(prompt, Some(&path)).unwrap();
        let diff = logits_diff(&m, &embeds, &case);
        assert!(diff < 1e-4, "{}: logits differ by {diff}", case.name);
    }
}

#[test]
fn batched_scoring_equals_one_by_one() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "hf_raw_ironing")
        .expect("case");
    let m = load(&case);
    let img = |p: &str| Some(root().join(p));
    let reqs = vec![
        ImageRequest {
            context: "USER: <image>\nWhat is this? ASSISTANT:".into(),
            continuation: " A man ironing.".into(),
            image: img("data/llava/examples/extreme_ironing.jpg"),
        },
        ImageRequest {
            context: "<image>\nA sketch of a".into(),
            continuation: " dog".into(),
            image: img("data/unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png"),
        },
        ImageRequest {
            context: "Once upon a time".into(),
            continuation: " there was a cat who liked to sleep all day long".into(),
            image: None,
        },
        ImageRequest {
            context: "USER: <image>\nIs it raining? ASSISTANT: ".into(),
            continuation: "No".into(),
            image: img("data/llava/examples/waterview.jpg"),
        },
    ];
    let opts = |batch_size| ScoreOptions {
        batch_size,
        ..Default::default()
    };
    let batched = m.score(&reqs, &opts(4), &mut |_, _| {}).unwrap();
    let single = m.score(&reqs, &opts(1), &mut |_, _| {}).unwrap();
    for (i, (b, s)) in batched.iter().zip(&single).enumerate() {
        assert!(
            (b.logprob - s.logprob).abs() < 1e-4,
            "request {i}: batched {} vs alone {}",
            b.logprob,
            s.logprob
        );
        assert_eq!(b.is_greedy, s.is_greedy, "request {i}");
        assert!(b.logprob < 0.0 && b.logprob.is_finite(), "request {i}");
    }
    // A text request scores as it does through the text path, images elsewhere in the file
    // or not.
    let text_only = sightline_model::score::score(
        &m.llm,
        &m.tokenizer,
        &[Request {
            context: reqs[2].context.clone(),
            continuation: reqs[2].continuation.clone(),
        }],
        &opts(1),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(text_only[0].logprob, batched[2].logprob);
}

#[test]
fn placeholder_count_must_match_the_images() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "orig_v1_ironing")
        .expect("case");
    let m = load(&case);
    let img = root().join("data/llava/examples/extreme_ironing.jpg");
    let opts = gen_opts();
    let none = m
        .generate("no placeholder here", Some(&img), &opts)
        .unwrap_err();
    assert!(
        none.to_string().contains("0 `<image>` placeholders"),
        "{none}"
    );
    let two = m
        .generate("<image> and <image>", Some(&img), &opts)
        .unwrap_err();
    assert!(
        two.to_string().contains("2 `<image>` placeholders"),
        "{two}"
    );
    let missing = m.generate("<image>\nHi", None, &opts).unwrap_err();
    assert!(
        missing.to_string().contains("no image was given"),
        "{missing}"
    );
}

/// The fixture's own `mm_vision_tower` is a Hub id, resolved through the Hub cache (tested
/// offline in `crates/cli/tests/hub.rs`); here it names a directory that does not exist, so
/// that no test of this binary reads the Hub cache or the network.
#[test]
fn original_layout_without_its_tower_says_what_to_pass() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = fixtures().join("tiny-llava-orig");
    for e in std::fs::read_dir(&src).expect("fixture") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).expect("copy");
    }
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("config")).expect("json");
    cfg["mm_vision_tower"] = "/nonexistent/clip-vit-large-patch14".into();
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let err = Llava::load(tmp.path(), &LlavaOptions::default())
        .err()
        .expect("no tower");
    let msg = err.to_string();
    assert!(
        msg.contains("--vision-tower") && msg.contains("/nonexistent/clip-vit-large-patch14"),
        "{msg}"
    );
}

#[test]
fn a_tower_that_does_not_fit_the_projector_is_refused() {
    // The llava-hf fixture's tower is a CLIPVisionModel too, but hidden 32 matches; the
    // stage-1 projector of a wrong width is built by pointing a 32-wide projector at the base
    // LLM's CLIP fixture of another width.
    let clip_fixtures = root().join("tests/fixtures/clip");
    let Some(other) = std::fs::read_dir(&clip_fixtures)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.join("config.json").is_file()
                && std::fs::read_to_string(p.join("config.json"))
                    .map(|t| !t.contains("\"hidden_size\": 32,"))
                    .unwrap_or(false)
        })
    else {
        panic!(
            "no CLIP fixture of another width in {}",
            clip_fixtures.display()
        );
    };
    let opts = LlavaOptions {
        vision_tower: Some(other.clone()),
        ..Default::default()
    };
    let err = Llava::load(&fixtures().join("tiny-llava-orig"), &opts)
        .err()
        .expect("mismatch");
    let msg = err.to_string();
    assert!(
        msg.contains("hidden size") || msg.contains("shape"),
        "{msg}"
    );
}
