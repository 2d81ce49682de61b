//! One optimizer step of HF Trainer (transformers 4.46.3 `Trainer._inner_training_loop`):
//! forward + backward over the micro-batches of a gradient-accumulation group, gradients summed
//! into f32 buffers that exist only for trainable tensors, `clip_grad_norm_`, AdamW, and the
//! schedule's next multiplier. Stage 1 (projector only), full fine-tuning and LoRA are the same
//! loop; what trains was decided when the model was built.
//!
//! Data-parallel ([`Trainer::train_step_on`]): each rank runs its slice of the step's
//! micro-batches; the group's label and micro-batch counts are summed over the ranks before any
//! loss is scaled, and the gradients before clipping, so the step equals one process running
//! all the micro-batches (to the order of f32 additions).

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Storage, Tensor, Var};
use rayon::prelude::*;
use sightline_collective::{Collective, Single};

use crate::error::{Error, Result};
use crate::loss::{causal_lm_loss, label_rows};
use crate::optim::{clip_grad_norm, grad_norm, AdamW, ParamSpec};
use crate::param::{decays, NamedParam};
use crate::schedule::{lr_lambda, SchedulerType};
use crate::zero;
use sightline_model::Llama;
use sightline_vision::projector::Projector;
use sightline_vision::splice::splice_batch;

/// How micro-batch losses are combined under gradient accumulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccumLoss {
    /// transformers 4.46.3 for models whose forward takes `**loss_kwargs` (`LlamaForCausalLM`,
    /// also under PEFT): each micro-batch contributes Σ CE / N, N = labels ≠ -100 over the whole
    /// group counted before the shift (`get_batch_samples`); nothing is divided by the
    /// accumulation steps.
    Tokens,
    /// Each micro-batch's mean CE divided by the accumulation steps: HF ≤ 4.45 and the LLaVA
    /// class (no `**loss_kwargs`), i.e. the paper's runs (spec T10.4).
    Mean,
}

/// Image input of a batch (LLaVA): CLIP features per row and where they go.
pub struct ImageInput {
    /// `[b, n_patches, vision_dim]`, already the selected CLIP layer (frozen tower).
    pub features: Tensor,
    /// The marker position of each row (None: a row without an image, whose features are
    /// ignored), replaced by the projected features.
    pub positions: Vec<Option<usize>>,
}

/// One micro-batch: `input_ids [b, t]` (u32), `labels [b, t]` (i64, -100 = ignored).
pub struct Batch {
    pub input_ids: Tensor,
    pub labels: Tensor,
    pub image: Option<ImageInput>,
}

/// Optimisation settings (HF `TrainingArguments` names).
#[derive(Debug, Clone)]
pub struct OptimSettings {
    pub learning_rate: f64,
    /// `mm_projector_lr`: the projector's own peak learning rate (LLaVA-1.5); None = the same.
    pub mm_projector_lr: Option<f64>,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub lr_scheduler_type: SchedulerType,
    pub warmup_steps: usize,
    /// Optimizer steps of the whole run (the schedule's horizon).
    pub total_steps: usize,
    /// `max_grad_norm`; None (or ≤ 0) = no clipping.
    pub max_grad_norm: Option<f64>,
    pub accum_loss: AccumLoss,
}

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Mean CE of each micro-batch (what transformers' `outputs.loss` is without
    /// `num_items_in_batch`).
    pub losses: Vec<f64>,
    /// The step's loss under the rule that trains, what HF Trainer logs with `logging_steps =
    /// 1` (see [`group_loss`]); None when no micro-batch had a trained token.
    pub loss: Option<f64>,
    /// The group learning rate used (the LLM's; the schedule multiplier times `learning_rate`).
    pub lr: f64,
    /// Total gradient 2-norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed (all positions of all micro-batches, spliced images included).
    pub tokens: usize,
}

/// Where a rank's micro-batches sit among the run's micro-batches (data-parallel training):
/// the LoRA dropout mask of a micro-batch is drawn from a stream position given by its index in
/// the run, `step × per_step + first + j`, so it does not depend on which rank computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSlice {
    /// Index, within the optimizer step's global group, of this rank's first micro-batch.
    pub first: usize,
    /// Micro-batches of a full global group (accumulation × world size).
    pub per_step: usize,
}

