//! `sightline report DIR... [--baseline LABEL] [--label DIR=NAME]... [--output OUT]`: compare
//! evaluation runs (sightline, lm-evaluation-harness, lmms-eval) and training logs in the
//! paper's tables, with paired tests against a baseline and plots (sightline-report).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sightline_report::Options;

#[derive(clap::Args)]
pub struct Args {
    /// Run directories, each searched 4 levels deep for results/samples files and train_log.jsonl.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// The model the others are compared with (default: the first model).
    #[arg(long)]
    baseline: Option<String>,
    /// Label for a directory, `DIR=NAME`; directories with the same NAME are one model
    /// (default: the directory's last path component).
    #[arg(long = "label", value_name = "DIR=NAME")]
    labels: Vec<String>,
    /// Output directory for report.md, report.html, report.json and plots/.
    #[arg(long, default_value = "report")]
    output: PathBuf,
    /// Replace a report already in the output directory.
    #[arg(long)]
    overwrite: bool,
    /// Bootstrap resamples for continuous metrics.
    #[arg(long, default_value_t = 10_000)]
    bootstrap: usize,
    /// Seed of the bootstrap's numpy RandomState index stream.
    #[arg(long, default_value_t = 1234)]
    seed: u32,
    /// A paragraph shown under the report's title (what the models are, caveats).
    #[arg(long)]
    note: Option<String>,
}

/// Pairs each directory with its label: `--label DIR=NAME` where DIR matches the argument as
/// given (or the same path after canonicalisation), else the last path component.
fn labelled(dirs: &[PathBuf], labels: &[String]) -> Result<Vec<(PathBuf, String)>> {
    let mut map = Vec::new();
    for l in labels {
        let Some((d, name)) = l.rsplit_once('=') else {
            bail!("--label {l}: expected DIR=NAME");
        };
        if name.is_empty() {
            bail!("--label {l}: the NAME after '=' is empty");
        }
        let d = PathBuf::from(d);
        if !dirs.iter().any(|x| same_dir(x, &d)) {
            bail!(
                "--label {l}: {} is not one of the report's directories",
                d.display()
            );
        }
        map.push((d, name.to_string()));
    }
    dirs.iter()
        .map(|d| {
            let label = match map.iter().find(|(x, _)| same_dir(x, d)) {
                Some((_, n)) => n.clone(),
                None => default_label(d)?,
            };
            Ok((d.clone(), label))
        })
        .collect()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

fn default_label(d: &Path) -> Result<String> {
    let c = d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
    c.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| {
            format!(
                "{}: no final path component to use as a label (pass --label)",
                d.display()
            )
        })
}

pub fn run(a: Args) -> Result<()> {
    let inputs = labelled(&a.dirs, &a.labels)?;
    let opts = Options {
        bootstrap_b: a.bootstrap,
        seed: a.seed,
        note: a.note.clone(),
        ..Options::default()
    };
    let report = sightline_report::build(&inputs, a.baseline.as_deref(), &opts)?;
    if !a.overwrite {
        for name in report.file_names() {
            let p = a.output.join(name);
            if p.exists() {
                bail!(
                    "{}: already exists (pass --overwrite to replace the report)",
                    p.display()
                );
            }
        }
    }
    report.write(&a.output)?;
    let tested = report
        .entries
        .iter()
        .filter(|e| e.p_value.is_some())
        .count();
    println!(
        "report of {} entries ({} compared with {}) written to {}",
        report.entries.len(),
        tested,
        report.baseline,
        a.output.join("report.html").display()
    );
    Ok(())
}
