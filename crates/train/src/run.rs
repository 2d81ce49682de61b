//! A whole training run, as `sightline train` drives it: HF Trainer's loop (epochs of seeded
//! order, micro-batches, gradient-accumulation groups, `max_steps`), a JSONL line per optimizer
//! step, `checkpoint-N/` every `save_steps` with `save_total_limit` honoured, resuming from the
//! newest checkpoint with identical losses, and the final artefacts in the formats users load.
//!
//! Layout of `output_dir`:
//! - `train_log.jsonl`: `{step, epoch, loss, lr, grad_norm, tokens, seconds}` per step;
//! - `data_order.json`: the seed and each epoch's permutation of the training records;
//! - `train_config.json`: the resolved settings;
//! - `checkpoint-N/`: the artefacts plus `trainer_state.json` and `trainer_state.safetensors`
//!   (trainable tensors, AdamW moments; f32, the masters of a bf16 run), enough to resume
//!   exactly;
//! - the final artefacts (see [`crate::artifacts`]);
//! - while a checkpoint is written, `.checkpoint-N.tmp-<pid>/`, renamed to `checkpoint-N/` when
//!   whole. A run killed meanwhile leaves it behind, `--resume` ignores and removes it; a save
//!   that fails (a full disk) removes it itself and leaves the earlier checkpoints as they were.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::artifacts;
use crate::checkpoint::{atomic_write, temp_dir_for, write_tensors};
use crate::config::TrainConfig;
use crate::dataset::{collate, epoch_order};
use crate::error::{Error, Result};
use crate::finetune::{Batch, ImageInput, Trainer};
use crate::setup::build;

/// One optimizer step, as logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    pub step: usize,
    /// Fractional epoch at the end of the step (HF's `epoch` in logs).
    pub epoch: f64,
    /// The loss the step trained on, as HF Trainer logs it with `logging_steps = 1` (see
    /// [`crate::finetune::group_loss`]): under `accum_loss = "tokens"` the group's summed
    /// cross-entropy over its label count, under `"mean"` the mean of the micro-batch mean
    /// losses; None when no micro-batch had a trained token (every label −100, e.g. answers
    /// truncated away): nothing was back-propagated (HF logs 0 or, through
    /// `logging_nan_inf_filter`, the running average there).
    pub loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    /// Positions processed (spliced image rows included).
    pub tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
}

/// What the loop tells its caller (the CLI's progress bar).
pub enum Event<'a> {
    /// Before the first step: total steps, the step to start from (non-zero on resume) and the
    /// number of training samples.
    Start {
        total_steps: usize,
        start_step: usize,
        samples: usize,
        skipped_mismatch: usize,
    },
    Step(&'a StepLog),
    /// A checkpoint directory was written.
    Saved(&'a Path),
}

/// How the run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub samples: usize,
    pub skipped_mismatch: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub final_loss: Option<f64>,
    /// Optimizer steps in which no micro-batch had a trained token.
    pub empty_steps: usize,
    pub output_dir: PathBuf,
}

/// Run options that are not settings of the run itself.
pub struct RunOptions {
    pub device: Device,
    /// Continue from the newest `checkpoint-N` of `output_dir`.
    pub resume: bool,
    /// Stop after this many optimizer steps of this invocation (tests use it to interrupt a
    /// run; the schedule still follows `max_steps`/epochs).
    pub stop_after: Option<usize>,
}

/// Saved loop position (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoopState {
    global_step: usize,
    epoch: usize,
    /// Accumulation groups of `epoch` already done.
    group_in_epoch: usize,
    /// LoRA dropout stream position (decimal string: JSON has no u128).
    lora_rng: Option<String>,
    seed: u64,
    total_steps: usize,
}

const STATE_JSON: &str = "trainer_state.json";
const STATE_TENSORS: &str = "trainer_state.safetensors";
const LOG: &str = "train_log.jsonl";