/// Stream words reserved for one micro-batch's dropout masks (2^40: a 7B LoRA micro-batch of
/// 16 × 2,048 tokens draws ~3·10^10); ChaCha's 2^68-word stream then holds 2^28 micro-batches.
const DROPOUT_WORDS_LOG2: u32 = 40;

/// A model, its optional projector, their optimizer and the gradient buffers.
pub struct Trainer {
    pub model: Llama,
    pub projector: Option<Projector>,
    params: Vec<NamedParam>,
    /// The step's accumulated gradients, one per parameter; empty until its first gradient
    /// arrives and again after the update.
    grads: Vec<Vec<f32>>,
    opt: AdamW,
    settings: OptimSettings,
    /// LLaVA's stage-1 splice branch (`tune_mm_mlp_adapter` with `mm_use_im_start_end`, see
    /// [`splice_batch`]); off by default.
    pub stage1_branch: bool,
    /// Per-layer gradient checkpointing (`gradient_checkpointing` of the run config).
    checkpointing: bool,
}

impl Trainer {
    /// Registers every trainable tensor (decoder first, then the projector) with AdamW, in
    /// HF's two groups per learning rate: decayed and not (see [`decays`]).
    pub fn new(model: Llama, projector: Option<Projector>, settings: OptimSettings) -> Self {
        let mut params = model.trainable();
        let n_decoder = params.len();
        if let Some(p) = &projector {
            params.extend(p.params());
        }
        let specs = params
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let var = p.param.var()?.clone();
                let lr = match (i >= n_decoder, settings.mm_projector_lr) {
                    (true, Some(lr)) => lr,
                    _ => settings.learning_rate,
                };
                let weight_decay = if decays(&p.name) {
                    settings.weight_decay
                } else {
                    0.0
                };
                Some(ParamSpec {
                    var,
                    lr,
                    weight_decay,
                })
            })
            .collect();
        let grads = vec![Vec::new(); params.len()];
        let opt = AdamW::new(
            specs,
            (settings.adam_beta1, settings.adam_beta2),
            settings.adam_epsilon,
        );
        Self {
            model,
            projector,
            params,
            grads,
            opt,
            settings,
            stage1_branch: false,
            checkpointing: false,
        }
    }

    /// The trainable tensors, in optimizer order.
    pub fn trainable(&self) -> &[NamedParam] {
        &self.params
    }

    /// The accumulated gradient of each trainable tensor (same order as [`Trainer::trainable`]);
    /// empty for a tensor that has received no gradient since the last optimizer step (the
    /// buffers exist only between a step's first backward and its update: see [`add_into`]).
    pub fn gradients(&self) -> &[Vec<f32>] {
        &self.grads
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> usize {
        self.opt.step
    }

    /// The schedule multiplier for the next optimizer step.
    pub fn lr_scale(&self) -> f64 {
        lr_lambda(
            self.settings.lr_scheduler_type,
            self.opt.step,
            self.settings.warmup_steps,
            self.settings.total_steps,
        )
    }

    /// Forward and backward over one accumulation group, adding into the gradient buffers.
    /// Returns each micro-batch's mean loss and the tokens processed.
    pub fn accumulate(&mut self, group: &[Batch]) -> Result<(Vec<f64>, usize)> {
        let acc = self.accumulate_group(group, &Single, None)?;
        Ok((acc.losses, acc.tokens))
    }

    /// [`Trainer::accumulate`] on this rank's slice of the group, also returning the group's
    /// loss under the rule that trains (over all ranks) and the tokens of all ranks.
    fn accumulate_group(
        &mut self,
        group: &[Batch],
        comm: &dyn Collective,
        slice: Option<GroupSlice>,
    ) -> Result<Accumulated> {
        let vocab = self.model.config.vocab_size;
        let labels: Vec<Vec<Vec<i64>>> = group
            .iter()
            .map(|b| label_rows(&b.labels, vocab))
            .collect::<Result<_>>()?;
        // num_items_in_batch of HF 4.46.3: labels ≠ -100 over the group, before the shift
        // (the image rows LLaVA inserts are -100, so counting before the splice is the same).
        let group_labels: usize = labels
            .iter()
            .flatten()
            .map(|r| {
                r.iter()
                    .filter(|&&l| l != crate::loss::IGNORE_INDEX)
                    .count()
            })
            .sum();
        // The whole group's counts, over every rank: the denominators of the loss rules.
        let mut counts = [group_labels as f64, group.len() as f64];
        comm.all_reduce_sum_f64(&mut counts)?;
        let (group_labels, micro_batches) = (counts[0] as usize, counts[1] as usize);
        let mut losses = Vec::with_capacity(group.len());
        let mut targets = Vec::with_capacity(group.len());
        let mut tokens = 0;
        for (j, (batch, labels)) in group.iter().zip(labels).enumerate() {
            if let Some(s) = slice {
                self.key_dropout(s, j)?;
            }
            let mut embeds = self.model.embed(&batch.input_ids)?;
            let mut labels = labels;
            if let Some(img) = &batch.image {
                let proj = self.projector.as_ref().ok_or_else(|| {
                    Error::Batch("a batch has images but the model has no projector".into())
                })?;
                let feats = proj.forward(&img.features)?;
                (embeds, labels) =
                    splice_batch(&embeds, &feats, &img.positions, &labels, self.stage1_branch)?;
            }
            tokens += embeds.dim(0)? * embeds.dim(1)?;
            targets.push(shifted_targets(&labels));
            if self.checkpointing {
                let n = micro_batches;
                losses.push(self.backward_checkpointed(&embeds, &labels, n, group_labels)?);
                continue;
            }
            let hidden = self.model.forward_hidden_train(&embeds, true)?;
            let parts = causal_lm_loss(&self.model, &hidden, &labels)?;
            if parts.targets == 0 {
                losses.push(f64::NAN);
                continue;
            }
            let sum = parts.sum.to_scalar::<f32>()? as f64;
            losses.push(sum / parts.targets as f64);
            let denom = match self.settings.accum_loss {
                AccumLoss::Tokens => group_labels as f64,
                AccumLoss::Mean => (parts.targets * micro_batches) as f64,
            };
            let scaled = (parts.sum / denom)?;
            take_grads(&self.params, &mut self.grads, &mut scaled.backward()?)?;
        }
        let rule = self.settings.accum_loss;
        let mut sums = loss_sums(rule, &losses, &targets);
        sums.push(tokens as f64);
        comm.all_reduce_sum_f64(&mut sums)?;
        let tokens = sums[3] as usize;
        let loss = finish_loss(rule, &sums[..3], group_labels);
        Ok(Accumulated {
            losses,
            loss,
            tokens,
        })
    }

    /// Clips, updates and frees the gradient buffers; returns (lr used, grad norm).
    pub fn apply(&mut self) -> Result<(f64, f64)> {
        self.apply_on(&Single)
    }

    /// [`Trainer::apply`] after summing the gradient buffers over the ranks (each rank's
    /// gradients are already scaled by the whole group's denominators, so the sum is the
    /// one-process gradient); every rank then clips and steps the same numbers.
    fn apply_on(&mut self, comm: &dyn Collective) -> Result<(f64, f64)> {
        for (p, g) in self.params.iter().zip(self.grads.iter_mut()) {
            // No gradient this step (a rank with no micro-batch, a tensor the loss missed):
            // zeros, as every rank must reduce buffers of the same lengths.
            if g.is_empty() {
                g.resize(p.param.tensor().elem_count(), 0.0);
            }
            comm.all_reduce_sum(g)?;
        }
        let scale = self.lr_scale();
        let norm = match self.settings.max_grad_norm {
            Some(m) if m > 0.0 => clip_grad_norm(&mut self.grads, m),
            _ => grad_norm(&self.grads),
        };
        self.opt.step(&self.grads, scale)?;
        if self.opt.is_sharded() {
            zero::share_updates(&self.opt, comm)?;
        }
        // Freed, not zeroed: the next step's activations reuse the memory, and its first
        // backward allocates the buffers again (see `add_into`).
        for g in &mut self.grads {
            *g = Vec::new();
        }
        Ok((self.settings.learning_rate * scale, norm))
    }

    /// One optimizer step over a gradient-accumulation group of micro-batches.
    pub fn train_step(&mut self, group: &[Batch]) -> Result<StepReport> {
        self.train_step_on(group, &Single, None)
    }

    /// One data-parallel optimizer step: `group` is this rank's slice (possibly empty, when a
    /// short last group has no micro-batch left for it); every rank must call this for every
    /// step. The report's `loss` and `tokens` are the whole group's, `losses` this rank's.
    /// `slice` keys the LoRA dropout masks by micro-batch (None: the stream just continues).
    pub fn train_step_on(
        &mut self,
        group: &[Batch],
        comm: &dyn Collective,
        slice: Option<GroupSlice>,
    ) -> Result<StepReport> {
        let Accumulated {
            losses,
            loss,
            tokens,
        } = self.accumulate_group(group, comm, slice)?;
        let (lr, grad_norm) = self.apply_on(comm)?;
        tracing::debug!(
            step = self.opt.step,
            ?losses,
            lr,
            grad_norm,
            "optimizer step"
        );
        Ok(StepReport {
            losses,
            loss,
            lr,
            grad_norm,
            tokens,
        })
    }

    /// The optimizer's moments per trainable tensor (same order as [`Trainer::trainable`]).
    pub fn optimizer_moments(&self) -> Vec<(&[f32], &[f32])> {
        self.opt.moments()
    }

    /// Shards the optimizer state over `comm`'s ranks (ZeRO stage 1, [`zero`]); returns the
    /// number of optimizer values this rank holds and the total.
    pub fn shard_optimizer(&mut self, comm: &dyn Collective) -> Result<(usize, usize)> {
        zero::shard(&mut self.opt, comm)
    }

    /// Runs `save` on rank 0 with the whole optimizer state: under sharding every rank first
    /// passes its moments to rank 0 ([`zero::gather_moments`]), which frees them after. Every
    /// rank must call it.
    pub fn with_whole_state<T>(
        &mut self,
        comm: &dyn Collective,
        save: impl FnOnce(&Trainer) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.opt.is_sharded() {
            zero::gather_moments(&mut self.opt, comm)?;
        }
        let out = if comm.rank() == 0 {
            Some(save(self))
        } else {
            None
        };
        self.opt.release_others();
        out.transpose()
    }

    /// AdamW's values in all: two moments per optimised weight.
    pub fn optimizer_values(&self) -> usize {
        2 * self.opt.vars().map(|v| v.elem_count()).sum::<usize>()
    }

    /// Number of tensors under optimisation (the order of [`Trainer::optimizer_moments`]).
    pub fn optimizer_len(&self) -> usize {
        self.opt.len()
    }

    /// Tensor `i`'s moments as held here (empty where another rank holds them), and its size.
    pub fn optimizer_slot(&self, i: usize) -> ((&[f32], &[f32]), usize) {
        (self.opt.slot_moments(i), self.opt.numel(i))
    }

    /// Sets tensor `i`'s moments (kept only if this rank holds them).
    pub fn set_optimizer_slot(&mut self, i: usize, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        self.opt.set_slot_moments(i, m, v)
    }

    /// Sets the optimizer's step count (the schedule follows it).
    pub fn set_optimizer_step(&mut self, step: usize) {
        self.opt.step = step;
    }

    /// Restores a saved optimizer state and step count (the schedule follows the step).
    pub fn restore_optimizer(
        &mut self,
        step: usize,
        moments: Vec<(Vec<f32>, Vec<f32>)>,
    ) -> Result<()> {
        self.opt.restore(step, moments)
    }

    /// Moves the LoRA dropout stream to micro-batch `j` of `s`'s own stretch (see
    /// [`GroupSlice`]).
    fn key_dropout(&self, s: GroupSlice, j: usize) -> Result<()> {
        let Some(layer) = self.model.lora_layers().next() else {
            return Ok(());
        };
        let index = self.opt.step as u128 * s.per_step as u128 + (s.first + j) as u128;
        if index + 1 >= 1 << (68 - DROPOUT_WORDS_LOG2) {
            return Err(Error::Config(format!(
                "micro-batch {index} of the run is past the LoRA dropout stream's 2^28"
            )));
        }
        layer.set_rng_position((index + 1) << DROPOUT_WORDS_LOG2)?;
        Ok(())
    }

    /// Sets a trainable tensor's value by name (e.g. a given initial LoRA adapter); the
    /// optimizer state is unchanged.
    pub fn set_param(&self, name: &str, value: &Tensor) -> Result<()> {
        let var: &Var = self
            .params
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.param.var())
            .ok_or_else(|| Error::Config(format!("no trainable tensor named `{name}`")))?;
        if var.shape() != value.shape() {
            return Err(Error::Config(format!(
                "`{name}` has shape {:?}, the new value {:?}",
                var.shape(),
                value.shape()
            )));
        }
        var.set(&value.to_dtype(var.dtype())?)?;
        Ok(())
    }
}

