//! Parity of the CLIP vision tower with transformers 4.46.3 on tiny random towers, plus the
//! loading and input errors a user can hit.
//!
//! Fixtures: `tests/fixtures/clip/`, written by `scripts/reference/make_clip_fixtures.py` (see
//! its docstring for what each tower exercises). Each fixture holds the checkpoint as
//! `save_pretrained` wrote it and `golden.safetensors` with the input pixels and every entry of
//! `hidden_states`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use sightline_model::Weights;
use sightline_vision::clip::{ClipVisionConfig, ClipVisionTower, SelectFeature};

const TOWERS: &[&str] = &["vision-quickgelu", "clip-gelu", "vision-tanh-bin"];
const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip")
}

#[derive(Deserialize)]
struct Meta {
    model_class: String,
    weights: String,
    batch: usize,
    image_size: usize,
    num_patches: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    select_layers: HashMap<String, usize>,
}

struct Golden {
    meta: Meta,
    pixels: Tensor,
    /// `hidden_states[i]`, `[batch, 1 + patches, hidden]`.
    states: Vec<Tensor>,
}

fn golden(tower: &str) -> Golden {
    let dir = fixtures().join(tower);
    let meta: Meta = serde_json::from_str(
        &std::fs::read_to_string(dir.join("golden.json")).expect("golden.json"),
    )
    .expect("golden.json parses");
    let mut t = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu)
        .expect("golden.safetensors");
    let pixels = t.remove("pixel_values").expect("pixel_values");
    let states = (0..=meta.num_hidden_layers)
        .map(|i| {
            t.remove(&format!("hidden_states.{i}"))
                .expect("hidden state")
        })
        .collect();
    Golden {
        meta,
        pixels,
        states,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn open(tower: &str, select_layer: i64) -> ClipVisionTower {
    ClipVisionTower::from_dir(
        &fixtures().join(tower),
        select_layer,
        DType::F32,
        &Device::Cpu,
    )
    .expect("fixture loads")
}

/// All tensors of a fixture checkpoint, by name.
fn checkpoint_tensors(tower: &str) -> HashMap<String, Tensor> {
    let dir = fixtures().join(tower);
    let st = dir.join("model.safetensors");
    if st.is_file() {
        candle_core::safetensors::load(st, &Device::Cpu).unwrap()
    } else {
        candle_core::pickle::read_all(dir.join("pytorch_model.bin"))
            .unwrap()
            .into_iter()
            .collect()
    }
}

fn config(tower: &str) -> (ClipVisionConfig, PathBuf) {
    let path = fixtures().join(tower).join("config.json");
    (ClipVisionConfig::from_file(&path).unwrap(), path)
}

#[test]
fn hidden_states_match_transformers() {
    for tower in TOWERS {
        let g = golden(tower);
        assert!(fixtures().join(tower).join(&g.meta.weights).is_file());
        let s = g.meta.image_size;
        assert_eq!(g.pixels.dims(), &[g.meta.batch, 3, s, s]);
        let mut layers: Vec<(&String, &usize)> = g.meta.select_layers.iter().collect();
        layers.sort();
        for (select, &index) in layers {
            let select: i64 = select.parse().unwrap();
            let t = open(tower, select);
            assert_eq!(t.hidden_index(), index);
            let hs = t.hidden_state(&g.pixels).unwrap();
            assert_eq!(
                hs.dims(),
                &[g.meta.batch, 1 + g.meta.num_patches, g.meta.hidden_size]
            );
            let diff = max_abs_diff(&hs, &g.states[index]);
            eprintln!(
                "{tower} ({}) select_layer {select:>2}: max |Δ| = {diff:.3e}",
                g.meta.model_class
            );
            assert!(diff < TOL, "{tower} select_layer {select}: max |Δ| {diff}");
        }
    }
}

#[test]
fn every_hidden_state_index_matches() {
    // 0..=L and -(L+1)..=-1 address the same entries.
    let tower = "vision-quickgelu";
    let g = golden(tower);
    let l = g.meta.num_hidden_layers as i64;
    for select in -(l + 1)..=l {
        let t = open(tower, select);
        let hs = t.hidden_state(&g.pixels).unwrap();
        let diff = max_abs_diff(&hs, &g.states[t.hidden_index()]);
        assert!(diff < TOL, "select_layer {select}: {diff}");
    }
}

#[test]
fn out_of_range_select_layer_is_an_error() {
    let (cfg, path) = config("vision-quickgelu");
    let w = Weights::from_dir(
        &fixtures().join("vision-quickgelu"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .pp("vision_model");
    for bad in [-5, 4, 100] {
        let e = ClipVisionTower::new(&cfg, &w, bad, &path)
            .err()
            .expect("out of range")
            .to_string();
        assert!(e.contains("config.json"), "{e}");
        assert!(e.contains(&format!("mm_vision_select_layer {bad}")), "{e}");
        assert!(e.contains("-4..=3"), "{e}");
    }
}

#[test]
fn feature_selection() {
    for tower in TOWERS {
        let g = golden(tower);
        let t = open(tower, -2);
        let (b, p, h) = (g.meta.batch, g.meta.num_patches, g.meta.hidden_size);
        assert_eq!(t.config.num_patches(), p);
        let patch = t.features(&g.pixels, SelectFeature::Patch).unwrap();
        let full = t.features(&g.pixels, SelectFeature::ClsPatch).unwrap();
        assert_eq!(patch.dims(), &[b, p, h]);
        assert_eq!(full.dims(), &[b, p + 1, h]);
        // `patch` is `cls_patch` without token 0, which is the CLS position.
        assert_eq!(max_abs_diff(&patch, &full.narrow(1, 1, p).unwrap()), 0.0);
        let golden_patches = g.states[t.hidden_index()].narrow(1, 1, p).unwrap();
        assert!(max_abs_diff(&patch, &golden_patches) < TOL);
    }
}

#[test]
fn penultimate_layer_needs_no_last_layer_weights() {
    let tower = "clip-gelu";
    let g = golden(tower);
    let (cfg, path) = config(tower);
    let last = format!("vision_model.encoder.layers.{}.", cfg.num_hidden_layers - 1);
    let all = checkpoint_tensors(tower);
    // The full CLIPModel checkpoint really carries the parts the tower must ignore.
    for name in [
        "text_model.embeddings.token_embedding.weight",
        "visual_projection.weight",
        "logit_scale",
        "vision_model.post_layernorm.weight",
    ] {
        assert!(all.contains_key(name), "fixture lacks {name}");
    }
    let kept: HashMap<String, Tensor> = all
        .into_iter()
        .filter(|(k, _)| !k.starts_with(&last) && !k.starts_with("vision_model.post_layernorm"))
        .collect();
    let w = Weights::from_tensors(kept, PathBuf::from("pruned"), DType::F32, &Device::Cpu);
    let t = ClipVisionTower::new(&cfg, &w.pp("vision_model"), -2, &path).unwrap();
    let hs = t.hidden_state(&g.pixels).unwrap();
    assert!(max_abs_diff(&hs, &g.states[cfg.num_hidden_layers - 1]) < TOL);

    // -1 does need them, and says which tensor is missing.
    let e = ClipVisionTower::new(&cfg, &w.pp("vision_model"), -1, &path)
        .err()
        .expect("last layer missing")
        .to_string();
    assert!(e.contains("pruned"), "{e}");
    assert!(e.contains(&last), "{e}");
}

/// Copies a fixture directory so a test can break one file of it.
fn copy_fixture(tower: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(tower)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let dir = copy_fixture("vision-quickgelu");
    let file = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let gone = "vision_model.encoder.layers.0.mlp.fc1.bias";
    assert!(tensors.remove(gone).is_some());
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let e = ClipVisionTower::from_dir(dir.path(), -2, DType::F32, &Device::Cpu)
        .err()
        .expect("missing tensor")
        .to_string();
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(e.contains(&format!("`{gone}` is missing")), "{e}");
}

#[test]
fn wrong_tensor_shape_is_named() {
    let dir = copy_fixture("vision-quickgelu");
    let file = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "vision_model.embeddings.position_embedding.weight";
    tensors.insert(
        name.to_string(),
        Tensor::zeros((5, 24), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let e = ClipVisionTower::from_dir(dir.path(), -2, DType::F32, &Device::Cpu)
        .err()
        .expect("bad shape")
        .to_string();
    assert!(
        e.contains(name) && e.contains("[5, 24]") && e.contains("[26, 24]"),
        "{e}"
    );
}

#[test]
fn wrong_pixel_shape_is_a_clear_error() {
    let tower = "vision-quickgelu";
    let t = open(tower, -2);
    let dev = Device::Cpu;
    for dims in [
        vec![2, 3, 29, 29],
        vec![2, 3, 30, 31],
        vec![2, 1, 30, 30],
        vec![3, 30, 30],
        vec![0, 3, 30, 30],
    ] {
        let px = Tensor::zeros(dims.as_slice(), DType::F32, &dev).unwrap();
        let e = t.hidden_state(&px).expect_err("bad pixels").to_string();
        assert!(e.contains(&format!("{dims:?}")), "{e}");
        assert!(e.contains("[batch, 3, 30, 30]"), "{e}");
        assert!(e.contains("config.json"), "{e}");
    }
}

#[test]
fn unsupported_activation_names_config_json() {
    let dir = copy_fixture("vision-quickgelu");
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["hidden_act"] = "relu".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e = ClipVisionTower::from_dir(dir.path(), -2, DType::F32, &Device::Cpu)
        .err()
        .expect("relu unsupported")
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("hidden_act `relu` is not supported"), "{e}");

    // Same inside a CLIPModel config, with the nested field named.
    let dir = copy_fixture("clip-gelu");
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["vision_config"]["hidden_act"] = "gelu_10".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e = ClipVisionTower::from_dir(dir.path(), -2, DType::F32, &Device::Cpu)
        .err()
        .expect("gelu_10 unsupported")
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("vision_config.hidden_act `gelu_10`"),
        "{e}"
    );
}

#[test]
fn no_weights_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("vision-quickgelu/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let e = ClipVisionTower::from_dir(dir.path(), -2, DType::F32, &Device::Cpu)
        .err()
        .expect("no weights")
        .to_string();
    assert!(e.contains("no weights found"), "{e}");
    let e = ClipVisionTower::from_dir(&dir.path().join("nope"), -2, DType::F32, &Device::Cpu)
        .err()
        .expect("no config")
        .to_string();
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn half_precision_towers_run() {
    // Not a parity claim (transformers' CPU half kernels differ too): the half paths compute,
    // keep the shapes and stay near the f32 result.
    for tower in ["vision-quickgelu", "clip-gelu", "vision-tanh-bin"] {
        let g = golden(tower);
        for dtype in [DType::BF16, DType::F16] {
            let t = ClipVisionTower::from_dir(&fixtures().join(tower), -2, dtype, &Device::Cpu)
                .unwrap();
            let hs = t.hidden_state(&g.pixels).unwrap();
            assert_eq!(hs.dtype(), dtype);
            let want = &g.states[t.hidden_index()];
            let diff = max_abs_diff(&hs, want);
            let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let scale = scale.to_scalar::<f32>().unwrap();
            eprintln!("{tower} {dtype:?}: max |Δ| = {diff:.3e} (max |h| {scale:.2})");
            assert!(diff < 0.05 * scale, "{tower} {dtype:?}: {diff}");
            // LLaVA casts the features back to the dtype of the images.
            let f = t.features(&g.pixels, SelectFeature::Patch).unwrap();
            assert_eq!(f.dtype(), DType::F32);
        }
    }
}

/// A random-weights ViT-L/14 @224 (openai/clip-vit-large-patch14's vision tower) on one image:
/// `cargo test --release -p sightline-vision --test clip_parity -- --ignored --nocapture`.
#[test]
#[ignore = "timing; needs ~1.3 GB and a release build"]
fn vit_l14_timing() {
    let cfg = ClipVisionConfig::from_value(
        &serde_json::json!({
            "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
        }),
        Path::new("vit-l14.json"),
    )
    .unwrap();
    let dev = Device::Cpu;
    let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f32| {
        let x = Tensor::randn(0f32, std, shape, &dev).unwrap();
        t.insert(format!("vision_model.{name}"), x);
    };
    put(
        "embeddings.patch_embedding.weight".into(),
        &[h, 3, 14, 14],
        0.02,
    );
    put("embeddings.class_embedding".into(), &[h], 0.5);
    put(
        "embeddings.position_embedding.weight".into(),
        &[257, h],
        0.5,
    );
    put("pre_layrnorm.weight".into(), &[h], 1.0);
    put("pre_layrnorm.bias".into(), &[h], 0.1);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            put(format!("{p}.self_attn.{proj}.weight"), &[h, h], 0.03);
            put(format!("{p}.self_attn.{proj}.bias"), &[h], 0.01);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            put(format!("{p}.{ln}.weight"), &[h], 1.0);
            put(format!("{p}.{ln}.bias"), &[h], 0.1);
        }
        put(format!("{p}.mlp.fc1.weight"), &[m, h], 0.03);
        put(format!("{p}.mlp.fc1.bias"), &[m], 0.01);
        put(format!("{p}.mlp.fc2.weight"), &[h, m], 0.015);
        put(format!("{p}.mlp.fc2.bias"), &[h], 0.01);
    }
    let w = Weights::from_tensors(t, PathBuf::from("random"), DType::F32, &dev);
    let tower =
        ClipVisionTower::new(&cfg, &w.pp("vision_model"), -2, Path::new("vit-l14.json")).unwrap();
    let px = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &dev).unwrap();
    let f = tower.features(&px, SelectFeature::Patch).unwrap();
    assert_eq!(f.dims(), &[1, 256, 1024]);
    for batch in [1usize, 4] {
        let px = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &dev).unwrap();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            let f = tower.features(&px, SelectFeature::Patch).unwrap();
            assert_eq!(f.dims(), &[batch, 256, 1024]);
            best = best.min(start.elapsed().as_secs_f64());
        }
        eprintln!("ViT-L/14 @224, 23 layers, f32, batch {batch}: best of 3 {best:.3} s");
    }
}
