//! Checkpoint artefacts (spec T11), each file written atomically (a temp file in the same
//! directory, then `rename`), so a run killed mid-save never leaves a truncated checkpoint:
//!
//! - full weights: `model.safetensors` with HF names + `config.json` and tokenizer files copied
//!   from the base model, loadable by `sightline_model::load` and transformers;
//! - the projector: `mm_projector.safetensors` with `model.mm_projector.{weight,bias}`;
//! - LoRA: PEFT's `adapter_config.json` + `adapter_model.safetensors`
//!   (`base_model.model.<module>.lora_{A,B}.weight`), loadable by
//!   `sightline_model::LoraAdapter::from_dir` and `PeftModel.from_pretrained`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::param::NamedParam;
use sightline_guard::temp::temp_path;
use sightline_model::Llama;
use sightline_vision::projector::Projector;

/// Files copied from the base model next to saved full weights (those that exist).
pub const COPIED_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

/// A fresh, empty temporary sibling of `dir` (`.<name>.tmp-<pid>`, see
/// [`sightline_guard::temp`]), for writing a whole directory and renaming it into place.
/// Temporaries of `dir` that a killed run left are removed first.
pub fn temp_dir_for(dir: &Path) -> Result<PathBuf> {
    sightline_guard::temp::remove_stale(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = temp_path(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    create_dir(&tmp)?;
    Ok(tmp)
}

/// Copies those of `files` that exist in `base` into `dir`, each atomically.
pub fn copy_base_files(base: &Path, dir: &Path, files: &[&str]) -> Result<()> {
    for f in files {
        let src = base.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            atomic_write(&dir.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` via a temp file in the same directory and a rename; a failed
/// write (a full disk) removes its temp file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = std::fs::write(&tmp, bytes)
        .map_err(|e| Error::io(path, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Saves named tensors as one safetensors file, atomically.
pub fn save_safetensors(path: &Path, tensors: &[NamedParam]) -> Result<()> {
    save_safetensors_as(path, tensors, None)
}

/// [`save_safetensors`] with every tensor converted to `dtype` when given (a bf16 run's
/// artefacts: f32 masters and bf16 frozen weights saved alike as bf16).
pub fn save_safetensors_as(
    path: &Path,
    tensors: &[NamedParam],
    dtype: Option<DType>,
) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|p| {
            let t = p.param.tensor();
            Ok((p.name.clone(), t.to_dtype(dtype.unwrap_or(t.dtype()))?))
        })
        .collect::<Result<_>>()?;
    let tmp = temp_path(path);
    let result = write_tensors(&map, &tmp)
        .map_err(|e| e.renamed(&tmp, path))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A safetensors file as transformers writes it ([`sightline_model::weights::save_safetensors`]),
/// with an I/O error naming the file: a full disk is then one line, "PATH: No space left on
/// device", not candle's bare "I/O error".
pub fn write_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    sightline_model::weights::save_safetensors(map, path).map_err(|e| match io_cause(&e) {
        Some(err) => Error::io(path, err),
        None => Error::Candle(e),
    })
}

/// The operating-system error under a candle error (candle wraps the safetensors crate's
/// error, which wraps it), re-created because it cannot be moved out from behind `source()`.
fn io_cause(e: &candle_core::Error) -> Option<std::io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            });
        }
        cause = c.source();
    }
    None
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Full weights (frozen and trained) as `dir/model.safetensors` with HF names, plus the base
/// model's config and tokenizer files from `base_dir` (when given).
pub fn save_full(dir: &Path, model: &Llama, base_dir: Option<&Path>) -> Result<()> {
    create_dir(dir)?;
    if model.lora_spec().is_some() {
        return Err(Error::Config(
            "the model has unmerged LoRA adapters: save them with save_lora (or merge first)"
                .into(),
        ));
    }
    save_safetensors(&dir.join("model.safetensors"), model.base_params())?;
    if let Some(base) = base_dir {
        copy_base_files(base, dir, COPIED_FILES)?;
    }
    Ok(())
}

/// The projector as `dir/mm_projector.safetensors` (LLaVA's stage-1 artefact).
pub fn save_projector(dir: &Path, projector: &Projector) -> Result<()> {
    create_dir(dir)?;
    save_safetensors(&dir.join("mm_projector.safetensors"), &projector.params())
}

/// The LoRA adapter in PEFT's format; `base_model` goes to `base_model_name_or_path`.
pub fn save_lora(dir: &Path, model: &Llama, base_model: &str) -> Result<()> {
    let spec = model
        .lora_spec()
        .ok_or_else(|| Error::Config("the model has no LoRA adapters to save".into()))?;
    create_dir(dir)?;
    save_safetensors(&dir.join("adapter_model.safetensors"), &model.lora_params())?;
    let cfg = sightline_model::lora::adapter_config_json(spec, base_model);
    let text = serde_json::to_string_pretty(&cfg)
        .map_err(|e| Error::Config(format!("adapter_config.json: {e}")))?;
    atomic_write(
        &dir.join(sightline_model::lora::ADAPTER_CONFIG),
        text.as_bytes(),
    )
}
