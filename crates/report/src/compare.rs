//! One entry per (model, task, metric), and for every model but the baseline the comparison
//! with the baseline: paired when both runs logged the same documents, unpaired otherwise
//! (`shared/spec/report-statistics.md` items 1–13).

use serde::Serialize;

use crate::input::{Model, PerDoc, Samples, TaskKey, TaskRun};
use crate::stats;
use crate::Options;

/// Which test produced an entry's p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// McNemar's exact test on 0/1 per-document values (spec item 3).
    McnemarExact,
    /// Paired bootstrap of the mean per-document difference (spec item 5).
    PairedBootstrap,
    /// Unpaired two-sample z-test on the reported values and stderrs (spec item 9).
    ZUnpaired,
}

impl Test {
    /// The label used in tables.
    pub fn label(self) -> &'static str {
        match self {
            Test::McnemarExact => "McNemar exact",
            Test::PairedBootstrap => "paired bootstrap",
            Test::ZUnpaired => "z-test (unpaired)",
        }
    }
}

/// One row of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Model label.
    pub model: String,
    /// Task name.
    pub task: String,
    /// Corruption for image tasks run on corrupted images, else null.
    pub corruption: Option<String>,
    /// Its severity, else null.
    pub severity: Option<u32>,
    /// Metric name (`,<filter>` appended for filters other than "none").
    pub metric: String,
    /// Reported value (null where the file has NaN).
    pub value: Option<f64>,
    /// Reported stderr.
    pub stderr: Option<f64>,
    /// Documents the model was evaluated on.
    pub n: Option<u64>,
    /// Difference to the baseline (paired: over the paired documents).
    pub delta: Option<f64>,
    /// The test behind `p_value`.
    pub test: Option<Test>,
    /// Two-sided raw p-value.
    pub p_value: Option<f64>,
    /// Holm-adjusted p-value over all tests of this model against the baseline.
    pub p_holm: Option<f64>,
    /// 95% bootstrap interval of the delta.
    pub ci95: Option<[f64; 2]>,
    /// Documents in the paired test (NaN pairs excluded).
    pub n_paired: Option<u64>,
    /// Documents left out of the pair because a value was NaN.
    pub n_nan: Option<u64>,
    /// Why there is no test, or why the test is unpaired.
    pub note: Option<String>,
}

impl Entry {
    /// The task condition this entry belongs to.
    pub fn key(&self) -> TaskKey {
        TaskKey {
            task: self.task.clone(),
            corruption: self.corruption.clone().zip(self.severity),
        }
    }

    /// Whether the delta is significant at `alpha` on the raw p-value.
    pub fn significant(&self, alpha: f64) -> bool {
        self.p_value.is_some_and(|p| p < alpha)
    }
}

/// The per-document values of `metric` in both runs, joined by `doc_id`.
enum Pairing {
    /// Numbers on both sides for the same documents.
    Paired { x: Vec<f64>, y: Vec<f64>, nan: u64 },
    /// The metric has no numeric per-document values (a corpus-level metric).
    Corpus,
    /// The runs do not cover the same documents.
    NotPaired(String),
}

fn pair(base: &Samples, other: &Samples, metric: &str) -> Pairing {
    if base.docs.len() != other.docs.len() {
        return Pairing::NotPaired(format!(
            "{} vs {} documents",
            base.docs.len(),
            other.docs.len()
        ));
    }
    for ((ib, db), (io, dox)) in base.docs.iter().zip(&other.docs) {
        if ib != io {
            return Pairing::NotPaired(format!("doc_id {ib} is in one run only"));
        }
        if let (Some(a), Some(b)) = (&db.hash, &dox.hash) {
            if a != b {
                return Pairing::NotPaired(format!("doc_hash differs for doc_id {ib}"));
            }
        }
    }
    let (mut x, mut y, mut nan) = (Vec::new(), Vec::new(), 0u64);
    for (db, dox) in base.docs.values().zip(other.docs.values()) {
        match (db.values.get(metric), dox.values.get(metric)) {
            (Some(PerDoc::Num(a)), Some(PerDoc::Num(b))) => {
                if a.is_nan() || b.is_nan() {
                    nan += 1;
                } else {
                    x.push(*a);
                    y.push(*b);
                }
            }
            _ => return Pairing::Corpus,
        }
    }
    Pairing::Paired { x, y, nan }
}

