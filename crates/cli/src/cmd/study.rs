//! `sightline study [--config STUDY.toml] [--dir DIR] [--dry-run] [--only STEP] [--force STEP]`:
//! the whole experiment in one command. Each step is a `sightline` command line, run here in
//! the same process (so a kill of the study stops everything at once) and recorded in
//! `DIR/<step>/manifest.json` with the line that reruns it alone.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use sightline_study::runner::{self, clock, RunOptions, Status};
use sightline_study::{StudyFile, EMBEDDED_NAME, EMBEDDED_STUDY};

#[derive(clap::Args)]
pub struct Args {
    /// The study file (default: the embedded toy study, `studies/toy.toml`, built into the
    /// binary).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder for every step's outputs, the manifests and the report.
    #[arg(long, default_value = "study")]
    dir: PathBuf,
    /// Print the plan (steps, commands, inputs, outputs, rough cost, what is up to date)
    /// and the missing inputs; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run only these steps (comma-separated names, or kinds: prepare, data, train, eval,
    /// report) and the steps they need that are not up to date.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Redo these steps (names or kinds) from scratch, and every step after them.
    #[arg(long, value_delimiter = ',')]
    force: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    let (study, name) = match &a.config {
        Some(p) => (StudyFile::from_file(p)?, p.clone()),
        None => (
            StudyFile::from_str(EMBEDDED_STUDY, std::path::Path::new(EMBEDDED_NAME))?,
            PathBuf::from(EMBEDDED_NAME),
        ),
    };
    let plan = sightline_study::plan(&study, &a.dir, &name)?;
    // One fingerprint cache for the states shown here and the run: each input is hashed once.
    let mut prints = runner::Prints::default();
    let states = runner::statuses(&plan, &mut prints)?;
    if a.dry_run {
        println!(
            "study {} ({}): {} steps in {}/\n",
            study.study.name.as_deref().unwrap_or("-"),
            name.display(),
            plan.steps.len(),
            a.dir.display()
        );
        print!("{}", sightline_study::describe(&plan, &states));
        return Ok(());
    }
    if !plan.missing.is_empty() {
        bail!(
            "{}: {} input paths are missing: {} (see `sightline study --dry-run`)",
            name.display(),
            plan.missing.len(),
            plan.missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    eprintln!(
        "study {}: {} steps in {}/ ({} up to date)",
        name.display(),
        plan.steps.len(),
        a.dir.display(),
        states.iter().filter(|(_, s)| *s == "up to date").count()
    );
    let mut exec = |args: &[String]| -> std::result::Result<(), String> {
        let argv = std::iter::once("sightline".to_string()).chain(args.iter().cloned());
        let cli = crate::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        if matches!(cli.command, crate::Command::Study(_)) {
            return Err("a study step cannot run another study".into());
        }
        crate::dispatch(cli).map_err(|e| format!("{e:#}"))
    };
    let mut progress = |line: &str| eprintln!("{line}");
    let opts = RunOptions {
        only: a.only,
        force: a.force,
    };
    let statuses = runner::run(&plan, &opts, &mut exec, &mut progress, &mut prints)?;
    print_summary(&statuses);
    let report = a.dir.join("report.html");
    if report.is_file() {
        eprintln!("report: {}", report.display());
    }
    Ok(())
}

fn print_summary(statuses: &[(String, Status)]) {
    eprintln!("\n| step | status | time |\n|---|---|---:|");
    let mut total = 0.0;
    for (name, st) in statuses {
        let (what, time) = match st {
            Status::UpToDate => ("up to date".to_string(), "–".to_string()),
            Status::NotSelected => ("not selected".to_string(), "–".to_string()),
            Status::Ran { seconds, resumed } => {
                total += seconds;
                (
                    if *resumed { "resumed" } else { "ran" }.to_string(),
                    clock(*seconds),
                )
            }
        };
        eprintln!("| {name} | {what} | {time} |");
    }
    eprintln!("| total | | {} |", clock(total));
}
