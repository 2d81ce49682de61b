//! `sightline report`: compare evaluation runs of several models — sightline's own results,
//! lm-evaluation-harness 0.4 and lmms-eval output folders, and sightline training logs — in the
//! paper's table layout, with paired significance tests against a baseline and plots.
//!
//! ```no_run
//! use std::path::PathBuf;
//! let inputs = vec![
//!     (PathBuf::from("runs/base"), "base".to_string()),
//!     (PathBuf::from("runs/llava-eval"), "llava".to_string()),
//!     (PathBuf::from("runs/llava-train"), "llava".to_string()),
//! ];
//! let report = sightline_report::build(&inputs, Some("base"), &Default::default()).unwrap();
//! report.write("report".as_ref()).unwrap();
//! ```
//!
//! Statistics follow `shared/spec/report-statistics.md` ([`stats`]); the output is
//! deterministic (no dates, no timings, sorted everywhere), so two runs on the same inputs write
//! byte-identical files.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

mod compare;
mod error;
pub mod input;
mod layout;
mod plots;
mod render;
pub mod stats;

pub use compare::{Entry, Test};
pub use error::{Error, Result};

/// Settings of the statistics.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bootstrap resamples (spec default 10,000).
    pub bootstrap_b: usize,
    /// Seed of numpy's `RandomState` for the bootstrap indices (spec default 1234).
    pub seed: u32,
    /// Significance threshold for the table marks (raw two-sided p).
    pub alpha: f64,
    /// A paragraph shown under the title (what the models are, caveats), e.g. the study's
    /// `[report] note`.
    pub note: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bootstrap_b: 10_000,
            seed: 1234,
            alpha: 0.05,
            note: None,
        }
    }
}

/// A built report: the entries and every output file's bytes, ready to write.
#[derive(Debug, Clone)]
pub struct Report {
    /// One entry per (model, task, metric), models in input order.
    pub entries: Vec<Entry>,
    /// The baseline's label.
    pub baseline: String,
    /// Output files, relative to the output directory, sorted.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// Reads `inputs` (directory, label) — directories sharing a label are one model — and builds
/// the report against `baseline` (default: the first label).
pub fn build(
    inputs: &[(PathBuf, String)],
    baseline: Option<&str>,
    opts: &Options,
) -> Result<Report> {
    if inputs.is_empty() {
        return Err(Error::Input("no input directories given".into()));
    }
    if opts.bootstrap_b == 0 {
        return Err(Error::Input(
            "bootstrap resamples must be at least 1".into(),
        ));
    }
    let models = input::load(inputs)?;
    let labels: Vec<&str> = models.iter().map(|m| m.label.as_str()).collect();
    let base = match baseline {
        None => 0,
        Some(b) => labels.iter().position(|l| *l == b).ok_or_else(|| {
            Error::Input(format!(
                "--baseline {b}: no model has that label (labels: {})",
                labels.join(", ")
            ))
        })?,
    };
    if models
        .iter()
        .all(|m| m.tasks.is_empty() && m.train.is_empty())
    {
        let dirs: Vec<String> = inputs
            .iter()
            .map(|(d, _)| d.display().to_string())
            .collect();
        return Err(Error::Input(format!(
            "no results files or train_log.jsonl found under {} (searched {} levels deep)",
            dirs.join(", "),
            input::MAX_DEPTH
        )));
    }
    let mut entries = compare::entries(&models, base, opts);
    let layout = layout::Layout::new(&models, base, &entries, opts);
    // The ETHICS average (task "ethics_average") goes into report.json after the tasks.
    entries.extend(layout.derived.iter().cloned());
    let plots = plots::all(&models, base, &entries, &layout)?;
    let mut files = Vec::new();
    let md = render::markdown(&layout, &plots, opts.note.as_deref());
    let html = render::html(&layout, &plots, opts.note.as_deref());
    let json = serde_json::to_string_pretty(&entries)
        .map_err(|e| Error::Input(format!("report.json: {e}")))?;
    files.push((PathBuf::from("report.md"), md.into_bytes()));
    files.push((PathBuf::from("report.html"), html.into_bytes()));
    files.push((
        PathBuf::from("report.json"),
        format!("{json}\n").into_bytes(),
    ));
    for p in &plots {
        files.push((
            PathBuf::from(format!("plots/{}.svg", p.name)),
            p.svg.clone().into_bytes(),
        ));
        files.push((
            PathBuf::from(format!("plots/{}.png", p.name)),
            p.png.clone(),
        ));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Report {
        entries,
        baseline: models[base].label.clone(),
        files,
    })
}

impl Report {
    /// Writes every file under `out_dir` (created if needed), each to a temporary sibling and
    /// renamed into place. Files of the same name are replaced; nothing else is touched except
    /// the temporaries a killed report left for them. The names come from labels and task
    /// names only through `plots::slug` (letters, digits, `-`, `_`), so none can leave `out_dir`.
    pub fn write(&self, out_dir: &Path) -> Result<()> {
        for (rel, bytes) in &self.files {
            let path = out_dir.join(rel);
            let dir = path.parent().unwrap_or(out_dir);
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            sightline_guard::temp::remove_stale(&path).map_err(|e| Error::io(&path, e))?;
            let tmp = sightline_guard::temp::temp_path(&path);
            std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io(&path, e));
            }
        }
        Ok(())
    }

    /// The names of the files [`Report::write`] writes.
    pub fn file_names(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }
}
