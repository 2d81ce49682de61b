//! Sharded evaluation's division of work: every work unit of the pooled request list (the
//! model's shared-context groups and padded batches, one MMLU subject's prompts, one text
//! generation, one window of image prompts), formed from the *whole* list exactly as the
//! unsharded run forms them, then dealt to `N` shards by estimated cost.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::lm::{ImageGen, LanguageModel, WorkUnit};
use crate::task::Request;

/// `--shard I/N`: shard `index` (0-based, as Slurm's `--array=0-3` and Kubernetes'
/// `JOB_COMPLETION_INDEX` count) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for ShardSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Config(format!(
                "--shard {s}: {why} (expected I/N with 0 <= I < N, e.g. 0/4; I counts from 0 like SLURM_ARRAY_TASK_ID with --array=0-3 and JOB_COMPLETION_INDEX)"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        if index >= count {
            return Err(bad(&format!("I must be below N ({index} >= {count})")));
        }
        Ok(Self { index, count })
    }
}

/// Tokens a text generation is guessed to produce, for its cost estimate (lm-eval's
/// `max_gen_toks`); prompts are guessed at 4 bytes per token.
const GEN_TOKENS_GUESS: u64 = 256;

/// Every unit of the pooled requests (as pool slots), its shard, and a digest of both.
pub(super) struct Plan {
    pub units: Vec<WorkUnit>,
    pub shard_of: Vec<usize>,
    /// SHA-256 over the units' members and costs and the shard count: shards of one run
    /// agree on it, so a merge can tell that they divided the same work the same way.
    pub hash: String,
}

impl Plan {
    /// Cuts `requests` (pool order) into units with `lm`'s own unit rules and deals them to
    /// `count` shards.
    pub fn new(lm: &dyn LanguageModel, requests: &[&Request], count: usize) -> Result<Self> {
        let mut units = loglikelihood_units(lm, requests)?;
        units.extend(generation_units(requests));
        units.extend(image_units(lm, requests)?);
        let shard_of = assign(
            &units.iter().map(|u| u.cost).collect::<Vec<_>>(),
            count.max(1),
        );
        let mut h = Sha256::new();
        h.update(format!("shards={count}\n").as_bytes());
        for u in &units {
            h.update(format!("{:?} {}\n", u.requests, u.cost).as_bytes());
        }
        Ok(Self {
            units,
            shard_of,
            hash: format!("{:x}", h.finalize()),
        })
    }

    /// Which pool slots shard `index` answers, and the indices of its units.
    pub fn slots_of(&self, index: usize, n_slots: usize) -> (Vec<bool>, Vec<usize>) {
        let mut mine = vec![false; n_slots];
        let mut units = Vec::new();
        for (k, u) in self.units.iter().enumerate() {
            if self.shard_of[k] == index {
                units.push(k);
                for &slot in &u.requests {
                    if let Some(m) = mine.get_mut(slot) {
                        *m = true;
                    }
                }
            }
        }
        (mine, units)
    }
}

/// Longest-processing-time-first: units by cost, largest first (ties by position), each to
/// the shard with the least cost so far (ties to the lowest index). Deterministic, and within
/// 4/3 of the best possible makespan.
fn assign(costs: &[u64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; count];
    let mut shard_of = vec![0; costs.len()];
    for k in order {
        let s = (0..count).min_by_key(|&s| (load[s], s)).unwrap_or(0);
        load[s] += costs[k].max(1);
        shard_of[k] = s;
    }
    shard_of
}

/// The model's log-likelihood units over the pool's log-likelihood requests.
fn loglikelihood_units(lm: &dyn LanguageModel, requests: &[&Request]) -> Result<Vec<WorkUnit>> {
    let mut slots = Vec::new();
    let mut pairs = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if let Request::Loglikelihood {
            context,
            continuation,
        } = r
        {
            slots.push(i);
            pairs.push((context.clone(), continuation.clone()));
        }
    }
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let units = lm.loglikelihood_units(&pairs)?;
    Ok(to_slots(units, &slots))
}

/// Text generations run one at a time, so each is a unit, except that the MMLU script's
/// prompts of one subject (one header) stay together: the model reuses their 5-shot prefix.
fn generation_units(requests: &[&Request]) -> Vec<WorkUnit> {
    let mut units: Vec<WorkUnit> = Vec::new();
    let mut by_header: Vec<(&str, usize)> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        match r {
            Request::GenerateUntil { context, .. } => units.push(WorkUnit {
                requests: vec![i],
                cost: context.len() as u64 / 4 + GEN_TOKENS_GUESS,
            }),
            Request::GenerateFit {
                header,
                shots,
                question,
                max_new_tokens,
                ..
            } => {
                let bytes = header.len() + shots.iter().map(String::len).sum::<usize>();
                let cost = (bytes + question.len()) as u64 / 4 + *max_new_tokens as u64;
                match by_header.iter().find(|(h, _)| h == header) {
                    Some(&(_, k)) => {
                        units[k].requests.push(i);
                        units[k].cost += cost;
                    }
                    None => {
                        by_header.push((header.as_str(), units.len()));
                        units.push(WorkUnit {
                            requests: vec![i],
                            cost,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    units
}

/// The model's windows over the pool's image requests.
fn image_units(lm: &dyn LanguageModel, requests: &[&Request]) -> Result<Vec<WorkUnit>> {
    let mut slots = Vec::new();
    let mut reqs = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if let Request::GenerateImage {
            context,
            image_ref,
            decoding,
            ..
        } = r
        {
            slots.push(i);
            reqs.push(ImageGen {
                context: context.clone(),
                image: image_ref.clone(),
                decoding: decoding.clone(),
            });
        }
    }
    if reqs.is_empty() {
        return Ok(Vec::new());
    }
    let units = lm.image_units(&reqs)?;
    Ok(to_slots(units, &slots))
}

/// Units over a sub-list, renumbered to pool slots.
fn to_slots(units: Vec<WorkUnit>, slots: &[usize]) -> Vec<WorkUnit> {
    units
        .into_iter()
        .map(|u| WorkUnit {
            requests: u
                .requests
                .iter()
                .filter_map(|&j| slots.get(j).copied())
                .collect(),
            cost: u.cost,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_count_from_zero_and_are_checked() {
        let s: ShardSpec = "2/4".parse().unwrap();
        assert_eq!((s.index, s.count), (2, 4));
        assert_eq!(s.to_string(), "2/4");
        for bad in ["4/4", "1/0", "x/2", "3", "-1/2"] {
            let e = bad.parse::<ShardSpec>().unwrap_err().to_string();
            assert!(e.contains(&format!("--shard {bad}")), "{e}");
        }
    }

    #[test]
    fn assignment_balances_costs_deterministically() {
        let costs = [10, 1, 7, 3, 3, 8, 2];
        let a = assign(&costs, 3);
        assert_eq!(a, assign(&costs, 3));
        let mut load = [0u64; 3];
        for (k, &s) in a.iter().enumerate() {
            load[s] += costs[k];
        }
        // 34 in all: LPT gives 12/11/11 here.
        assert!(
            load.iter().max().unwrap() - load.iter().min().unwrap() <= 1,
            "{load:?}"
        );
        // More shards than units: the extra shards get nothing.
        let a = assign(&[5, 5], 4);
        assert_eq!(a, vec![0, 1]);
    }
}