/// Runs (or resumes) training; `on_event` sees progress.
pub fn run(
    cfg: &TrainConfig,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    let out = PathBuf::from(&cfg.output_dir);
    let resume_from = resume_point(&out, opts)?;
    if resume_from.is_some() {
        // The run owns its folder: what a killed run of it left half-written goes.
        sightline_guard::temp::remove_stale_in(&out).map_err(|e| Error::io(&out, e))?;
    }
    let setup = build(cfg, &opts.device)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let (data, vision, pad_id) = (&setup.data, &setup.vision, setup.pad_id);
    let n = data.len();
    let total_steps = cfg.total_steps(n);
    let micro_per_epoch = n.div_ceil(cfg.per_device_train_batch_size);
    let groups_per_epoch = micro_per_epoch.div_ceil(cfg.gradient_accumulation_steps);
    let mut trainer = Trainer::new(
        setup.model,
        setup.projector,
        cfg.optim_settings(total_steps),
    );
    trainer.stage1_branch = cfg.tune_mm_mlp_adapter && cfg.mm_use_im_start_end;
    trainer.set_gradient_checkpointing(cfg.gradient_checkpointing);
    let saver = artifacts::Saver {
        cfg,
        llm_config: &setup.llm_config,
        tokenizer: &setup.tokenizer,
        base_dir: &setup.base_dir,
        base_vocab: setup.base_vocab,
        vision_dir: vision.as_ref().map(|v| v.dir.as_path()),
    };

    let (mut epoch, mut group_in_epoch) =
        start_or_resume(&out, cfg, resume_from.as_deref(), &mut trainer)?;
    on_event(Event::Start {
        total_steps,
        start_step: trainer.step(),
        samples: n,
        skipped_mismatch: data.skipped_mismatch,
    });
    let mut orders: Vec<Vec<usize>> = (0..=epoch).map(|e| epoch_order(n, cfg.seed, e)).collect();
    write_order(&out, cfg.seed, &orders, data)?;
    let started = Instant::now();
    let (mut tokens_total, mut last_loss, mut done_here) = (0usize, None, 0usize);
    let mut empty_steps = 0;
    'epochs: while trainer.step() < total_steps {
        while group_in_epoch < groups_per_epoch {
            if trainer.step() >= total_steps || opts.stop_after.is_some_and(|s| done_here >= s) {
                break 'epochs;
            }
            let t0 = Instant::now();
            let micro = group_in_epoch * cfg.gradient_accumulation_steps..micro_per_epoch;
            let group = collate_group(cfg, data, &orders[epoch], micro, pad_id, vision, opts)?;
            let report = trainer.train_step(&group)?;
            group_in_epoch += 1;
            done_here += 1;
            empty_steps += usize::from(report.loss.is_none());
            last_loss = report.loss;
            tokens_total += report.tokens;
            let log = StepLog {
                step: trainer.step(),
                epoch: epoch as f64 + group_in_epoch as f64 / groups_per_epoch as f64,
                loss: report.loss,
                lr: report.lr,
                grad_norm: report.grad_norm,
                tokens: report.tokens,
                seconds: t0.elapsed().as_secs_f64(),
            };
            append_log(&out.join(LOG), &log)?;
            on_event(Event::Step(&log));
            let step = trainer.step();
            if step.is_multiple_of(cfg.save_steps) && step < total_steps {
                let at = (epoch, group_in_epoch);
                let dir = write_checkpoint(&out, cfg, &saver, &trainer, at, total_steps)?;
                on_event(Event::Saved(&dir));
            }
        }
        epoch += 1;
        group_in_epoch = 0;
        if orders.len() <= epoch {
            orders.push(epoch_order(n, cfg.seed, epoch));
            write_order(&out, cfg.seed, &orders, data)?;
        }
    }
    let at = (epoch, group_in_epoch);
    save_at_end(&out, cfg, &saver, &trainer, at, total_steps, on_event)?;
    Ok(Summary {
        steps: trainer.step(),
        samples: n,
        skipped_mismatch: data.skipped_mismatch,
        tokens: tokens_total,
        seconds: started.elapsed().as_secs_f64(),
        final_loss: last_loss,
        empty_steps,
        output_dir: out,
    })
}

/// Restores the trainer and the data position from `resume_from` (cutting the log back to
/// its step), or records the run's config for a fresh run; returns (epoch, group in epoch).
fn start_or_resume(
    out: &Path,
    cfg: &TrainConfig,
    resume_from: Option<&Path>,
    trainer: &mut Trainer,
) -> Result<(usize, usize)> {
    let Some(dir) = resume_from else {
        let json = serde_json::to_string_pretty(cfg)
            .map_err(|e| Error::Config(format!("train_config.json: {e}")))?;
        atomic_write(&out.join("train_config.json"), json.as_bytes())?;
        return Ok((0, 0));
    };
    let st = load_state(dir, trainer)?;
    truncate_log(&out.join(LOG), st.global_step)?;
    Ok((st.epoch, st.group_in_epoch))
}

/// The final artefacts when the run is complete; otherwise (interrupted on purpose by
/// `stop_after`) a checkpoint to resume from, unless this step already has one.
fn save_at_end(
    out: &Path,
    cfg: &TrainConfig,
    saver: &artifacts::Saver,
    trainer: &Trainer,
    at: (usize, usize),
    total_steps: usize,
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    if trainer.step() >= total_steps {
        return saver.save_final(out, trainer);
    }
    if !out.join(format!("checkpoint-{}", trainer.step())).exists() {
        let dir = write_checkpoint(out, cfg, saver, trainer, at, total_steps)?;
        on_event(Event::Saved(&dir));
    }
    Ok(())
}

