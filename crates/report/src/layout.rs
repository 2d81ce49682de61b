//! What the report shows, independent of the output format: the paper's blocks (one row per
//! model, one column per benchmark metric, each with its delta against the baseline), a generic
//! table for every other metric, and the full list of comparisons.

use std::collections::{BTreeMap, BTreeSet};

use crate::compare::{Entry, Test};
use crate::input::{Model, TaskKey};
use crate::Options;

/// One number of a block, with its comparison.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub value: Option<f64>,
    pub stderr: Option<f64>,
    pub delta: Option<f64>,
    pub p: Option<f64>,
    pub test: Option<Test>,
    /// Present in this model's results.
    pub present: bool,
}

/// A paper-layout block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Title ("TruthfulQA").
    pub title: String,
    /// File-name stem for its plot.
    pub slug: String,
    /// Column headers.
    pub headers: Vec<String>,
    /// `cells[model][column]`.
    pub cells: Vec<Vec<Cell>>,
    /// Notes printed under the table.
    pub notes: Vec<String>,
}

/// A generic table.
#[derive(Debug, Clone)]
pub struct Table {
    pub title: String,
    pub notes: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Everything the renderers need.
#[derive(Debug, Clone)]
pub struct Layout {
    pub labels: Vec<String>,
    pub baseline: usize,
    pub blocks: Vec<Block>,
    pub tables: Vec<Table>,
    /// The "how to read this" paragraphs.
    pub method: Vec<String>,
    pub alpha: f64,
    /// Entries computed here (the ETHICS average), for report.json.
    pub derived: Vec<Entry>,
}

type Spec = (&'static str, &'static str, &'static str);
/// (task, metric, column header).
type Col = (String, String, String);

const TRUTHFULQA: &[Spec] = &[
    ("truthfulqa_mc1", "acc", "MC1 acc"),
    ("truthfulqa_mc2", "acc", "MC2 acc"),
    ("truthfulqa_gen", "bleu_acc", "BLEU acc"),
    ("truthfulqa_gen", "rouge1_acc", "ROUGE-1 acc"),
    ("truthfulqa_gen", "rouge2_acc", "ROUGE-2 acc"),
    ("truthfulqa_gen", "rougeL_acc", "ROUGE-L acc"),
];
const ETHICS: &[Spec] = &[
    ("ethics_cm", "acc", "Commonsense"),
    ("ethics_deontology", "acc", "Deontology"),
    ("ethics_justice", "acc", "Justice"),
    ("ethics_utilitarianism", "acc", "Utilitarianism"),
    ("ethics_virtue", "acc", "Virtue"),
];
/// The paper's retention checks (Table 2): the skills visual instruction tuning must keep.
/// SQuAD2's exact/F1 are on the official script's 0–100 scale. GSM8K run with
/// `--gsm8k-harness 0.4` reports lm-eval 0.4's `exact_match` per filter instead of `acc`.
const RETENTION: &[Spec] = &[
    ("mmlu", "acc", "MMLU acc"),
    ("mmlu_loglik", "acc", "MMLU (loglik) acc"),
    ("gsm8k", "acc", "GSM8K acc"),
    ("gsm8k", "exact_match,strict-match", "GSM8K (0.4) strict EM"),
    (
        "gsm8k",
        "exact_match,flexible-extract",
        "GSM8K (0.4) flexible EM",
    ),
    ("mathqa", "acc", "MathQA acc"),
    ("mathqa", "acc_norm", "MathQA acc_norm"),
    ("mathqa_0shot", "acc", "MathQA 0-shot acc"),
    ("boolq", "acc", "BoolQ acc"),
    ("squad2", "exact", "SQuAD2 exact"),
    ("squad2", "f1", "SQuAD2 F1"),
];
const POPE: &[Spec] = &[
    ("pope_random", "acc", "random acc"),
    ("pope_random", "f1", "random F1"),
    ("pope_popular", "acc", "popular acc"),
    ("pope_popular", "f1", "popular F1"),
    ("pope_adversarial", "acc", "adversarial acc"),
    ("pope_adversarial", "f1", "adversarial F1"),
];
const MME: &[Spec] = &[
    ("mme", "perception", "Perception"),
    ("mme", "cognition", "Cognition"),
];
const CAPTIONS: &[Spec] = &[
    ("coco_caption", "BLEU_4", "COCO BLEU-4"),
    ("coco_caption", "ROUGE_L", "COCO ROUGE-L"),
    ("coco_caption", "CIDEr", "COCO CIDEr"),
    ("flickr30k_caption", "BLEU_4", "Flickr30k BLEU-4"),
    ("flickr30k_caption", "ROUGE_L", "Flickr30k ROUGE-L"),
    ("flickr30k_caption", "CIDEr", "Flickr30k CIDEr"),
];

/// Lookup of entries by (model, task condition, metric).
struct Index<'a> {
    map: BTreeMap<(usize, TaskKey, String), &'a Entry>,
}

impl Layout {
    pub fn new(models: &[Model], baseline: usize, entries: &[Entry], opts: &Options) -> Self {
        let labels: Vec<String> = models.iter().map(|m| m.label.clone()).collect();
        let mut idx = Index {
            map: BTreeMap::new(),
        };
        for e in entries {
            let mi = labels.iter().position(|l| *l == e.model).unwrap_or(0);
            idx.map.insert((mi, e.key(), e.metric.clone()), e);
        }
        let mut used: BTreeSet<(String, String)> = BTreeSet::new();
        let mut derived = Vec::new();
        let mut blocks = Vec::new();
        let n = labels.len();
        for (title, slug, spec) in block_specs(entries) {
            let present: Vec<&Col> = spec
                .iter()
                .filter(|(t, m, _)| (0..n).any(|mi| idx.get(mi, t, m).is_some()))
                .collect();
            if present.is_empty() {
                continue;
            }
            let mut block = Block {
                title: title.into(),
                slug: slug.into(),
                headers: present.iter().map(|c| c.2.clone()).collect(),
                cells: vec![Vec::new(); n],
                notes: Vec::new(),
            };
            for (t, m, _) in &present {
                used.insert((t.clone(), m.clone()));
                for (mi, row) in block.cells.iter_mut().enumerate() {
                    row.push(idx.get(mi, t, m).map(cell).unwrap_or_default());
                }
            }
            block.notes.push(tests_note(&block, opts.alpha));
            if slug == "ethics" {
                derived = ethics_average(&mut block, &present, &labels, baseline);
            }
            blocks.push(block);
        }
        let mut tables = other_tables(entries, &used, &labels, baseline, opts.alpha);
        tables.push(details(entries, &labels, baseline));
        Layout {
            method: method(&labels[baseline], opts),
            labels,
            baseline,
            blocks,
            tables,
            alpha: opts.alpha,
            derived,
        }
    }
}

/// The paper-layout blocks in order: (title, slug, columns). VQAv2's and Unicorn's columns are
/// the clean tasks and metrics present in `entries`.
fn block_specs(entries: &[Entry]) -> Vec<(&'static str, &'static str, Vec<Col>)> {
    let dynamic = |prefix: &str, metrics: &[&str]| -> Vec<Col> {
        let mut cols = BTreeSet::new();
        for e in entries.iter().filter(|e| e.corruption.is_none()) {
            if e.task.starts_with(prefix)
                && (metrics.is_empty() || metrics.contains(&e.metric.as_str()))
            {
                cols.insert((e.task.clone(), e.metric.clone()));
            }
        }
        cols.into_iter()
            .map(|(t, m)| (t.clone(), m.clone(), format!("{t} {m}")))
            .collect()
    };
    let owned = |s: &[Spec]| -> Vec<Col> {
        s.iter()
            .map(|(t, m, h)| (t.to_string(), m.to_string(), h.to_string()))
            .collect()
    };
    vec![
        ("TruthfulQA", "truthfulqa", owned(TRUTHFULQA)),
        ("ETHICS", "ethics", owned(ETHICS)),
        ("Retention", "retention", owned(RETENTION)),
        ("POPE", "pope", owned(POPE)),
        ("MME", "mme", owned(MME)),
        ("Captions", "captions", owned(CAPTIONS)),
        ("VQAv2", "vqav2", dynamic("vqav2", &["acc"])),
        ("Unicorn", "unicorn", dynamic("unicorn", &["acc", "f1"])),
    ]
}

/// The long tables after the blocks: clean entries no block showed, then corrupted-image ones.
fn other_tables(
    entries: &[Entry],
    used: &BTreeSet<(String, String)>,
    labels: &[String],
    baseline: usize,
    alpha: f64,
) -> Vec<Table> {
    let mut tables = Vec::new();
    let rest: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.corruption.is_some() || !used.contains(&(e.task.clone(), e.metric.clone())))
        .collect();
    let (clean, corrupted): (Vec<&Entry>, Vec<&Entry>) =
        rest.into_iter().partition(|e| e.corruption.is_none());
    if !clean.is_empty() {
        tables.push(long_table(
            "Other tasks and metrics",
            &clean,
            labels,
            baseline,
            alpha,
        ));
    }
    if !corrupted.is_empty() {
        tables.push(long_table(
            "Corrupted images",
            &corrupted,
            labels,
            baseline,
            alpha,
        ));
    }
    tables
}

