//! `sightline data stats`: counts and token lengths of a record file, accumulated one record
//! at a time.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::labels::Sample;
use crate::record::{Record, IMAGE_PLACEHOLDER};

/// Upper bounds (exclusive) of the token-length histogram's bins; the last bin is open.
pub const BIN_EDGES: &[usize] = &[64, 128, 256, 512, 1024, 2048];

/// What a file holds.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub records: usize,
    /// Records with an `image` key.
    pub with_image: usize,
    /// Records without the structure a conversation needs (run `validate` for details).
    pub unreadable: usize,
    pub turns: usize,
    /// Number of records per count of human turns (rounds).
    pub rounds: BTreeMap<usize, usize>,
    /// `<image>` placeholders over all turns.
    pub placeholders: usize,
    /// Characters (Unicode scalar values) of all turn values.
    pub chars: usize,
    /// Token statistics, when a tokenizer was given.
    pub tokens: Option<TokenStats>,
}

/// Lengths of the training sequences under one template and tokenizer.
#[derive(Debug, Clone, Default)]
pub struct TokenStats {
    /// `len(input_ids)` per sample; an image counts as its one −200 position.
    pub lengths: Vec<u32>,
    /// Positions that take a loss, over all samples.
    pub trained: u64,
    /// Samples longer than `model_max_length`.
    pub over_max: usize,
    /// Records LLaVA's preprocessing rejects (wrong turns, a tokenization mismatch, ...).
    pub failed: usize,
    pub model_max_length: usize,
}

impl Stats {
    /// Counts one record.
    pub fn add(&mut self, v: &Value) {
        self.records += 1;
        let Ok(r) = Record::from_value(v) else {
            self.unreadable += 1;
            return;
        };
        self.with_image += usize::from(r.image.is_some());
        self.turns += r.conversations.len();
        let rounds = r.conversations.iter().filter(|t| t.from == "human").count();
        *self.rounds.entry(rounds).or_default() += 1;
        for t in &r.conversations {
            self.placeholders += t.value.matches(IMAGE_PLACEHOLDER).count();
            self.chars += t.value.chars().count();
        }
    }

    /// Counts one sample's tokens (or a record that failed preprocessing, with `None`).
    pub fn add_sample(&mut self, sample: Option<&Sample>, model_max_length: usize) {
        let t = self.tokens.get_or_insert_with(|| TokenStats {
            model_max_length,
            ..Default::default()
        });
        match sample {
            Some(s) => {
                t.lengths
                    .push(u32::try_from(s.input_ids.len()).unwrap_or(u32::MAX));
                t.trained += s.trained() as u64;
                t.over_max += usize::from(s.input_ids.len() > model_max_length);
            }
            None => t.failed += 1,
        }
    }

    /// Everything as one JSON object (`stats --json`).
    pub fn to_json(&self) -> Value {
        let tokens = self.tokens.as_ref().map(|t| {
            let mut bins = Vec::new();
            for (lo, hi, n) in t.histogram() {
                bins.push(json!({"from": lo, "to": hi, "records": n}));
            }
            json!({
                "samples": t.lengths.len(),
                "failed": t.failed,
                "min": t.percentile(0.0), "p50": t.percentile(0.5), "p90": t.percentile(0.9),
                "p99": t.percentile(0.99), "max": t.percentile(1.0), "mean": t.mean(),
                "trained_tokens": t.trained,
                "over_model_max_length": t.over_max,
                "model_max_length": t.model_max_length,
                "histogram": bins,
            })
        });
        json!({
            "records": self.records,
            "with_image": self.with_image,
            "unreadable": self.unreadable,
            "turns": self.turns,
            "rounds": self.rounds.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "image_placeholders": self.placeholders,
            "chars": self.chars,
            "tokens": tokens,
        })
    }
}

impl TokenStats {
    /// `(from, to, count)` per bin of [`BIN_EDGES`]; `to` is `None` for the open last bin.
    pub fn histogram(&self) -> Vec<(usize, Option<usize>, usize)> {
        let mut counts = vec![0usize; BIN_EDGES.len() + 1];
        for &l in &self.lengths {
            let bin = BIN_EDGES
                .iter()
                .position(|&e| (l as usize) < e)
                .unwrap_or(BIN_EDGES.len());
            counts[bin] += 1;
        }
        let mut lo = 0;
        counts
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let hi = BIN_EDGES.get(i).copied();
                let row = (lo, hi, n);
                lo = hi.unwrap_or(lo);
                row
            })
            .collect()
    }

    /// The nearest-rank percentile `q` in `[0, 1]` (0 when there are no samples).
    pub fn percentile(&self, q: f64) -> u32 {
        if self.lengths.is_empty() {
            return 0;
        }
        let mut sorted = self.lengths.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn mean(&self) -> f64 {
        if self.lengths.is_empty() {
            return 0.0;
        }
        self.lengths.iter().map(|&l| l as f64).sum::<f64>() / self.lengths.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_histogram() {
        let mut s = Stats::default();
        s.add(&json!({"id": "1", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}));
        s.add(&json!({"id": "2", "conversations": 3}));
        assert_eq!(
            (
                s.records,
                s.with_image,
                s.unreadable,
                s.turns,
                s.placeholders
            ),
            (2, 1, 1, 2, 1)
        );
        assert_eq!(s.rounds.get(&1), Some(&1));
        let t = TokenStats {
            lengths: vec![10, 70, 3000, 64],
            ..Default::default()
        };
        let h = t.histogram();
        assert_eq!(h[0], (0, Some(64), 1));
        assert_eq!(h[1], (64, Some(128), 2));
        assert_eq!(h[6], (2048, None, 1));
        assert_eq!(
            (t.percentile(0.5), t.percentile(1.0), t.percentile(0.0)),
            (64, 3000, 10)
        );
    }
}
