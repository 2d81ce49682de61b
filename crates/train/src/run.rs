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
//!
//! Data-parallel ([`run_on`] with several ranks, see [`crate::distributed`]): every rank loads
//! the model and data and takes its slice of each global group; rank 0 alone reads the
//! checkpoint it resumes (then sends the state to the others) and writes everything above.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::artifacts;
use crate::checkpoint::atomic_write;
use crate::config::TrainConfig;
use crate::dataset::{collate, epoch_order};
use crate::distributed::{rank_micro_batches, sync_start, GlobalBatch};
use crate::error::{Error, Result};
use crate::finetune::{Batch, GroupSlice, ImageInput, Trainer};
use crate::setup::build;
pub use crate::state::newest_checkpoint;
use crate::state::{load_state, write_checkpoint};
use sightline_collective::{Collective, Single};

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
        /// AdamW values (two per trained weight) this rank holds, and in all: fewer under
        /// `zero_stage = 1` on several ranks.
        optimizer_values: (usize, usize),
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

const LOG: &str = "train_log.jsonl";

/// Runs (or resumes) training in one process; `on_event` sees progress.
pub fn run(
    cfg: &TrainConfig,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    run_on(cfg, opts, &Single, on_event)
}

/// [`run`] as one rank of `comm`: the global batch is `per_device_train_batch_size ×
/// gradient_accumulation_steps × comm.size()`, and the run's losses, steps and weights are
/// those of one process with `comm.size()` times the accumulation. Only rank 0 touches
/// `output_dir`; every rank's `on_event` sees the same steps.
pub fn run_on(
    cfg: &TrainConfig,
    opts: &RunOptions,
    comm: &dyn Collective,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    let out = PathBuf::from(&cfg.output_dir);
    let lead = comm.rank() == 0;
    let resume_from = if lead {
        lead_resume_point(&out, opts)?
    } else {
        None
    };
    let setup = build(cfg, &opts.device)?;
    if lead {
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    }
    let (data, n) = (&setup.data, setup.data.len());
    let world = comm.size();
    let total_steps = cfg.total_steps_on(n, world);
    let micro_per_epoch = n.div_ceil(cfg.per_device_train_batch_size);
    let batch = GlobalBatch {
        per_device_train_batch_size: cfg.per_device_train_batch_size,
        micro_batches_per_step: cfg.gradient_accumulation_steps * world,
    };
    let groups_per_epoch = micro_per_epoch.div_ceil(batch.micro_batches_per_step);
    let mut trainer = Trainer::new(
        setup.model,
        setup.projector,
        cfg.optim_settings(total_steps),
    );
    trainer.stage1_branch = cfg.tune_mm_mlp_adapter && cfg.mm_use_im_start_end;
    trainer.set_gradient_checkpointing(cfg.gradient_checkpointing);
    // ZeRO-1: ranks other than 0 shard before the start is shared, so that they never hold
    // the others' moments; rank 0 after it has passed on a resumed state.
    let zero = cfg.zero_stage == 1 && world > 1;
    if zero && !lead {
        trainer.shard_optimizer(comm)?;
    }
    let saver = artifacts::Saver {
        cfg,
        llm_config: &setup.llm_config,
        tokenizer: &setup.tokenizer,
        base_dir: &setup.base_dir,
        base_vocab: setup.base_vocab,
        vision_dir: setup.vision.as_ref().map(|v| v.dir.as_path()),
    };
    // Rank 0 alone reads a checkpoint; `sync_start` gives every rank its state and position.
    let at = if lead {
        start_or_resume(
            &out,
            cfg,
            resume_from.as_deref(),
            &mut trainer,
            batch,
            world,
        )?
    } else {
        (0, 0)
    };
    let (mut epoch, mut group_in_epoch) = sync_start(comm, &mut trainer, at)?;
    let optimizer_values = if zero {
        trainer.shard_optimizer(comm)?
    } else {
        let all = trainer.optimizer_values();
        (all, all)
    };
    on_event(Event::Start {
        total_steps,
        start_step: trainer.step(),
        samples: n,
        skipped_mismatch: data.skipped_mismatch,
        optimizer_values,
    });
    let mut orders: Vec<Vec<usize>> = (0..=epoch).map(|e| epoch_order(n, cfg.seed, e)).collect();
    if lead {
        write_order(&out, cfg.seed, &orders, data)?;
    }
    let (vision, pad_id, saver) = (&setup.vision, setup.pad_id, &saver);
    #[rustfmt::skip]
    let ctx = GroupCtx { cfg, opts, comm, out: &out, saver, data, vision, pad_id, batch, micro_per_epoch, groups_per_epoch, total_steps };
    let started = Instant::now();
    let (mut tokens_total, mut last_loss, mut done_here) = (0usize, None, 0usize);
    let mut empty_steps = 0;
    'epochs: while trainer.step() < total_steps {
        while group_in_epoch < groups_per_epoch {
            if trainer.step() >= total_steps || opts.stop_after.is_some_and(|s| done_here >= s) {
                break 'epochs;
            }
            let order = &orders[epoch];
            let report = run_group(&ctx, &mut trainer, order, epoch, group_in_epoch, on_event)?;
            group_in_epoch += 1;
            done_here += 1;
            empty_steps += usize::from(report.loss.is_none());
            last_loss = report.loss;
            tokens_total += report.tokens;
        }
        epoch += 1;
        group_in_epoch = 0;
        if orders.len() <= epoch {
            orders.push(epoch_order(n, cfg.seed, epoch));
            if lead {
                write_order(&out, cfg.seed, &orders, data)?;
            }
        }
    }
    let at = (epoch, group_in_epoch, batch);
    let saved =
        trainer.with_whole_state(comm, |t| save_at_end(&out, cfg, saver, t, at, total_steps))?;
    if let Some(Some(dir)) = saved {
        on_event(Event::Saved(&dir));
    }
    // No rank reports success before the run's files are in place.
    comm.barrier()?;
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

