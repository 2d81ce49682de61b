//! Checkpoint files: safetensors headers, shard indexes, `config.json` (LLaMA and both LLaVA
//! layouts, with the image processor's and the vision tower's configs), tokenizers, PyTorch
//! pickles and PEFT adapter configs.

use std::path::Path;

use candle_core::{DType, Device};
use sightline_model::config::read_checkpoint_config;
use sightline_model::lora::LoraConfig;
use sightline_model::{Tokenizer, Weights};
use sightline_vision::clip::ClipVisionConfig;
use sightline_vision::preprocess::ImageProcessorConfig;

use crate::{parts, put, scratch};

/// How many bytes of storage [`pickle`] hands a tensor: the pickle alone may declare any size
/// (the archive's entry bounds it in a real file), so larger storages are refused here.
const PICKLE_STORAGE_CAP: u64 = 1 << 20;

/// A `model.safetensors`: the header (names, dtypes, shapes, offsets) through
/// [`Weights::from_file`], then every tensor loaded as the model loads it (converted to f32).
pub fn safetensors(data: &[u8]) {
    let dir = scratch();
    let path = put(dir.path(), "model.safetensors", data);
    if let Ok(w) = Weights::from_file(&path, DType::F32, &Device::Cpu) {
        for name in w.names() {
            let _ = w.get_any_shape(&name);
        }
    }
}

/// A `model.safetensors.index.json` alone in its folder, through [`Weights::from_dir`]: the
/// `weight_map`, the shard names' containment check, the shards' existence.
pub fn shard_index(data: &[u8]) {
    let dir = scratch();
    put(dir.path(), "model.safetensors.index.json", data);
    let _ = Weights::from_dir(dir.path(), DType::F32, &Device::Cpu);
}

/// `config.json` NUL `preprocessor_config.json` NUL the vision tower's `config.json`: the
/// layout and decoder config ([`read_checkpoint_config`]), the multimodal keys of either LLaVA
/// layout ([`sightline_vision::llava::check_mm_config`]), the image processor's settings and
/// the CLIP tower's config, as `Llava::load` reads them.
pub fn model_config(data: &[u8]) {
    let dir = scratch();
    let p = parts(data, 3);
    let config = put(dir.path(), "config.json", p[0]);
    if let Ok((layout, _, raw)) = read_checkpoint_config(&config) {
        let _ = sightline_vision::llava::check_mm_config(layout, &raw, &config);
    }
    if let Some(text) = p.get(1).and_then(|b| std::str::from_utf8(b).ok()) {
        let _ = ImageProcessorConfig::from_json_str(text, Path::new("preprocessor_config.json"));
    }
    if let Some(bytes) = p.get(2) {
        let tower = put(dir.path(), "tower/config.json", bytes);
        let _ = ClipVisionConfig::from_file(&tower);
    }
}

/// `tokenizer.json` NUL `tokenizer_config.json` (absent when there is no NUL) through
/// [`Tokenizer::from_dir`], then the calls every command makes: encode a prompt with and
/// without BOS, decode it back, look up the image token.
pub fn tokenizer(data: &[u8]) {
    let dir = scratch();
    let p = parts(data, 2);
    put(dir.path(), "tokenizer.json", p[0]);
    if let Some(cfg) = p.get(1) {
        put(dir.path(), "tokenizer_config.json", cfg);
    }
    let Ok(mut tok) = Tokenizer::from_dir(dir.path(), Some(1), Some(2)) else {
        return;
    };
    let text = "USER: <image>\nWhat is in the picture? ASSISTANT: A cat. </s>";
    if let Ok(ids) = tok.encode_prompt(text) {
        let _ = tok.decode(&ids, true);
        let _ = tok.decode(&ids, false);
    }
    let _ = tok.encode(text);
    let id = tok.add_special_token("<image>");
    let _ = tok.id_to_token(id);
    let _ = tok.to_json();
}

/// A `data.pkl` (the pickle inside a `.bin`) through
/// [`sightline_model::pickle::tensors_from_pickle`]: the opcode reader, the global allow-list,
/// torch's rebuild calls and every view's check against its storage, with each storage
/// holding exactly the bytes it declares (up to [`PICKLE_STORAGE_CAP`]).
pub fn pickle(data: &[u8]) {
    let storage = |_key: &str, declared: u64| {
        if declared > PICKLE_STORAGE_CAP {
            return Err(format!(
                "declares {declared} bytes (fuzzing hands out at most {PICKLE_STORAGE_CAP})"
            ));
        }
        Ok(vec![0u8; declared as usize])
    };
    let _ = sightline_model::pickle::tensors_from_pickle(
        data,
        Path::new("pytorch_model.bin"),
        Path::new("pytorch_model.bin/archive/data.pkl"),
        storage,
    );
}

/// A whole `pytorch_model.bin` (the zip archive torch.save writes) through
/// [`Weights::from_file`]: the archive, its entries' sizes, the pickle, the storages.
pub fn pickle_zip(data: &[u8]) {
    let dir = scratch();
    let path = put(dir.path(), "pytorch_model.bin", data);
    if let Ok(w) = Weights::from_file(&path, DType::F32, &Device::Cpu) {
        for name in w.names() {
            let _ = w.get_any_shape(&name);
        }
    }
}

/// An `adapter_config.json` through [`LoraConfig::from_json`] (what `from_file` calls on the
/// file's text), then the per-module rank and scaling lookups the adapter's layers make.
pub fn peft_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = LoraConfig::from_json(text, Path::new("adapter_config.json")) {
        for module in [
            "model.layers.0.self_attn.q_proj",
            "model.layers.1.mlp.down_proj",
            "lm_head",
        ] {
            let _ = cfg.rank_and_scaling(module);
        }
    }
}