/// Gradient checkpointing (see [`Llama::checkpointed_backward`]): same losses and
/// gradients as the plain path, activation memory of one layer instead of all of them.
impl Trainer {
    /// Turns per-decoder-layer gradient checkpointing on or off (off by default).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// Whether gradient checkpointing is on.
    pub fn gradient_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// The checkpointed forward + backward of one micro-batch: the plain path's loss and
    /// scaling, gradients added into the buffers. Returns the micro-batch's mean loss.
    fn backward_checkpointed(
        &mut self,
        embeds: &Tensor,
        labels: &[Vec<i64>],
        micro_batches: usize,
        group_labels: usize,
    ) -> Result<f64> {
        let accum_loss = self.settings.accum_loss;
        let model = &self.model;
        let (params, grads) = (&self.params, &mut self.grads);
        let mut loss = f64::NAN;
        model.checkpointed_backward::<Error>(
            embeds,
            true,
            |hidden| {
                let parts = causal_lm_loss(model, hidden, labels)?;
                if parts.targets == 0 {
                    return Ok(None);
                }
                loss = parts.sum.to_scalar::<f32>()? as f64 / parts.targets as f64;
                let denom = match accum_loss {
                    AccumLoss::Tokens => group_labels as f64,
                    AccumLoss::Mean => (parts.targets * micro_batches) as f64,
                };
                Ok(Some((parts.sum / denom)?))
            },
            |store| take_grads(params, grads, store),
        )?;
        Ok(loss)
    }
}

