//! What a run leaves behind, per kind of run, in the formats users load (spec T11):
//!
//! | run | files | load it with |
//! | --- | --- | --- |
//! | stage 1 (`tune_mm_mlp_adapter`) | `mm_projector.safetensors` (projector, plus the grown `model.embed_tokens.weight` when it trained) + `config.json` (LLaVA `mm_*` fields) | `--model BASE --mm-projector OUT/mm_projector.safetensors --vision-tower CLIP` |
//! | stage 2 full | an original-layout LLaVA checkpoint: `model.safetensors` (decoder + `model.mm_projector.*`), `config.json` (`LlavaLlamaForCausalLM`, `mm_vision_tower` = the tower used), grown `tokenizer.json` | `--model OUT` |
//! | stage 2 LoRA | PEFT `adapter_config.json` + `adapter_model.safetensors` with the projector under `modules_to_save`, and `mm_projector.safetensors` + `config.json` as stage 1 writes them | `--model BASE --mm-projector OUT/mm_projector.safetensors --adapter OUT` |
//! | text-only full | an HF LLaMA checkpoint (`model.safetensors`, `config.json`, tokenizer files) | `--model OUT` |
//! | text-only LoRA | PEFT `adapter_config.json` + `adapter_model.safetensors` | `--model BASE --adapter OUT` |
//!
//! Every file is written atomically (temp file + rename); a run's final set is written whole
//! into a temporary folder first ([`Saver::save_final`]). A `bf16 = true` run saves these
//! tensors in bf16 (its `config.json` says `torch_dtype = "bfloat16"`), as LLaVA's bf16 runs do;
//! the f32 masters stay in the checkpoints' resume state.

use std::path::Path;

use sightline_model::Tokenizer;

use candle_core::DType;

use crate::checkpoint::{
    atomic_write, copy_base_files, save_safetensors_as, temp_dir_for, COPIED_FILES,
};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::finetune::Trainer;
use crate::param::NamedParam;
use sightline_model::lora::adapter_config_json;

/// Writes a run's artefacts into a directory.
pub struct Saver<'a> {
    pub cfg: &'a TrainConfig,
    /// The base `config.json` with the grown `vocab_size`.
    pub llm_config: &'a serde_json::Value,
    pub tokenizer: &'a Tokenizer,
    pub base_dir: &'a Path,
    /// The base model's vocabulary before LLaVA's growth.
    pub base_vocab: usize,
    /// The CLIP tower directory (absolute), for multimodal runs.
    pub vision_dir: Option<&'a Path>,
}

