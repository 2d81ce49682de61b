//! ROUGE-L as pycocoevalcap computes it (salaniz/pycocoevalcap @ad63453 `rouge/rouge.py`), not
//! rouge_score's: tokens come from `split(" ")` (so an empty text is one empty token), for each
//! reference `P = LCS/|cand|` and `R = LCS/|ref|`, the maxima of P and of R are taken
//! *separately* over the references, and the score is
//! `(1 + β²)·P·R / (R + β²·P)` with β = 1.2, or 0 if either maximum is 0.

const BETA: f64 = 1.2;

/// Length of the longest common subsequence of two token lists.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of one tokenised candidate against its tokenised references (0 without references).
pub fn rouge_l(candidate: &str, references: &[String]) -> f64 {
    let cand: Vec<&str> = candidate.split(' ').collect();
    let (mut p_max, mut r_max) = (0.0f64, 0.0f64);
    for r in references {
        let toks: Vec<&str> = r.split(' ').collect();
        let l = lcs(&toks, &cand) as f64;
        p_max = p_max.max(l / cand.len() as f64);
        r_max = r_max.max(l / toks.len() as f64);
    }
    if p_max != 0.0 && r_max != 0.0 {
        let b2 = BETA * BETA;
        (1.0 + b2) * p_max * r_max / (r_max + b2 * p_max)
    } else {
        0.0
    }
}
