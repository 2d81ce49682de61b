//! MME (Fu et al. 2023) scores exactly as Sight-Beyond-Text @47f96a32
//! `llava/eval/mmoverall/mme_metric.py` computes them from its per-task result files (itself the
//! MME eval tool's `calculation.py` minus the `landmark` and `artwork` tasks, plus a `strip()`).
//! Spec: `spec/multimodal-eval.md` E4.
//!
//! Each task is a list of result lines `image\tquestion\tGT\tpred`, two per image, adjacent:
//! - A line with 3 tab-separated fields has prediction `other`. SBT strips the line when it
//!   writes it, so an empty prediction loses its tab and lands here too. Any other field count
//!   is an error (the reference raises).
//! - GT and prediction are stripped and lower-cased. The prediction is `yes`/`no` as is;
//!   otherwise its first 4 characters decide: containing `yes` → yes, else containing `no` →
//!   no (`"nope"`, `"none"`, `"not sure"` are no), else `other`, which is always wrong.
//! - acc = correct / questions; acc+ = images with both answers correct / images (pairs of
//!   consecutive lines, whatever their image names say); task score = `100·acc + 100·acc+`.
//! - Perception = the sum of [`PERCEPTION`]'s 8 task scores (max 1600: SBT drops landmark and
//!   artwork), Cognition = the sum of [`COGNITION`]'s 4 (max 800).
//! - TP/FN/TN/FP, precision and recall are over the non-`other` predictions (yes = positive),
//!   informational; precision and recall are 0 where sklearn's zero division gives 0.

use thiserror::Error;

/// SBT's Perception tasks, in the order their scores are summed.
pub const PERCEPTION: [&str; 8] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "OCR",
];

/// SBT's Cognition tasks, in the order their scores are summed.
pub const COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];

/// Result files the reference would reject.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MmeError {
    #[error("MME task {task}: line {line} has {fields} tab-separated fields, expected 3 or 4")]
    Fields {
        task: String,
        line: usize,
        fields: usize,
    },
    #[error("MME task {task}: line {line} has ground truth {gt:?}, expected yes or no")]
    GroundTruth {
        task: String,
        line: usize,
        gt: String,
    },
    #[error("MME task {task}: {lines} lines, expected two per image")]
    OddLines { task: String, lines: usize },
    #[error("MME task {task} has no lines")]
    Empty { task: String },
    #[error("MME task {task} is missing")]
    MissingTask { task: String },
}

/// A parsed prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    Other,
}

/// `parse_pred_ans` after `strip().lower()`.
///
/// ```
/// use sightline_metrics::mme::{parse_pred, Answer};
/// assert_eq!(parse_pred(" Yes, it is."), Answer::Yes);
/// assert_eq!(parse_pred("nope"), Answer::No);
/// assert_eq!(parse_pred("I think yes"), Answer::Other); // only the first 4 characters count
/// ```
pub fn parse_pred(pred: &str) -> Answer {
    let p = pred.trim_matches(crate::pystr::is_py_space).to_lowercase();
    match p.as_str() {
        "yes" => Answer::Yes,
        "no" => Answer::No,
        _ => {
            let prefix: String = p.chars().take(4).collect();
            if prefix.contains("yes") {
                Answer::Yes
            } else if prefix.contains("no") {
                Answer::No
            } else {
                Answer::Other
            }
        }
    }
}

/// One task's scores (acc and acc+ as 0..1 fractions; `score` on SBT's 0..200 scale).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskScores {
    pub acc: f64,
    pub acc_plus: f64,
    /// `100·acc + 100·acc_plus`.
    pub score: f64,
    pub tp: usize,
    pub fn_: usize,
    pub tn: usize,
    pub fp: usize,
    pub precision: f64,
    pub recall: f64,
    /// Predictions parsed as `other`.
    pub other_num: usize,
}

/// Perception and Cognition totals and each task's scores, in SBT's task order.
#[derive(Debug, Clone, PartialEq)]
pub struct MmeScores {
    pub perception: f64,
    pub cognition: f64,
    pub tasks: Vec<(String, TaskScores)>,
}

