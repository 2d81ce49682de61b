//! BLEU-1..4 as pycocoevalcap computes it (salaniz/pycocoevalcap @ad63453 `bleu/bleu_scorer.py`,
//! `Bleu(4).compute_score`, option `"closest"`); this is not sacrebleu (see [`crate::bleu`]).
//!
//! Texts are split on whitespace (already PTB-tokenised). Per image: the effective reference
//! length is the one closest to the hypothesis length (ties → the shorter), n-gram matches are
//! clipped by the maximum count over the references, and `guess_k = max(0, len − k + 1)`. The
//! corpus score sums lengths, matches and guesses over images and computes
//! `BLEU_n = (Π_{k≤n} (m_k + 1e-15)/(g_k + 1e-9))^(1/n)`, times `exp(1 − 1/ratio)` when
//! `ratio = (c + 1e-15)/(r + 1e-9) < 1`. Per-image scores apply the same formula to one image.

use std::collections::HashMap;

use crate::pystr::py_split;

/// Sufficient statistics of one image (`cook_test`'s result).
#[derive(Debug, Clone, Copy)]
struct Stats {
    testlen: usize,
    reflen: usize,
    guess: [usize; 4],
    correct: [usize; 4],
}

fn ngram_counts<'a>(words: &[&'a str]) -> HashMap<Vec<&'a str>, usize> {
    let mut counts = HashMap::new();
    for k in 1..=4 {
        for w in words.windows(k) {
            *counts.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

fn cook(hyp: &str, refs: &[String]) -> Stats {
    let mut max_counts: HashMap<Vec<&str>, usize> = HashMap::new();
    let mut reflens = Vec::with_capacity(refs.len());
    for r in refs {
        let words: Vec<&str> = py_split(r).collect();
        reflens.push(words.len());
        for (g, c) in ngram_counts(&words) {
            let e = max_counts.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let words: Vec<&str> = py_split(hyp).collect();
    let testlen = words.len();
    // min over (|l - testlen|, l): the closest length, the shorter one on a tie.
    let reflen = reflens
        .iter()
        .copied()
        .min_by_key(|&l| (l.abs_diff(testlen), l))
        .unwrap_or(0);
    let mut correct = [0usize; 4];
    for (g, c) in ngram_counts(&words) {
        correct[g.len() - 1] += c.min(max_counts.get(&g).copied().unwrap_or(0));
    }
    let guess = [1, 2, 3, 4].map(|k| (testlen + 1).saturating_sub(k));
    Stats {
        testlen,
        reflen,
        guess,
        correct,
    }
}

fn bleu_from(testlen: usize, reflen: usize, guess: [usize; 4], correct: [usize; 4]) -> [f64; 4] {
    const SMALL: f64 = 1e-9;
    const TINY: f64 = 1e-15;
    let mut out = [0.0; 4];
    let mut prod = 1.0;
    for k in 0..4 {
        prod *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        out[k] = prod.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        for b in &mut out {
            *b *= bp;
        }
    }
    out
}

/// Corpus BLEU-1..4 and each image's BLEU-1..4 over `(hypothesis, references)` pairs of
/// tokenised text. The caller guarantees at least one reference per image.
pub fn bleu(pairs: &[(&str, &[String])]) -> ([f64; 4], Vec<[f64; 4]>) {
    let stats: Vec<Stats> = pairs.iter().map(|(h, r)| cook(h, r)).collect();
    let per_image = stats
        .iter()
        .map(|s| bleu_from(s.testlen, s.reflen, s.guess, s.correct))
        .collect();
    let (mut c, mut r, mut g, mut m) = (0, 0, [0usize; 4], [0usize; 4]);
    for s in &stats {
        c += s.testlen;
        r += s.reflen;
        for k in 0..4 {
            g[k] += s.guess[k];
            m[k] += s.correct[k];
        }
    }
    (bleu_from(c, r, g, m), per_image)
}