impl<'a> Index<'a> {
    fn get(&self, model: usize, task: &str, metric: &str) -> Option<&'a Entry> {
        let key = TaskKey {
            task: task.to_string(),
            corruption: None,
        };
        self.map.get(&(model, key, metric.to_string())).copied()
    }
}

fn cell(e: &Entry) -> Cell {
    Cell {
        value: e.value,
        stderr: e.stderr,
        delta: e.delta,
        p: e.p_value,
        test: e.test,
        present: true,
    }
}

/// "Δ: MC1 acc by McNemar exact; MC2 acc by paired bootstrap; * p < 0.05."
fn tests_note(b: &Block, alpha: f64) -> String {
    let parts: Vec<String> = b
        .headers
        .iter()
        .enumerate()
        .map(|(c, h)| {
            let mut tests: Vec<&str> = b
                .cells
                .iter()
                .filter_map(|row| row[c].test.map(Test::label))
                .collect();
            tests.sort();
            tests.dedup();
            let t = if tests.is_empty() {
                "no test".to_string()
            } else {
                tests.join(" / ")
            };
            format!("{h}: {t}")
        })
        .collect();
    format!(
        "Tests of Δ against the baseline: {}. `*` marks p < {alpha} (raw two-sided p).",
        parts.join("; ")
    )
}