/// Which yes/no rate a corpus metric is: sightline's `precision`/`recall`/`f1`, lmms-eval's
/// `pope_precision`/`pope_recall`/`pope_f1_score`/`pope_accuracy`.
fn yes_no_kind(metric: &str) -> Option<&'static str> {
    let m = metric.strip_suffix("_score").unwrap_or(metric);
    ["precision", "recall", "f1", "accuracy"]
        .into_iter()
        .find(|k| m == *k || m.ends_with(&format!("_{k}")))
        .map(|k| if k == "accuracy" { "acc" } else { k })
}

/// Per document: (answered yes, label is yes).
type YesNo = Vec<(bool, bool)>;

/// Yes/no answers of both runs for a POPE-style corpus metric (precision, recall, F1), in
/// `doc_id` order; `None` unless every document of both runs has them (the runs are already
/// known to cover the same documents).
fn yes_no_pairs(base: &Samples, other: &Samples, metric: &str) -> Option<(YesNo, YesNo)> {
    yes_no_kind(metric)?;
    let x: Option<Vec<_>> = base.docs.values().map(|d| d.yes_no).collect();
    let y: Option<Vec<_>> = other.docs.values().map(|d| d.yes_no).collect();
    let (x, y) = (x?, y?);
    // Both runs must score against the same labels.
    x.iter().zip(&y).all(|(a, b)| a.1 == b.1).then_some((x, y))
}