/// What every optimizer step of a run reads: the run's settings, this rank's place, where
/// rank 0 writes, the data, and the shape of the global batch.
struct GroupCtx<'a> {
    cfg: &'a TrainConfig,
    opts: &'a RunOptions,
    comm: &'a dyn Collective,
    out: &'a Path,
    saver: &'a artifacts::Saver<'a>,
    data: &'a crate::dataset::Dataset,
    vision: &'a Option<crate::setup::Vision>,
    pad_id: u32,
    batch: GlobalBatch,
    micro_per_epoch: usize,
    groups_per_epoch: usize,
    total_steps: usize,
}

/// One optimizer step: this rank's micro-batches of global group `group_in_epoch` of `epoch`
/// (in `order`), the step over all ranks, its log line (rank 0 writes it) and a checkpoint
/// when one is due.
fn run_group(
    c: &GroupCtx,
    trainer: &mut Trainer,
    order: &[usize],
    epoch: usize,
    group_in_epoch: usize,
    on_event: &mut dyn FnMut(Event),
) -> Result<crate::finetune::StepReport> {
    let (cfg, lead) = (c.cfg, c.comm.rank() == 0);
    let t0 = Instant::now();
    let per_step = c.batch.micro_batches_per_step;
    let first = group_in_epoch * per_step;
    let accum = cfg.gradient_accumulation_steps;
    let micro = rank_micro_batches(first, accum, c.comm.rank(), c.micro_per_epoch);
    let slice = GroupSlice {
        first: micro.start - first,
        per_step,
    };
    let group = collate_group(cfg, c.data, order, micro, c.pad_id, c.vision, c.opts)?;
    let report = trainer.train_step_on(&group, c.comm, Some(slice))?;
    let done = group_in_epoch + 1;
    let log = StepLog {
        step: trainer.step(),
        epoch: epoch as f64 + done as f64 / c.groups_per_epoch as f64,
        loss: report.loss,
        lr: report.lr,
        grad_norm: report.grad_norm,
        tokens: report.tokens,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if lead {
        append_log(&c.out.join(LOG), &log)?;
    }
    on_event(Event::Step(&log));
    let step = trainer.step();
    if step.is_multiple_of(cfg.save_steps) && step < c.total_steps {
        let at = (epoch, done, c.batch);
        let saved = trainer.with_whole_state(c.comm, |t| {
            write_checkpoint(c.out, cfg, c.saver, t, at, c.total_steps)
        })?;
        if let Some(dir) = saved {
            on_event(Event::Saved(&dir));
        }
    }
    Ok(report)
}

/// Restores the trainer and the data position from `resume_from` (cutting the log back to
/// its step), or records the run's config for a fresh run; returns (epoch, group in epoch).
/// A checkpoint written with another global batch is refused (`world`: this run's ranks).
fn start_or_resume(
    out: &Path,
    cfg: &TrainConfig,
    resume_from: Option<&Path>,
    trainer: &mut Trainer,
    batch: GlobalBatch,
    world: usize,
) -> Result<(usize, usize)> {
    let Some(dir) = resume_from else {
        let json = serde_json::to_string_pretty(cfg)
            .map_err(|e| Error::Config(format!("train_config.json: {e}")))?;
        atomic_write(&out.join("train_config.json"), json.as_bytes())?;
        return Ok((0, 0));
    };
    let st = load_state(dir, trainer)?;
    if let Some(saved) = &st.global_batch {
        batch.check_resume(saved, world, &dir.display().to_string())?;
    }
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
    at: (usize, usize, GlobalBatch),
    total_steps: usize,
) -> Result<Option<PathBuf>> {
    if trainer.step() >= total_steps {
        saver.save_final(out, trainer)?;
        return Ok(None);
    }
    if out.join(format!("checkpoint-{}", trainer.step())).exists() {
        return Ok(None);
    }
    write_checkpoint(out, cfg, saver, trainer, at, total_steps).map(Some)
}

/// Rank 0's [`resume_point`]; when resuming, what a killed run left half-written in the folder
/// goes first (the run owns its folder).
fn lead_resume_point(out: &Path, opts: &RunOptions) -> Result<Option<PathBuf>> {
    let from = resume_point(out, opts)?;
    if from.is_some() {
        sightline_guard::temp::remove_stale_in(out).map_err(|e| Error::io(out, e))?;
    }
    Ok(from)
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

/// This rank's micro-batches of one accumulation group: micro-batches `micro` of the epoch's
/// `order` (at most `gradient_accumulation_steps` of them; see
/// [`crate::distributed::rank_micro_batches`]).
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
