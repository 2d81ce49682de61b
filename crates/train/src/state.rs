//! `checkpoint-N/`'s resume state: `trainer_state.json` (the loop position, [`LoopState`]) and
//! `trainer_state.safetensors` (trainable tensors and AdamW moments, f32), written into a
//! temporary directory and renamed; listing, rotating (`save_total_limit`) and loading them.
//! Split from [`crate::run`], the loop that calls it.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::artifacts;
use crate::checkpoint::{temp_dir_for, write_tensors};
use crate::config::TrainConfig;
use crate::distributed::GlobalBatch;
use crate::error::{Error, Result};
use crate::finetune::Trainer;

/// Saved loop position (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoopState {
    pub(crate) global_step: usize,
    pub(crate) epoch: usize,
    /// Accumulation groups of `epoch` already done.
    pub(crate) group_in_epoch: usize,
    /// LoRA dropout stream position (decimal string: JSON has no u128).
    pub(crate) lora_rng: Option<String>,
    pub(crate) seed: u64,
    pub(crate) total_steps: usize,
    /// The batch geometry (absent in checkpoints from before data-parallel training).
    #[serde(default)]
    pub(crate) global_batch: Option<GlobalBatch>,
}

pub(crate) const STATE_JSON: &str = "trainer_state.json";
pub(crate) const STATE_TENSORS: &str = "trainer_state.safetensors";
pub(crate) fn lora_position(trainer: &Trainer) -> Result<Option<u128>> {
    trainer
        .model
        .lora_layers()
        .next()
        .map(|l| l.rng_position())
        .transpose()
        .map_err(Into::into)
}

/// The newest `checkpoint-N` directory of `out`, if any.
pub fn newest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoints(out)?.pop().map(|(_, p)| p))
}

/// `checkpoint-N` directories of `out`, oldest first.
pub(crate) fn checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !out.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if entry.path().join(STATE_JSON).is_file() {
                found.push((n, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// HF's `save_total_limit`: delete the oldest checkpoints beyond the limit.
pub(crate) fn rotate(out: &Path, limit: Option<usize>) -> Result<()> {
    let Some(limit) = limit else { return Ok(()) };
    let all = checkpoints(out)?;
    if all.len() > limit {
        for (_, dir) in &all[..all.len() - limit] {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    Ok(())
}

/// `output_dir/checkpoint-<step>` for the trainer's state at this loop position, then
/// `save_total_limit`'s rotation; returns the directory.
pub(crate) fn write_checkpoint(
    out: &Path,
    cfg: &TrainConfig,
    saver: &artifacts::Saver,
    trainer: &Trainer,
    (epoch, group_in_epoch, batch): (usize, usize, GlobalBatch),
    total_steps: usize,
) -> Result<PathBuf> {
    let step = trainer.step();
    let dir = out.join(format!("checkpoint-{step}"));
    let state = LoopState {
        global_step: step,
        epoch,
        group_in_epoch,
        lora_rng: lora_position(trainer)?.map(|p| p.to_string()),
        seed: cfg.seed,
        total_steps,
        global_batch: Some(batch),
    };
    save_checkpoint(&dir, saver, trainer, &state)?;
    rotate(out, cfg.save_total_limit)?;
    Ok(dir)
}

/// Writes a checkpoint into a temporary sibling directory and renames it into place, so a
/// run killed mid-save leaves no half-written `checkpoint-N`. A failed save (a full disk)
/// removes its temporary and names the checkpoint's file; earlier checkpoints are untouched
/// (rotation runs only after a save succeeded).
pub(crate) fn save_checkpoint(
    dir: &Path,
    saver: &artifacts::Saver,
    trainer: &Trainer,
    state: &LoopState,
) -> Result<()> {
    let tmp = temp_dir_for(dir)?;
    let result = save_checkpoint_files(&tmp, saver, trainer, state)
        .and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e)));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.renamed(&tmp, dir));
    }
    Ok(())
}

/// The artefacts, the trainable tensors with their AdamW moments, and the loop state.
pub(crate) fn save_checkpoint_files(
    tmp: &Path,
    saver: &artifacts::Saver,
    trainer: &Trainer,
    state: &LoopState,
) -> Result<()> {
    saver.save(tmp, trainer)?;
    let mut tensors = std::collections::HashMap::new();
    let dev = Device::Cpu;
    for ((p, (m, v)), i) in trainer
        .trainable()
        .iter()
        .zip(trainer.optimizer_moments())
        .zip(0..)
    {
        let t = p.param.tensor();
        tensors.insert(format!("{i}.param"), t.clone());
        tensors.insert(
            format!("{i}.exp_avg"),
            Tensor::from_slice(m, t.shape(), &dev)?,
        );
        tensors.insert(
            format!("{i}.exp_avg_sq"),
            Tensor::from_slice(v, t.shape(), &dev)?,
        );
    }
    write_tensors(&tensors, &tmp.join(STATE_TENSORS))?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::Config(format!("{STATE_JSON}: {e}")))?;
    let path = tmp.join(STATE_JSON);
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))
}

/// Restores trainable tensors, AdamW moments, the step and the dropout stream.
pub(crate) fn load_state(dir: &Path, trainer: &mut Trainer) -> Result<LoopState> {
    let path = dir.join(STATE_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let st: LoopState = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let tpath = dir.join(STATE_TENSORS);
    let dev = trainer.model.device().clone();
    let tensors = candle_core::safetensors::load(&tpath, &dev)?;
    let get = |k: String| -> Result<&Tensor> {
        tensors.get(&k).ok_or_else(|| {
            Error::Config(format!(
                "{}: no tensor `{k}` (the checkpoint is from a different run setup)",
                tpath.display()
            ))
        })
    };
    let names: Vec<String> = trainer.trainable().iter().map(|p| p.name.clone()).collect();
    let mut moments = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        trainer.set_param(name, get(format!("{i}.param"))?)?;
        let m = get(format!("{i}.exp_avg"))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let v = get(format!("{i}.exp_avg_sq"))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        moments.push((m, v));
    }
    trainer.restore_optimizer(st.global_step, moments)?;
    if let Some(pos) = &st.lora_rng {
        let pos: u128 = pos
            .parse()
            .map_err(|_| Error::Config(format!("{}: bad lora_rng", path.display())))?;
        for l in trainer.model.lora_layers().take(1) {
            l.set_rng_position(pos)?;
        }
    }
    Ok(st)
}