fn is_binary(v: &[f64]) -> bool {
    v.iter().all(|&a| a == 0.0 || a == 1.0)
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// All entries: for each model in order, its task conditions and metrics in sorted order.
pub fn entries(models: &[Model], baseline: usize, opts: &Options) -> Vec<Entry> {
    let base = &models[baseline];
    let mut out = Vec::new();
    for (mi, m) in models.iter().enumerate() {
        let start = out.len();
        for (key, run) in &m.tasks {
            for (metric, mv) in &run.metrics {
                let mut e = Entry {
                    model: m.label.clone(),
                    task: key.task.clone(),
                    corruption: key.corruption.as_ref().map(|c| c.0.clone()),
                    severity: key.corruption.as_ref().map(|c| c.1),
                    metric: metric.clone(),
                    value: finite(mv.value),
                    stderr: mv.stderr,
                    n: run
                        .n
                        .or_else(|| run.samples.as_ref().map(|s| s.docs.len() as u64)),
                    delta: None,
                    test: None,
                    p_value: None,
                    p_holm: None,
                    ci95: None,
                    n_paired: None,
                    n_nan: None,
                    note: None,
                };
                if mi != baseline {
                    match base.tasks.get(key) {
                        Some(b) if b.metrics.contains_key(metric) => {
                            compare(&mut e, b, run, metric, opts)
                        }
                        _ => e.note = Some("not in the baseline".into()),
                    }
                }
                out.push(e);
            }
        }
        // Holm across every test of this model against the baseline (spec item 10).
        let tested: Vec<usize> = (start..out.len())
            .filter(|&i| out[i].p_value.is_some())
            .collect();
        let p: Vec<f64> = tested.iter().filter_map(|&i| out[i].p_value).collect();
        for (&i, h) in tested.iter().zip(stats::holm(&p)) {
            out[i].p_holm = Some(h);
        }
    }
    out
}

/// Fills `e`'s delta and test against the baseline run `b`.
fn compare(e: &mut Entry, b: &TaskRun, o: &TaskRun, metric: &str, opts: &Options) {
    if e.task.starts_with("ethics_") && metric == "em" {
        // sightline logs each document's correctness under `em`, but the metric is the exact
        // match over blocks of 4 (5 for virtue) documents: not a per-document value.
        e.delta = finite(o.metrics[metric].value - b.metrics[metric].value);
        e.note = Some("no paired test: em is an exact match over groups of documents".into());
        return;
    }
    let unpaired_reason = match (&b.samples, &o.samples) {
        (Some(bs), Some(os)) => match pair(bs, os, metric) {
            Pairing::Paired { x, y, nan } => {
                e.n_paired = Some(x.len() as u64);
                e.n_nan = Some(nan);
                if x.is_empty() {
                    e.note = Some("no document with a value on both sides".into());
                    return;
                }
                if is_binary(&x) && is_binary(&y) {
                    let bc = x.iter().zip(&y).filter(|(a, b)| **a == 1.0 && **b == 0.0);
                    let cc = x.iter().zip(&y).filter(|(a, b)| **a == 0.0 && **b == 1.0);
                    let (bn, cn) = (bc.count() as u64, cc.count() as u64);
                    e.delta = Some((cn as f64 - bn as f64) / x.len() as f64);
                    e.test = Some(crate::compare::Test::McnemarExact);
                    e.p_value = Some(stats::mcnemar_exact(bn, cn));
                } else {
                    let bs = stats::paired_bootstrap(&x, &y, opts.bootstrap_b, opts.seed);
                    e.delta = Some(bs.delta);
                    e.test = Some(Test::PairedBootstrap);
                    e.p_value = Some(bs.p_value);
                    e.ci95 = Some([bs.ci.0, bs.ci.1]);
                }
                return;
            }
            Pairing::Corpus => {
                let pope = e.task.starts_with("pope");
                if let (true, Some((x, y)), Some(kind)) =
                    (pope, yes_no_pairs(bs, os, metric), yes_no_kind(metric))
                {
                    let full: Vec<usize> = (0..x.len()).collect();
                    let stat = |idx: &[usize]| {
                        stats::yes_no_metric(&y, idx, kind) - stats::yes_no_metric(&x, idx, kind)
                    };
                    let d = stat(&full);
                    let bs = stats::bootstrap_with(x.len(), opts.bootstrap_b, opts.seed, d, stat);
                    e.n_paired = Some(x.len() as u64);
                    e.delta = finite(d);
                    e.test = Some(Test::PairedBootstrap);
                    e.p_value = Some(bs.p_value);
                    e.ci95 =
                        (bs.ci.0.is_finite() && bs.ci.1.is_finite()).then_some([bs.ci.0, bs.ci.1]);
                    e.note = Some(format!(
                        "{metric} recomputed on each resample from the yes/no answers"
                    ));
                    return;
                }
                e.delta = finite(o.metrics[metric].value - b.metrics[metric].value);
                e.note =
                    Some("no paired test: corpus-level metric without per-document values".into());
                return;
            }
            Pairing::NotPaired(why) => format!("runs not paired ({why})"),
        },
        (None, _) => "no per-document samples for the baseline".to_string(),
        (_, None) => "no per-document samples for this model".to_string(),
    };
    let (bv, ov) = (&b.metrics[metric], &o.metrics[metric]);
    e.delta = finite(ov.value - bv.value);
    match (bv.stderr, ov.stderr) {
        (Some(s1), Some(s2)) if bv.value.is_finite() && ov.value.is_finite() => {
            match stats::z_test(bv.value, s1, ov.value, s2) {
                Some(p) => {
                    e.test = Some(Test::ZUnpaired);
                    e.p_value = Some(p);
                    e.note = Some(format!("unpaired: {unpaired_reason}"));
                }
                None => e.note = Some(format!("no test: zero stderr ({unpaired_reason})")),
            }
        }
        _ => e.note = Some(format!("no test: no stderr and {unpaired_reason}")),
    }
}