/// The checkpoint `--resume` continues from, or None for a fresh run, which needs an empty (or
/// absent) output directory: sightline never overwrites a run.
fn resume_point(out: &Path, opts: &RunOptions) -> Result<Option<PathBuf>> {
    if opts.resume {
        return Ok(Some(newest_checkpoint(out)?.ok_or_else(|| {
            Error::Config(format!(
                "--resume: {} has no checkpoint-N directory to resume from",
                out.display()
            ))
        })?));
    }
    let non_empty = out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
    if non_empty {
        return Err(Error::Config(format!(
            "output_dir {} is not empty: pass --resume to continue its run, or choose \
             another output_dir (sightline never overwrites a run)",
            out.display()
        )));
    }
    Ok(None)
}

/// The micro-batches of one accumulation group: micro-batches `micro.start..` of the epoch's
/// `order`, at most `gradient_accumulation_steps` of them (`micro.end` is the epoch's count).
fn collate_group(
    cfg: &TrainConfig,
    data: &crate::dataset::Dataset,
    order: &[usize],
    micro: std::ops::Range<usize>,
    pad_id: u32,
    vision: &Option<crate::setup::Vision>,
    opts: &RunOptions,
) -> Result<Vec<Batch>> {
    let (bs, n) = (cfg.per_device_train_batch_size, data.len());
    let last = (micro.start + cfg.gradient_accumulation_steps).min(micro.end);
    (micro.start..last)
        .map(|m| {
            let idx = &order[m * bs..((m + 1) * bs).min(n)];
            let rows: Vec<_> = idx.iter().map(|&i| &data.samples[i]).collect();
            let (max_len, device) = (cfg.model_max_length, &opts.device);
            make_batch(&rows, max_len, pad_id, vision.as_ref(), device)
        })
        .collect()
}

/// Collates one micro-batch and attaches the CLIP features of its images.
fn make_batch(
    rows: &[&crate::dataset::TrainSample],
    max_len: usize,
    pad_id: u32,
    vision: Option<&crate::setup::Vision>,
    device: &Device,
) -> Result<Batch> {
    let c = collate(rows, max_len, pad_id, device)?;
    let image = match vision {
        Some(v) if c.images.iter().any(Option::is_some) => {
            let paths: Vec<&Path> = c
                .images
                .iter()
                .filter_map(|x| x.as_ref().map(|(_, p)| p.as_path()))
                .collect();
            let feats = v.features(&paths, device)?;
            let (_, np, vd) = feats.dims3()?;
            let zeros = Tensor::zeros((np, vd), feats.dtype(), device)?;
            let mut k = 0;
            let mut per_row = Vec::with_capacity(c.images.len());
            for img in &c.images {
                if img.is_some() {
                    per_row.push(feats.get(k)?);
                    k += 1;
                } else {
                    per_row.push(zeros.clone());
                }
            }
            Some(ImageInput {
                features: Tensor::stack(&per_row, 0)?,
                positions: c
                    .images
                    .iter()
                    .map(|x| x.as_ref().map(|(p, _)| *p))
                    .collect(),
            })
        }
        _ => None,
    };
    Ok(Batch {
        input_ids: c.input_ids,
        labels: c.labels,
        image,
    })
}

fn lora_position(trainer: &Trainer) -> Result<Option<u128>> {
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
fn checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
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
fn rotate(out: &Path, limit: Option<usize>) -> Result<()> {
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
fn write_checkpoint(
    out: &Path,
    cfg: &TrainConfig,
    saver: &artifacts::Saver,
    trainer: &Trainer,
    (epoch, group_in_epoch): (usize, usize),
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
    };
    save_checkpoint(&dir, saver, trainer, &state)?;
    rotate(out, cfg.save_total_limit)?;
    Ok(dir)
}

/// Writes a checkpoint into a temporary sibling directory and renames it into place, so a
/// run killed mid-save leaves no half-written `checkpoint-N`. A failed save (a full disk)
/// removes its temporary and names the checkpoint's file; earlier checkpoints are untouched
/// (rotation runs only after a save succeeded).
fn save_checkpoint(
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
fn save_checkpoint_files(
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
fn load_state(dir: &Path, trainer: &mut Trainer) -> Result<LoopState> {
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

fn append_log(path: &Path, log: &StepLog) -> Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(log).map_err(|e| Error::Config(format!("log: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// On resume, drops log lines past the checkpoint's step (atomically).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<StepLog>(l)
                .map(|s| s.step <= step)
                .unwrap_or(false)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    atomic_write(path, out.as_bytes())
}

fn write_order(
    out: &Path,
    seed: u64,
    orders: &[Vec<usize>],
    data: &crate::dataset::Dataset,
) -> Result<()> {
    // Record indices in the data file, per epoch, in training order.
    let epochs: Vec<Vec<usize>> = orders
        .iter()
        .map(|o| o.iter().map(|&i| data.samples[i].index).collect())
        .collect();
    let v = serde_json::json!({
        "seed": seed,
        "algorithm": "sightline_data::sample::permutation(n, seed + epoch)",
        "data_path": data.path,
        "epochs": epochs,
    });
    let text = serde_json::to_string(&v).map_err(|e| Error::Config(format!("order: {e}")))?;
    atomic_write(&out.join("data_order.json"), text.as_bytes())
}