/// One accumulation group's losses.
struct Accumulated {
    losses: Vec<f64>,
    loss: Option<f64>,
    tokens: usize,
}

/// Shifted targets of a micro-batch's label rows (positions `1..t` not -100), as
/// [`causal_lm_loss`] counts them.
fn shifted_targets(labels: &[Vec<i64>]) -> usize {
    labels
        .iter()
        .map(|r| {
            r.iter()
                .skip(1)
                .filter(|&&l| l != crate::loss::IGNORE_INDEX)
                .count()
        })
        .sum()
}

/// The loss an optimizer step logs: the loss it trains on, as transformers 4.46.3's `Trainer`
/// logs it with `logging_steps = 1` (`_inner_training_loop` sums what `training_step` returns
/// over the group's micro-batches into `tr_loss`; `_maybe_log_save_evaluate` divides by the
/// steps since the last log, here 1, and rounds to 4 decimals, which is left out here).
/// - [`AccumLoss::Tokens`]: `training_step` returns each micro-batch's Σ CE /
///   `num_items_in_batch` (labels ≠ -100 of the whole group, before the shift), so the step
///   logs Σ over the group of Σ CE, divided by that count.
/// - [`AccumLoss::Mean`]: each micro-batch's mean CE / accumulation steps, summed: the mean of
///   the micro-batch means (micro-batches without a target left out).
///
/// `losses[i]` is micro-batch i's mean CE (NaN without targets) and `targets[i]` its shifted
/// target count. None when no micro-batch had a target (nothing was back-propagated).
pub fn group_loss(
    rule: AccumLoss,
    losses: &[f64],
    targets: &[usize],
    group_labels: usize,
) -> Option<f64> {
    finish_loss(rule, &loss_sums(rule, losses, targets), group_labels)
}