impl Saver<'_> {
    /// Writes the artefacts of the trainer's current state into `dir` (created if needed).
    pub fn save(&self, dir: &Path, trainer: &Trainer) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg = self.cfg;
        let projector = trainer.projector.as_ref().map(|p| p.params());
        let lora = trainer.model.lora_spec().is_some();
        if cfg.tune_mm_mlp_adapter {
            self.save_stage1(dir, trainer, projector.unwrap_or_default())
        } else if lora {
            let spec = trainer
                .model
                .lora_spec()
                .ok_or_else(|| Error::Config("no LoRA settings".into()))?;
            let mut tensors = trainer.model.lora_params();
            let mut config = adapter_config_json(spec, &cfg.model_name_or_path);
            if let Some(proj) = &projector {
                // PEFT saves a `modules_to_save` module under its own name, adapter dropped.
                for p in proj {
                    tensors.push(NamedParam {
                        name: format!("base_model.model.{}", p.name),
                        param: p.param.clone(),
                    });
                }
                config["modules_to_save"] = serde_json::json!(["mm_projector"]);
                self.save_stage1(dir, trainer, proj.clone())?;
            }
            self.save_tensors(&dir.join("adapter_model.safetensors"), &tensors)?;
            write_json(&dir.join(sightline_model::lora::ADAPTER_CONFIG), &config)
        } else {
            let mut tensors = trainer.model.base_params().to_vec();
            tensors.extend(projector.clone().unwrap_or_default());
            self.save_tensors(&dir.join("model.safetensors"), &tensors)?;
            let config = if projector.is_some() {
                self.llava_config()
            } else {
                self.llm_config.clone()
            };
            write_json(&dir.join("config.json"), &self.with_dtype(config))?;
            self.save_tokenizer(dir)
        }
    }

    /// The final artefacts into `out`: written together into a temporary folder inside it
    /// (`.final.tmp-<pid>`) and moved into place file by file only when all are written, so a
    /// failure (a full disk) puts none of them in `out`, and a kill leaves at most some whole
    /// files there. `--resume` removes a temporary folder a killed run left.
    pub fn save_final(&self, out: &Path, trainer: &Trainer) -> Result<()> {
        let tmp = temp_dir_for(&out.join("final"))?;
        let result = self
            .save(&tmp, trainer)
            .and_then(|()| move_files(&tmp, out));
        let _ = std::fs::remove_dir_all(&tmp);
        result.map_err(|e| e.renamed(&tmp, out))
    }

    /// `mm_projector.safetensors` (+ the input embedding when the vocabulary grew) and the
    /// LLaVA `config.json` that tells the loader the projector type and tower.
    fn save_stage1(&self, dir: &Path, trainer: &Trainer, proj: Vec<NamedParam>) -> Result<()> {
        let mut tensors = proj;
        if trainer.model.config.vocab_size > self.base_vocab {
            if let Some(e) = trainer
                .model
                .base_params()
                .iter()
                .find(|p| p.name == "model.embed_tokens.weight")
            {
                tensors.push(e.clone());
            }
        }
        self.save_tensors(&dir.join("mm_projector.safetensors"), &tensors)?;
        write_json(
            &dir.join("config.json"),
            &self.with_dtype(self.llava_config()),
        )
    }

    /// The dtype artefacts are saved in: bf16 for a `bf16 = true` run (as LLaVA's bf16 runs
    /// save them; the f32 masters live on in `checkpoint-N/trainer_state.safetensors`), else
    /// each tensor's own (f32).
    fn dtype(&self) -> Option<DType> {
        self.cfg.bf16.then_some(DType::BF16)
    }

    fn save_tensors(&self, path: &Path, tensors: &[NamedParam]) -> Result<()> {
        save_safetensors_as(path, tensors, self.dtype())
    }

    /// A saved `config.json` with `torch_dtype` saying what the weights beside it are.
    fn with_dtype(&self, mut config: serde_json::Value) -> serde_json::Value {
        if let (Some(_), Some(o)) = (self.dtype(), config.as_object_mut()) {
            o.insert("torch_dtype".into(), "bfloat16".into());
        }
        config
    }

    /// The decoder config as an original-layout LLaVA config (spec M9.1).
    fn llava_config(&self) -> serde_json::Value {
        let cfg = self.cfg;
        let mut v = self.llm_config.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "architectures".into(),
                serde_json::json!(["LlavaLlamaForCausalLM"]),
            );
            o.insert("model_type".into(), "llava".into());
            if let Some(dir) = self.vision_dir {
                o.insert("mm_vision_tower".into(), dir.display().to_string().into());
            }
            o.insert(
                "mm_projector_type".into(),
                cfg.mm_projector_type.clone().into(),
            );
            o.insert(
                "mm_vision_select_layer".into(),
                cfg.mm_vision_select_layer.into(),
            );
            o.insert(
                "mm_vision_select_feature".into(),
                cfg.mm_vision_select_feature.clone().into(),
            );
            o.insert("mm_use_im_start_end".into(), cfg.mm_use_im_start_end.into());
            o.insert(
                "mm_use_im_patch_token".into(),
                cfg.mm_use_im_patch_token.into(),
            );
            o.insert("tune_mm_mlp_adapter".into(), cfg.tune_mm_mlp_adapter.into());
            o.insert("use_mm_proj".into(), true.into());
            o.insert("image_aspect_ratio".into(), "square".into());
        }
        v
    }

    /// The grown `tokenizer.json` and the base model's other tokenizer files.
    fn save_tokenizer(&self, dir: &Path) -> Result<()> {
        atomic_write(
            &dir.join("tokenizer.json"),
            self.tokenizer.to_json()?.as_bytes(),
        )?;
        let others: Vec<&str> = COPIED_FILES
            .iter()
            .copied()
            .filter(|f| !matches!(*f, "config.json" | "tokenizer.json"))
            .collect();
        copy_base_files(self.base_dir, dir, &others)
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    atomic_write(path, text.as_bytes())
}

/// Renames every file of `from` into `to` (same file system: no copying, no space needed).
fn move_files(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let target = to.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}