/// ETHICS's paper average (spec item 8): the unweighted mean of the subset accuracies, stderr
/// `sqrt(Σ se²) / k`. Only over the subsets every model with ETHICS results has, so that the
/// averages compare; a model without any subset (a stage-1 projector evaluated on images only)
/// gets no average.
fn ethics_average(
    block: &mut Block,
    cols: &[&Col],
    labels: &[String],
    baseline: usize,
) -> Vec<Entry> {
    let has_any = |row: &Vec<Cell>| (0..cols.len()).any(|c| row[c].value.is_some());
    let common: Vec<usize> = (0..cols.len())
        .filter(|&c| {
            block
                .cells
                .iter()
                .filter(|row| has_any(row))
                .all(|row| row[c].value.is_some())
        })
        .collect();
    if common.is_empty() {
        return Vec::new();
    }
    let tasks: Vec<&str> = common.iter().map(|&c| cols[c].0.as_str()).collect();
    let note = format!(
        "unweighted mean of the acc of {} (spec item 8), stderr sqrt(sum se^2)/{}; delta not tested",
        tasks.join(", "),
        common.len()
    );
    let k = common.len() as f64;
    let names: Vec<&str> = common.iter().map(|&c| cols[c].2.as_str()).collect();
    let avgs: Vec<Option<(f64, Option<f64>)>> = block
        .cells
        .iter()
        .map(|row| {
            has_any(row).then(|| {
                let v: f64 = common.iter().filter_map(|&c| row[c].value).sum::<f64>() / k;
                let se = common
                    .iter()
                    .map(|&c| row[c].stderr.map(|s| s * s))
                    .sum::<Option<f64>>()
                    .map(|s| s.sqrt() / k);
                (v, se)
            })
        })
        .collect();
    let bv = avgs[baseline].map(|(v, _)| v);
    let mut derived = Vec::new();
    for (mi, (row, avg)) in block.cells.iter_mut().zip(avgs).enumerate() {
        let Some((v, se)) = avg else {
            row.push(Cell::default());
            continue;
        };
        let delta = bv.filter(|_| mi != baseline).map(|b| v - b);
        derived.push(Entry {
            model: labels[mi].clone(),
            task: "ethics_average".into(),
            corruption: None,
            severity: None,
            metric: "acc".into(),
            value: Some(v),
            stderr: se,
            n: None,
            delta,
            test: None,
            p_value: None,
            p_holm: None,
            ci95: None,
            n_paired: None,
            n_nan: None,
            note: Some(note.clone()),
        });
        row.push(Cell {
            value: Some(v),
            stderr: se,
            delta,
            present: true,
            ..Cell::default()
        });
    }
    block
        .headers
        .push(format!("Average ({} of 5)", common.len()));
    block.notes.push(format!(
        "Average = unweighted mean of the {} subset accuracies ({}), stderr sqrt(Σ se²)/{} treating the subsets as independent (spec item 8); not the pooled accuracy over all documents. Its delta is not tested (see the subsets).",
        common.len(),
        names.join(", "),
        common.len()
    ));
    derived
}

pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v:.4}")
    }
}

pub fn fmt_p(p: f64) -> String {
    if p < 1e-4 {
        "<0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

/// "0.2448 ± 0.0150".
pub fn value_text(c: &Cell) -> String {
    if !c.present {
        return "—".into();
    }
    match (c.value, c.stderr) {
        (Some(v), Some(s)) => format!("{} ± {}", fmt_num(v), fmt_num(s)),
        (Some(v), None) => fmt_num(v),
        (None, _) => "NaN".into(),
    }
}

/// "+0.0120* (p=0.0310)", "baseline", or "—".
pub fn delta_text(c: &Cell, is_baseline: bool, alpha: f64) -> String {
    if is_baseline {
        return "baseline".into();
    }
    let Some(d) = c.delta.filter(|_| c.present) else {
        return "—".into();
    };
    let mark = if c.p.is_some_and(|p| p < alpha) {
        "*"
    } else {
        ""
    };
    let p_eq = |p: f64| {
        let t = fmt_p(p);
        if t.starts_with('<') {
            format!("p{t}")
        } else {
            format!("p={t}")
        }
    };
    match (c.p, c.test) {
        (Some(p), Some(Test::ZUnpaired)) => format!("{d:+.4}{mark} ({}, unpaired)", p_eq(p)),
        (Some(p), _) => format!("{d:+.4}{mark} ({})", p_eq(p)),
        (None, _) => format!("{d:+.4} (no test)"),
    }
}

/// Rows (task condition, metric), columns per model (value, then Δ for non-baselines).
fn long_table(title: &str, es: &[&Entry], labels: &[String], baseline: usize, alpha: f64) -> Table {
    let mut rows_by: BTreeMap<(TaskKey, String), Vec<Option<&Entry>>> = BTreeMap::new();
    for e in es {
        let mi = labels.iter().position(|l| *l == e.model).unwrap_or(0);
        let row = rows_by
            .entry((e.key(), e.metric.clone()))
            .or_insert_with(|| vec![None; labels.len()]);
        row[mi] = Some(e);
    }
    let mut header = vec!["Task".to_string(), "Metric".to_string()];
    for (mi, l) in labels.iter().enumerate() {
        header.push(l.clone());
        if mi != baseline {
            header.push(format!("Δ {l}"));
        }
    }
    let rows = rows_by
        .into_iter()
        .map(|((k, m), es)| {
            let mut r = vec![k.to_string(), m];
            for (mi, e) in es.iter().enumerate() {
                let c = e.map(cell).unwrap_or_default();
                r.push(value_text(&c));
                if mi != baseline {
                    r.push(delta_text(&c, false, alpha));
                }
            }
            r
        })
        .collect();
    Table {
        title: title.into(),
        notes: Vec::new(),
        header,
        rows,
    }
}

/// Every comparison with its test, n, interval, raw and Holm p, and notes.
fn details(entries: &[Entry], labels: &[String], baseline: usize) -> Table {
    let header = [
        "Model", "Task", "Metric", "n", "Δ", "95% CI", "Test", "p", "Holm p", "Note",
    ]
    .map(String::from)
    .to_vec();
    let rows = entries
        .iter()
        .filter(|e| e.model != labels[baseline])
        .map(|e| {
            vec![
                e.model.clone(),
                e.key().to_string(),
                e.metric.clone(),
                e.n_paired.or(e.n).map_or("—".into(), |n| n.to_string()),
                e.delta.map_or("—".into(), |d| format!("{d:+.4}")),
                e.ci95
                    .map_or("—".into(), |[a, b]| format!("[{a:+.4}, {b:+.4}]")),
                e.test.map_or("—".into(), |t| t.label().to_string()),
                e.p_value.map_or("—".into(), fmt_p),
                e.p_holm.map_or("—".into(), fmt_p),
                e.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    Table {
        title: format!("All comparisons against {}", labels[baseline]),
        notes: vec!["n is the number of paired documents for paired tests (NaN pairs excluded), else the documents evaluated.".into()],
        header,
        rows,
    }
}

fn method(baseline: &str, opts: &Options) -> Vec<String> {
    vec![
        format!("Baseline: **{baseline}**. Each cell is value ± stderr as the evaluation wrote it; Δ is the model minus the baseline, with the two-sided p-value of the test named in the comparisons table. `*` marks p < {} (raw p, not adjusted); Holm-adjusted p-values over all tests of one model against the baseline are in the comparisons table.", opts.alpha),
        "Tests (shared/spec/report-statistics.md). Documents are paired by `doc_id` (and `doc_hash` where written): both models answered the same questions, so a paired test is used — it removes the between-question variance that an unpaired test counts as noise. 0/1 per-document metrics (accuracy): **McNemar's exact test** on the discordant pairs, p = min(1, 2·P[Binomial(b+c, ½) ≤ min(b, c)]). Continuous per-document metrics (MC2, BLEU/ROUGE per answer, ...): **paired bootstrap** of the mean difference with its 95% percentile interval.".into(),
        format!("Bootstrap: B = {} resamples, seed {}: resample k uses row k of numpy's `RandomState({}).randint(0, n, size=(B, n))`; p = min(1, 2·min(#{{d_k ≤ 0}}, #{{d_k ≥ 0}})/B).", opts.bootstrap_b, opts.seed, opts.seed),
        "POPE's precision, recall and F1 are corpus-level: the same bootstrap recomputes them on each resample from the yes/no answers (spec item 7). Other corpus-level metrics (CIDEr, BLEU-4 of captions, MME scores, VQAv2 per-type accuracy) have no per-document values in the logs: their deltas carry **no paired test**. Only where a model has no per-document samples on either side is the **unpaired z-test** used, z = Δ / sqrt(se₁² + se₂²), marked \"unpaired\". Documents whose value is NaN on either side are left out of the pair and counted.".into(),
    ]
}