/// The sums [`group_loss`] divides, which ranks add up: `[Σ mean·targets, Σ mean, trained
/// micro-batches]` over the micro-batches with a target.
fn loss_sums(rule: AccumLoss, losses: &[f64], targets: &[usize]) -> Vec<f64> {
    let trained: Vec<(f64, usize)> = losses
        .iter()
        .zip(targets)
        .filter(|(l, &t)| t > 0 && l.is_finite())
        .map(|(&l, &t)| (l, t))
        .collect();
    let weighted = match rule {
        AccumLoss::Tokens => trained.iter().map(|(l, t)| l * *t as f64).sum::<f64>(),
        AccumLoss::Mean => 0.0,
    };
    let plain = trained.iter().map(|(l, _)| l).sum::<f64>();
    vec![weighted, plain, trained.len() as f64]
}

/// [`group_loss`] from the (summed) [`loss_sums`].
fn finish_loss(rule: AccumLoss, sums: &[f64], group_labels: usize) -> Option<f64> {
    let (weighted, plain, trained) = (sums[0], sums[1], sums[2]);
    if trained == 0.0 {
        return None;
    }
    Some(match rule {
        AccumLoss::Tokens => weighted / group_labels as f64,
        AccumLoss::Mean => plain / trained,
    })
}

/// Moves each trainable parameter's gradient out of `store` into its step buffer
/// ([`add_into`]).
fn take_grads(params: &[NamedParam], grads: &mut [Vec<f32>], store: &mut GradStore) -> Result<()> {
    for (p, buf) in params.iter().zip(grads.iter_mut()) {
        let Some(var) = p.param.var() else { continue };
        if let Some(g) = store.remove(var.as_tensor()) {
            add_into(buf, g, p.param.tensor().elem_count())?;
        }
    }
    Ok(())
}

