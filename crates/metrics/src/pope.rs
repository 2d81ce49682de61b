//! POPE (Li et al., EMNLP 2023) yes/no hallucination metrics exactly as Sight-Beyond-Text
//! @47f96a32 `llava/eval/mmoverall/pope_metric.py` `get_pope_results` computes them, with the
//! answer parsing of RUCAIBox/POPE @3df3ba1 `evaluate.py`. Spec: `spec/multimodal-eval.md` E3.
//!
//! Parsing ([`parse_answer`]) works on the raw model output: keep the text before the first
//! `.`, delete `,`, split on single spaces (not on whitespace), and answer **no** if any word is
//! exactly `No`, `no` or `not`; otherwise **yes**. So the empty string, `NO`, `Nope`,
//! `"not sure"`… parse as shown in the tests: `NO` is *yes*, `No, there is…` is *no*,
//! `"Yes. No."` is *yes* (only the first sentence counts).
//!
//! Labels: `"no"` is negative, anything else positive ([`parse_label`]).

use thiserror::Error;

/// Inputs that the reference would reject or silently truncate.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PopeError {
    /// `zip` in the reference would silently drop the tail; here it is an error.
    #[error("POPE: {preds} predictions but {labels} labels")]
    LengthMismatch { preds: usize, labels: usize },
}

/// Confusion counts and the five reported rates (0..1 floats, not percentages).
///
/// Where the reference raises `ZeroDivisionError` (no input; no predicted yes for precision; no
/// positive label for recall; precision + recall = 0 or either undefined for F1) the rate is
/// NaN; [`PopeScores::is_complete`] says whether every rate is defined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PopeScores {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Fraction of predictions that parsed as *yes*.
    pub yes_ratio: f64,
}

impl PopeScores {
    /// False where the reference would have raised on a zero division.
    pub fn is_complete(&self) -> bool {
        [
            self.accuracy,
            self.precision,
            self.recall,
            self.f1,
            self.yes_ratio,
        ]
        .iter()
        .all(|x| !x.is_nan())
    }
}

/// POPE's answer parsing: `true` for *yes*.
///
/// ```
/// use sightline_metrics::pope::parse_answer;
/// assert!(!parse_answer("No, there is no dog."));
/// assert!(parse_answer("Yes. No."));
/// assert!(parse_answer("")); // empty output counts as yes
/// assert!(parse_answer("NO")); // only `No`, `no`, `not` are negative words
/// ```
pub fn parse_answer(text: &str) -> bool {
    let first = text.split('.').next().unwrap_or(text);
    let cleaned = first.replace(',', "");
    !cleaned
        .split(' ')
        .any(|w| w == "No" || w == "no" || w == "not")
}

/// POPE's label parsing: `"no"` is negative, every other label positive.
pub fn parse_label(label: &str) -> bool {
    label != "no"
}

/// Divides as Python does, NaN where Python raises.
fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        f64::NAN
    } else {
        num / den
    }
}

/// Scores raw model outputs against labels (`true` = the object is present).
pub fn score<S: AsRef<str>>(preds: &[S], labels: &[bool]) -> Result<PopeScores, PopeError> {
    if preds.len() != labels.len() {
        return Err(PopeError::LengthMismatch {
            preds: preds.len(),
            labels: labels.len(),
        });
    }
    let (mut tp, mut fp, mut tn, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    for (pred, &label) in preds.iter().zip(labels) {
        match (parse_answer(pred.as_ref()), label) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let precision = ratio(tp as f64, (tp + fp) as f64);
    let recall = ratio(tp as f64, (tp + fn_) as f64);
    let f1 = ratio(2.0 * precision * recall, precision + recall);
    Ok(PopeScores {
        tp,
        fp,
        tn,
        fn_,
        accuracy: ratio((tp + tn) as f64, preds.len() as f64),
        precision,
        recall,
        f1,
        yes_ratio: ratio((tp + fp) as f64, preds.len() as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_divisions_are_nan() {
        let s = score(&["No", "no"], &[true, false]).unwrap();
        assert!(s.precision.is_nan() && s.f1.is_nan() && !s.is_complete());
        assert_eq!(s.recall, 0.0);
        let e = score::<&str>(&[], &[]).unwrap();
        assert!(e.accuracy.is_nan());
        assert!(score(&["yes"], &[]).is_err());
    }
}
