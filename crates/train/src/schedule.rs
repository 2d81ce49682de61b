//! Learning-rate schedules as transformers 4.46.3 computes them (`optimization.py`
//! `get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`, and
//! `TrainingArguments.get_warmup_steps`).
//!
//! torch's `LambdaLR` multiplies each group's base learning rate by `lambda(step)`, where `step`
//! counts optimizer steps already taken, so the first update uses `lambda(0)`, which is 0 when
//! there is any warmup: HF's first optimizer step does not move the weights (its Adam moments
//! still update).

use serde::{Deserialize, Serialize};

/// `lr_scheduler_type` values that are implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Linear warmup, then linear decay to 0 at `total_steps`.
    Linear,
    /// Linear warmup, then half a cosine to 0 at `total_steps` (`num_cycles = 0.5`).
    Cosine,
    /// Linear warmup, then constant (`constant_with_warmup`).
    ConstantWithWarmup,
}

/// `ceil(warmup_ratio * total_steps)` unless `warmup_steps > 0` (`get_warmup_steps`).
///
/// ```
/// assert_eq!(sightline_train::schedule::warmup_steps(0, 0.03, 1000), 30);
/// assert_eq!(sightline_train::schedule::warmup_steps(0, 0.03, 10), 1);
/// ```
pub fn warmup_steps(warmup_steps: usize, warmup_ratio: f64, total_steps: usize) -> usize {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (total_steps as f64 * warmup_ratio).ceil() as usize
    }
}

/// The multiplier of the base learning rate before optimizer step `step` (0-based).
pub fn lr_lambda(kind: SchedulerType, step: usize, warmup: usize, total: usize) -> f64 {
    let (s, w, t) = (step as f64, warmup as f64, total as f64);
    if step < warmup {
        return s / w.max(1.0);
    }
    match kind {
        SchedulerType::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
        SchedulerType::Cosine => {
            let progress = (s - w) / (t - w).max(1.0);
            let num_cycles = 0.5;
            (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
        }
        SchedulerType::ConstantWithWarmup => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from transformers 4.46.3: `get_cosine_schedule_with_warmup(opt, 2, 10)` gives
    /// lambdas [0, 0.5, 1, 0.9619397662556434, 0.8535533905932737, ...].
    #[test]
    fn cosine_matches_transformers() {
        let got: Vec<f64> = (0..5)
            .map(|s| lr_lambda(SchedulerType::Cosine, s, 2, 10))
            .collect();
        let want = [0.0, 0.5, 1.0, 0.9619397662556434, 0.8535533905932737];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(lr_lambda(SchedulerType::Cosine, 10, 2, 10), 0.0);
    }

    #[test]
    fn linear_matches_transformers() {
        // get_linear_schedule_with_warmup(opt, 1, 8): [0, 1, 6/7, 5/7, ...]
        assert_eq!(lr_lambda(SchedulerType::Linear, 0, 1, 8), 0.0);
        assert_eq!(lr_lambda(SchedulerType::Linear, 1, 1, 8), 1.0);
        assert!((lr_lambda(SchedulerType::Linear, 2, 1, 8) - 6.0 / 7.0).abs() < 1e-15);
    }
}
