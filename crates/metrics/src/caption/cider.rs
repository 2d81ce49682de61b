//! CIDEr-D as pycocoevalcap's `Cider` computes it (salaniz/pycocoevalcap @ad63453
//! `cider/cider_scorer.py`; despite the name this is CIDEr-D: clipped, length-penalised), n = 1..4,
//! σ = 6.
//!
//! - Document frequency `df(g)` = the number of images whose reference *set* contains the
//!   n-gram g, counted over the evaluated images themselves; `L = ln(#images)`, so a one-image
//!   corpus scores 0.
//! - An n-gram's weight is `count · (L − ln(max(1, df)))`; norms are per n.
//! - `sim_n = Σ_g min(v_h, v_r)·v_r / (‖v_h‖‖v_r‖)` (the division skipped when a norm is 0),
//!   times `exp(−Δ²/(2σ²))` where Δ is the difference of the **bigram counts** (words − 1).
//! - Image score = `10 · mean_n(Σ_refs sim_n) / #refs`; the corpus score is their mean.
//!
//! Sums run in the reference's order (n-grams in first-occurrence order, numpy's pairwise sum
//! for the means), so results agree to the last bits.

use std::collections::HashMap;

use crate::pystr::py_split;

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// N-gram counts in first-occurrence order (Python dict order): n = 1 first, then 2, ….
struct Counts<'a> {
    grams: Vec<(&'a [&'a str], usize)>,
}

fn precook<'a>(words: &'a [&'a str]) -> Counts<'a> {
    let mut index: HashMap<&[&str], usize> = HashMap::new();
    let mut grams: Vec<(&[&str], usize)> = Vec::new();
    for k in 1..=N {
        for w in words.windows(k) {
            match index.get(w) {
                Some(&i) => grams[i].1 += 1,
                None => {
                    index.insert(w, grams.len());
                    grams.push((w, 1));
                }
            }
        }
    }
    Counts { grams }
}

/// Per-n tf-idf vectors (n-gram → weight, in insertion order), norms and bigram count.
struct Vector<'a> {
    weights: [Vec<(&'a [&'a str], f64)>; N],
    lookup: [HashMap<&'a [&'a str], f64>; N],
    norm: [f64; N],
    length: usize,
}

fn to_vec<'a>(c: &Counts<'a>, df: &HashMap<&[&str], f64>, ref_len: f64) -> Vector<'a> {
    let mut v = Vector {
        weights: Default::default(),
        lookup: Default::default(),
        norm: [0.0; N],
        length: 0,
    };
    for &(g, tf) in &c.grams {
        let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
        let n = g.len() - 1;
        let w = tf as f64 * (ref_len - d);
        v.weights[n].push((g, w));
        v.lookup[n].insert(g, w);
        v.norm[n] += w.powi(2);
        if n == 1 {
            v.length += tf;
        }
    }
    v.norm = v.norm.map(f64::sqrt);
    v
}

fn sim(h: &Vector, r: &Vector) -> [f64; N] {
    let delta = h.length as f64 - r.length as f64;
    std::array::from_fn(|n| {
        let mut val = 0.0;
        for &(g, wh) in &h.weights[n] {
            let wr = r.lookup[n].get(g).copied().unwrap_or(0.0);
            val += wh.min(wr) * wr;
        }
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            val /= h.norm[n] * r.norm[n];
        }
        val * std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA))
    })
}

/// numpy's pairwise summation (`np.add.reduce` on a contiguous float64 array).
pub(crate) fn numpy_sum(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 8 {
        xs.iter().fold(0.0, |acc, x| acc + x)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&xs[..8]);
        let full = n - n % 8;
        for chunk in xs[8..full].chunks_exact(8) {
            for j in 0..8 {
                r[j] += chunk[j];
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &xs[full..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&xs[..n2]) + numpy_sum(&xs[n2..])
    }
}

/// `np.mean`: the pairwise sum divided by the length (NaN when empty).
pub(crate) fn numpy_mean(xs: &[f64]) -> f64 {
    numpy_sum(xs) / xs.len() as f64
}

/// Corpus CIDEr-D and each image's score over `(hypothesis, references)` pairs of tokenised
/// text. The caller guarantees at least one image and one reference per image.
pub fn cider_d(pairs: &[(&str, &[String])]) -> (f64, Vec<f64>) {
    let hyp_words: Vec<Vec<&str>> = pairs.iter().map(|(h, _)| py_split(h).collect()).collect();
    let ref_words: Vec<Vec<Vec<&str>>> = pairs
        .iter()
        .map(|(_, rs)| rs.iter().map(|r| py_split(r).collect()).collect())
        .collect();
    let hyp_counts: Vec<Counts> = hyp_words.iter().map(|w| precook(w)).collect();
    let ref_counts: Vec<Vec<Counts>> = ref_words
        .iter()
        .map(|rs| rs.iter().map(|w| precook(w)).collect())
        .collect();
    let mut df: HashMap<&[&str], f64> = HashMap::new();
    for refs in &ref_counts {
        let mut seen: std::collections::HashSet<&[&str]> = std::collections::HashSet::new();
        for c in refs {
            for &(g, _) in &c.grams {
                if seen.insert(g) {
                    *df.entry(g).or_insert(0.0) += 1.0;
                }
            }
        }
    }
    let ref_len = (pairs.len() as f64).ln();
    let scores: Vec<f64> = hyp_counts
        .iter()
        .zip(&ref_counts)
        .map(|(h, refs)| {
            let vh = to_vec(h, &df, ref_len);
            let mut score = [0.0; N];
            for r in refs {
                let s = sim(&vh, &to_vec(r, &df, ref_len));
                for n in 0..N {
                    score[n] += s[n];
                }
            }
            numpy_mean(&score) / refs.len() as f64 * 10.0
        })
        .collect();
    (numpy_mean(&scores), scores)
}
