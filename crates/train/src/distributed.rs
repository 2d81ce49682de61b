//! Data-parallel training's bookkeeping around the step (the step itself is
//! [`Trainer::train_step_on`]): which micro-batches a rank takes, the start every rank must
//! share, and what a checkpoint records so that another world size can resume it.
//!
//! The slicing: the one-process run with `gradient_accumulation_steps × world_size`
//! accumulation forms, per optimizer step, a global group of that many consecutive
//! micro-batches of the epoch's order (every rank computes the same order from the seed).
//! Rank r takes the r-th stretch of `gradient_accumulation_steps` of them; in the short last
//! group of an epoch the later ranks may get fewer or none (they still take part in the sums).
//! So every step trains on exactly the examples, and the micro-batches (same rows, same
//! padding), of the one-process run.

use std::ops::Range;

use candle_core::{DType, Tensor};
use sightline_collective::Collective;

use crate::error::{Error, Result};
use crate::finetune::Trainer;

/// Micro-batches `group_start..` of the epoch's `micro_per_epoch` that `rank` takes, for a
/// global group of `accumulation × world` micro-batches starting at `group_start`.
pub fn rank_micro_batches(
    group_start: usize,
    accumulation: usize,
    rank: usize,
    micro_per_epoch: usize,
) -> Range<usize> {
    let end = (group_start + (rank + 1) * accumulation).min(micro_per_epoch);
    let start = (group_start + rank * accumulation).min(end);
    start..end
}

/// The batch geometry a checkpoint was written with (world-size free: what a rank count and
/// accumulation multiply to). A run resumes a checkpoint only with the same geometry, since the
/// saved data position counts global groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GlobalBatch {
    pub per_device_train_batch_size: usize,
    /// `gradient_accumulation_steps × world_size`.
    pub micro_batches_per_step: usize,
}

impl GlobalBatch {
    /// Refuses to resume `saved` (written by a checkpoint `what`) with `self`, saying which
    /// accumulation would fit.
    pub fn check_resume(&self, saved: &GlobalBatch, world: usize, what: &str) -> Result<()> {
        if self == saved {
            return Ok(());
        }
        let hint = if self.per_device_train_batch_size == saved.per_device_train_batch_size
            && saved.micro_batches_per_step.is_multiple_of(world)
        {
            format!(
                ": on {world} rank(s) set gradient_accumulation_steps={}",
                saved.micro_batches_per_step / world
            )
        } else {
            format!(
                ": set per_device_train_batch_size={} and gradient_accumulation_steps × ranks = {}",
                saved.per_device_train_batch_size, saved.micro_batches_per_step
            )
        };
        Err(Error::Config(format!(
            "{what} was written with a global batch of {} × {} micro-batches \
             (per_device_train_batch_size × gradient_accumulation_steps × ranks), this run has \
             {} × {}{hint}",
            saved.per_device_train_batch_size,
            saved.micro_batches_per_step,
            self.per_device_train_batch_size,
            self.micro_batches_per_step
        )))
    }
}

/// Makes every rank start from rank 0's state, as DDP does at construction: the trainable
/// tensors, the AdamW moments and step, and the data position `at` (epoch, group in epoch),
/// which only rank 0 read from a checkpoint. Returns the position. A rank whose optimizer is
/// already sharded keeps only its own moments.
pub fn sync_start(
    comm: &dyn Collective,
    trainer: &mut Trainer,
    at: (usize, usize),
) -> Result<(usize, usize)> {
    if comm.size() == 1 {
        return Ok(at);
    }
    let mut head: Vec<u8> = [at.0, at.1, trainer.step()]
        .iter()
        .flat_map(|&x| (x as u64).to_le_bytes())
        .collect();
    comm.broadcast_bytes(&mut head)?;
    let word = |i: usize| -> Result<usize> {
        let b: [u8; 8] = head
            .get(i * 8..i * 8 + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Config("rank 0 sent a short start position".into()))?;
        Ok(u64::from_le_bytes(b) as usize)
    };
    let (epoch, group, step) = (word(0)?, word(1)?, word(2)?);
    let device = trainer.model.device().clone();
    let params: Vec<(String, candle_core::Shape, Vec<f32>)> = trainer
        .trainable()
        .iter()
        .map(|p| {
            let t = p.param.tensor();
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((p.name.clone(), t.shape().clone(), v))
        })
        .collect::<Result<_>>()?;
    for (name, shape, mut v) in params {
        comm.broadcast(&mut v)?;
        if comm.rank() != 0 {
            trainer.set_param(&name, &Tensor::from_vec(v, shape, &device)?)?;
        }
    }
    // A fresh run's moments are zeros everywhere already; a resumed run's go one tensor at a
    // time, so that a rank whose optimizer state is sharded keeps only its own.
    if step > 0 {
        for i in 0..trainer.optimizer_len() {
            let ((m, v), n) = trainer.optimizer_slot(i);
            let (mut m, mut v) = if comm.rank() == 0 {
                (m.to_vec(), v.to_vec())
            } else {
                (vec![0.0; n], vec![0.0; n])
            };
            comm.broadcast(&mut m)?;
            comm.broadcast(&mut v)?;
            if comm.rank() != 0 {
                trainer.set_optimizer_slot(i, m, v)?;
            }
        }
    }
    trainer.set_optimizer_step(step);
    Ok((epoch, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_take_consecutive_stretches_of_the_global_group() {
        // 7 micro-batches, accumulation 2, 2 ranks: groups of 4 at 0 and 4.
        assert_eq!(rank_micro_batches(0, 2, 0, 7), 0..2);
        assert_eq!(rank_micro_batches(0, 2, 1, 7), 2..4);
        assert_eq!(rank_micro_batches(4, 2, 0, 7), 4..6);
        assert_eq!(rank_micro_batches(4, 2, 1, 7), 6..7);
        // A short last group leaves the later ranks nothing.
        assert_eq!(rank_micro_batches(4, 1, 1, 5), 5..5);
        assert_eq!(rank_micro_batches(4, 1, 3, 5), 5..5);
    }

    #[test]
    fn a_checkpoint_resumes_only_with_its_global_batch() {
        let two_ranks = GlobalBatch {
            per_device_train_batch_size: 2,
            micro_batches_per_step: 2,
        };
        assert!(two_ranks.check_resume(&two_ranks, 1, "c").is_ok());
        let one = GlobalBatch {
            micro_batches_per_step: 1,
            ..two_ranks
        };
        let e = one
            .check_resume(&two_ranks, 1, "checkpoint-2")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("gradient_accumulation_steps=2"), "{e}");
    }
}