/// Scores one task's result lines (a trailing `\n` on a line is allowed).
pub fn score_task<S: AsRef<str>>(task: &str, lines: &[S]) -> Result<TaskScores, MmeError> {
    if lines.is_empty() {
        return Err(MmeError::Empty { task: task.into() });
    }
    if !lines.len().is_multiple_of(2) {
        return Err(MmeError::OddLines {
            task: task.into(),
            lines: lines.len(),
        });
    }
    let mut pairs: Vec<(bool, Answer)> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.as_ref().split('\t').collect();
        let (gt, pred) = match fields.len() {
            4 => (fields[2], parse_pred(fields[3])),
            3 => (fields[2], Answer::Other),
            n => {
                return Err(MmeError::Fields {
                    task: task.into(),
                    line: i + 1,
                    fields: n,
                })
            }
        };
        let gt_clean = gt.trim_matches(crate::pystr::is_py_space).to_lowercase();
        let gt_yes = match gt_clean.as_str() {
            "yes" => true,
            "no" => false,
            _ => {
                return Err(MmeError::GroundTruth {
                    task: task.into(),
                    line: i + 1,
                    gt: gt.into(),
                })
            }
        };
        pairs.push((gt_yes, pred));
    }
    let correct = |&(gt, pred): &(bool, Answer)| {
        matches!((gt, pred), (true, Answer::Yes) | (false, Answer::No))
    };
    let n_correct = pairs.iter().filter(|p| correct(p)).count();
    let both = pairs.chunks(2).filter(|c| c.iter().all(&correct)).count();
    let count = |gt: bool, pred: Answer| pairs.iter().filter(|&&p| p == (gt, pred)).count();
    let (tp, fn_) = (count(true, Answer::Yes), count(true, Answer::No));
    let (fp, tn) = (count(false, Answer::Yes), count(false, Answer::No));
    let zero_div = |num: usize, den: usize| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let acc = n_correct as f64 / pairs.len() as f64;
    let acc_plus = both as f64 / (pairs.len() / 2) as f64;
    Ok(TaskScores {
        acc,
        acc_plus,
        // The reference adds to a running 0 in this order.
        score: 0.0 + acc * 100.0 + acc_plus * 100.0,
        tp,
        fn_,
        tn,
        fp,
        precision: zero_div(tp, tp + fp),
        recall: zero_div(tp, tp + fn_),
        other_num: pairs.iter().filter(|p| p.1 == Answer::Other).count(),
    })
}

/// Scores every SBT task. `tasks` maps a task name to its lines; every task of [`PERCEPTION`]
/// and [`COGNITION`] must be present, other names (`landmark`, `artwork`) are ignored as SBT
/// ignores them.
pub fn score<S: AsRef<str>>(tasks: &[(&str, &[S])]) -> Result<MmeScores, MmeError> {
    let mut out = MmeScores {
        perception: 0.0,
        cognition: 0.0,
        tasks: Vec::new(),
    };
    for (group, names) in [(0, &PERCEPTION[..]), (1, &COGNITION[..])] {
        let mut total = 0.0;
        for &name in names {
            let (_, lines) = tasks
                .iter()
                .find(|(t, _)| *t == name)
                .ok_or_else(|| MmeError::MissingTask { task: name.into() })?;
            let s = score_task(name, lines)?;
            total += s.score;
            out.tasks.push((name.to_owned(), s));
        }
        if group == 0 {
            out.perception = total;
        } else {
            out.cognition = total;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_are_errors() {
        assert!(matches!(
            score_task("t", &["a\tq\tYes\tyes", "a\tq\tmaybe\tno"]),
            Err(MmeError::GroundTruth { line: 2, .. })
        ));
        assert!(matches!(
            score_task("t", &["a\tq\tYes\tyes"]),
            Err(MmeError::OddLines { .. })
        ));
        assert!(matches!(
            score_task("t", &["a\tq", "a\tq\tNo\tno"]),
            Err(MmeError::Fields { fields: 2, .. })
        ));
        let s = score_task("t", &["a\tq\tYes", "a\tq\tNo\tno\n"]).unwrap();
        assert_eq!((s.other_num, s.acc, s.acc_plus), (1, 0.5, 0.0));
    }
}
