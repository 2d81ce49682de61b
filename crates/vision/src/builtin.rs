//! A CLIP vision tower compiled into the binary: `builtin:tiny-clip`, so that the embedded
//! study (`sightline study` with no arguments) trains and evaluates a LLaVA model offline on a
//! fresh machine.
//!
//! Its weights are **seeded random**, not pretrained: a real CLIP ViT-L/14 is 1.2 GB and cannot
//! ship inside the binary. The tower has CLIP's architecture (56×56 input, 14-pixel patches,
//! 3 layers of width 32, quick-GELU), so every code path of a real one runs, but its features
//! carry no visual meaning; reports made with it say so. The initialisation follows
//! transformers' `CLIPPreTrainedModel._init_weights` in spirit (normal weights of std 0.02,
//! zero biases, unit LayerNorms); the exact stream is ChaCha8 with a fixed seed, so the tower
//! is the same on every machine.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Names accepted by [`write_dir`].
pub const BUILTIN_TOWERS: &[&str] = &["tiny-clip"];

const HIDDEN: usize = 32;
const INTERMEDIATE: usize = 64;
const LAYERS: usize = 3;
const IMAGE: usize = 56;
const PATCH: usize = 14;
const SEED: u64 = 20_240_607;
const STD: f32 = 0.02;

fn config() -> Value {
    json!({
        "architectures": ["CLIPVisionModel"],
        "attention_dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": HIDDEN,
        "image_size": IMAGE,
        "initializer_factor": 1.0,
        "initializer_range": STD,
        "intermediate_size": INTERMEDIATE,
        "layer_norm_eps": 1e-5,
        "model_type": "clip_vision_model",
        "num_attention_heads": 4,
        "num_channels": 3,
        "num_hidden_layers": LAYERS,
        "patch_size": PATCH,
        "projection_dim": 16,
        "torch_dtype": "float32",
        "sightline_note": "builtin:tiny-clip: seeded random weights, not a pretrained CLIP"
    })
}

fn preprocessor_config() -> Value {
    json!({
        "crop_size": {"height": IMAGE, "width": IMAGE},
        "do_center_crop": true,
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": IMAGE}
    })
}

/// Standard normal draws by Box–Muller from the seeded stream (rand_distr is not a dependency
/// for this one use).
fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
        })
        .collect()
}

/// The tower's tensors under their HF names (`vision_model.*`), created in a fixed order.
fn tensors() -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut out = HashMap::new();
    let dev = Device::Cpu;
    let mut put = |name: String, shape: &[usize], values: Vec<f32>| -> Result<()> {
        out.insert(name, Tensor::from_vec(values, shape, &dev)?);
        Ok(())
    };
    let patches = (IMAGE / PATCH) * (IMAGE / PATCH);
    let e = "vision_model.embeddings";
    put(
        format!("{e}.class_embedding"),
        &[HIDDEN],
        normal(&mut rng, HIDDEN, STD),
    )?;
    put(
        format!("{e}.patch_embedding.weight"),
        &[HIDDEN, 3, PATCH, PATCH],
        normal(&mut rng, HIDDEN * 3 * PATCH * PATCH, STD),
    )?;
    put(
        format!("{e}.position_embedding.weight"),
        &[patches + 1, HIDDEN],
        normal(&mut rng, (patches + 1) * HIDDEN, STD),
    )?;
    let ones = |n| vec![1.0f32; n];
    let zeros = |n| vec![0.0f32; n];
    for norm in ["pre_layrnorm", "post_layernorm"] {
        put(
            format!("vision_model.{norm}.weight"),
            &[HIDDEN],
            ones(HIDDEN),
        )?;
        put(
            format!("vision_model.{norm}.bias"),
            &[HIDDEN],
            zeros(HIDDEN),
        )?;
    }
    for l in 0..LAYERS {
        let p = format!("vision_model.encoder.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            put(
                format!("{p}.self_attn.{proj}.weight"),
                &[HIDDEN, HIDDEN],
                normal(&mut rng, HIDDEN * HIDDEN, STD),
            )?;
            put(
                format!("{p}.self_attn.{proj}.bias"),
                &[HIDDEN],
                zeros(HIDDEN),
            )?;
        }
        put(
            format!("{p}.mlp.fc1.weight"),
            &[INTERMEDIATE, HIDDEN],
            normal(&mut rng, INTERMEDIATE * HIDDEN, STD),
        )?;
        put(
            format!("{p}.mlp.fc1.bias"),
            &[INTERMEDIATE],
            zeros(INTERMEDIATE),
        )?;
        put(
            format!("{p}.mlp.fc2.weight"),
            &[HIDDEN, INTERMEDIATE],
            normal(&mut rng, INTERMEDIATE * HIDDEN, STD),
        )?;
        put(format!("{p}.mlp.fc2.bias"), &[HIDDEN], zeros(HIDDEN))?;
        for norm in ["layer_norm1", "layer_norm2"] {
            put(format!("{p}.{norm}.weight"), &[HIDDEN], ones(HIDDEN))?;
            put(format!("{p}.{norm}.bias"), &[HIDDEN], zeros(HIDDEN))?;
        }
    }
    Ok(out)
}

/// Writes the named built-in tower as a CLIP directory (config.json,
/// preprocessor_config.json, model.safetensors) at `out`, which must not exist yet.
pub fn write_dir(name: &str, out: &Path) -> Result<()> {
    if !BUILTIN_TOWERS.contains(&name) {
        return Err(Error::Request(format!(
            "unknown built-in vision tower `builtin:{name}` (available: {})",
            BUILTIN_TOWERS
                .iter()
                .map(|m| format!("builtin:{m}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let files = [
        ("config.json", config()),
        ("preprocessor_config.json", preprocessor_config()),
    ];
    Ok(sightline_model::llama2c::write_hf_dir(
        out,
        &files,
        &tensors()?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::{ClipVisionConfig, ClipVisionTower};

    #[test]
    fn tiny_clip_loads_as_a_clip_tower_and_is_the_same_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        write_dir("tiny-clip", &a).unwrap();
        write_dir("tiny-clip", &b).unwrap();
        let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert_eq!(bytes(&a), bytes(&b));
        let cfg = ClipVisionConfig::from_file(&a.join("config.json")).unwrap();
        assert_eq!(cfg.num_patches(), 16);
        let tower =
            ClipVisionTower::from_dir(&a, -2, candle_core::DType::F32, &Device::Cpu).unwrap();
        let pixels =
            Tensor::zeros((1, 3, IMAGE, IMAGE), candle_core::DType::F32, &Device::Cpu).unwrap();
        let h = tower.hidden_state(&pixels).unwrap();
        assert_eq!(h.dims(), &[1, 17, HIDDEN]);
        assert!(write_dir("huge-clip", &dir.path().join("c")).is_err());
        assert!(
            write_dir("tiny-clip", &a).is_err(),
            "must not replace a directory"
        );
    }
}