/// Adds a parameter's gradient `g` (of `numel` values) into its step buffer, taking `g`'s values
/// as the buffer when it is the step's first. Callers move `g` out of the `GradStore` so that it
/// is freed here: with persistent zeroed buffers the end of a backward held every gradient
/// twice (the store's and the buffers'), 540 MB more at SmolLM2-135M's peak in f32.
fn add_into(buf: &mut Vec<f32>, g: Tensor, numel: usize) -> Result<()> {
    if g.elem_count() != numel {
        return Err(Error::Config(format!(
            "gradient of {} values for a tensor of {numel}",
            g.elem_count()
        )));
    }
    let g = g.flatten_all()?.to_dtype(candle_core::DType::F32)?;
    let (storage, layout) = g.storage_and_layout();
    let values = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => &v[start..end],
        _ => {
            drop(storage);
            return add_values_into(buf, &g.to_vec1::<f32>()?);
        }
    };
    add_values_into(buf, values)
}

/// `buf += values` in parallel; an empty `buf` becomes `values + 0.0`: in one pass, and exactly
/// what adding into a zeroed buffer gave (-0.0 becomes +0.0). (A copy out of the tensor and
/// then a pass over it cost two passes over every gradient: 4% of an f32 step of
/// SmolLM2-135M.)
fn add_values_into(buf: &mut Vec<f32>, values: &[f32]) -> Result<()> {
    // Below this many values the thread pool's hand-off costs more than the pass.
    const PARALLEL_FROM: usize = 1 << 15;
    let parallel = values.len() >= PARALLEL_FROM;
    if !buf.is_empty() && buf.len() != values.len() {
        return Err(Error::Config(format!(
            "gradient of {} values for a buffer of {}",
            values.len(),
            buf.len()
        )));
    }
    if buf.is_empty() {
        *buf = if parallel {
            values.par_iter().map(|&x| x + 0.0).collect()
        } else {
            values.iter().map(|&x| x + 0.0).collect()
        };
    } else if parallel {
        buf.par_iter_mut()
            .zip(values.par_iter())
            .for_each(|(b, &x)| *b += x);
    } else {
        buf.iter_mut().zip(values).for_each(|(b, &x)| *b += x);
    }
    Ok(())
}
