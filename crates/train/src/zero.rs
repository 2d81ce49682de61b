//! Optimizer-state sharding, ZeRO stage 1 (`zero_stage = 1` in a run file): under data
//! parallelism each rank keeps the AdamW moments of its own share of the parameters, not of
//! all of them, so that the 8 bytes per parameter of AdamW's f32 state (56 GB for a 7B full
//! fine-tune) are divided by the world size.
//!
//! The step stays the one-process step, bit for bit: gradients are summed over the ranks as
//! before (every rank holds the whole gradient, so clipping sees the same norm), each rank
//! applies AdamW to the parameters it owns, and each updated parameter is then broadcast from
//! its owner. No rank ever computes a number another rank computes differently.
//!
//! Ownership is torch's `ZeroRedundancyOptimizer` partition: parameters in decreasing size,
//! each to the rank holding the fewest values so far. Checkpoints stay world-size free:
//! before rank 0 writes one, it receives the moments it does not hold ([`gather_moments`],
//! what torch's `consolidate_state_dict(to=0)` does), and frees them after; so rank 0 holds
//! the whole state while it saves, and a sharded checkpoint resumes on any number of ranks,
//! sharded or not. Gradients and parameters are not sharded (ZeRO stages 2 and 3 are not
//! built).

use candle_core::{DType, Tensor};
use sightline_collective::Collective;

use crate::error::Result;
use crate::optim::AdamW;

/// The rank that holds each parameter's optimizer state, for parameters of `sizes` values on
/// `world` ranks: largest first, each to the least-loaded rank (the lowest on ties), so the
/// same on every rank. (The evaluator deals `--shard` work units by the same rule,
/// `sightline_eval`'s `evaluator/plan.rs::assign`; the two crates share no floor to hold it.)
pub fn partition(sizes: &[usize], world: usize) -> Vec<usize> {
    let world = world.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    let mut load = vec![0usize; world];
    let mut owners = vec![0; sizes.len()];
    for i in order {
        let rank = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        owners[i] = rank;
        load[rank] += sizes[i];
    }
    owners
}

/// Shards `opt` over `comm`'s ranks (see the module docs); returns the number of optimizer
/// values this rank holds and the total.
pub fn shard(opt: &mut AdamW, comm: &dyn Collective) -> Result<(usize, usize)> {
    let sizes: Vec<usize> = opt.vars().map(|v| v.elem_count()).collect();
    let owners = partition(&sizes, comm.size());
    let mine = sizes
        .iter()
        .zip(&owners)
        .filter(|(_, &o)| o == comm.rank())
        .map(|(n, _)| 2 * n)
        .sum();
    opt.shard(owners, comm.rank())?;
    Ok((mine, 2 * sizes.iter().sum::<usize>()))
}

/// After a sharded [`AdamW::step`]: every parameter from the rank that updated it, so that all
/// ranks hold the same weights again.
pub fn share_updates(opt: &AdamW, comm: &dyn Collective) -> Result<()> {
    for (i, var) in opt.vars().enumerate() {
        let t = var.as_tensor();
        let mut buf = if opt.owns(i) {
            t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?
        } else {
            vec![0.0; t.elem_count()]
        };
        comm.broadcast_from(opt.owner(i), &mut buf)?;
        if !opt.owns(i) {
            let value = Tensor::from_vec(buf, t.shape(), t.device())?.to_dtype(t.dtype())?;
            var.set(&value)?;
        }
    }
    Ok(())
}

/// Before rank 0 saves a checkpoint: it receives the moments of the parameters other ranks
/// own (every rank must call this; the others pass theirs on and keep nothing new). Rank 0
/// frees them again with [`AdamW::release_others`] after the save.
pub fn gather_moments(opt: &mut AdamW, comm: &dyn Collective) -> Result<()> {
    let lead = comm.rank() == 0;
    for i in 0..opt.len() {
        let owner = opt.owner(i);
        if owner == 0 {
            continue;
        }
        let n = opt.numel(i);
        let (mut m, mut v) = if opt.owns(i) {
            let (m, v) = opt.slot_moments(i);
            (m.to_vec(), v.to_vec())
        } else {
            (vec![0.0; n], vec![0.0; n])
        };
        comm.broadcast_from(owner, &mut m)?;
        comm.broadcast_from(owner, &mut v)?;
        if lead {
            opt.hold_slot_moments(i, m, v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_parameters_go_to_the_least_loaded_rank() {
        // Sorted: 100 (#1) -> 0, 60 (#3) -> 1, 50 (#0) -> 1 (60 < 100), 10 (#2) -> 0 (100 < 110),
        // 10 (#4) -> 0 (110 = 110: the lower rank).
        assert_eq!(partition(&[50, 100, 10, 60, 10], 2), vec![1, 0, 0, 1, 0]);
        assert_eq!(partition(&[5, 5, 5], 1), vec![0, 0, 0]);
        // More ranks than parameters: the later ranks hold nothing.
        assert_eq!(partition(&[3, 7], 4), vec![1, 0]);
    }
}
