//! `sightline-study`: the paper's experiment as one plan (Tu et al., *Sight Beyond Text*).
//!
//! A study file ([`config::StudyFile`]) declares the bases, the vision tower, the training
//! sets, the variants (existing `sightline train` run files plus overrides), the evaluation
//! suite and the report's baseline. [`plan::plan`] turns it into ordered steps, each a
//! `sightline` command line working in `DIR/<step>/`; [`runner::run`] runs them, skipping
//! steps whose manifest matches, resuming cut ones and redoing what an input change reaches.
//!
//! [`EMBEDDED_STUDY`] is the study `sightline study` runs with no arguments: the paper's
//! design at toy scale (stories260K, a seeded random tiny CLIP, the bundled sketches and
//! samples), offline, in a few minutes on 2 cores.

pub mod config;
pub mod error;
pub mod fingerprint;
pub mod plan;
pub mod runner;

pub use config::StudyFile;
pub use error::{Error, Result};
pub use plan::{plan, Plan, Step};

/// The embedded study's file (`studies/toy.toml` in the repository).
pub const EMBEDDED_STUDY: &str = include_str!("../../../studies/toy.toml");

/// The name the embedded study goes by in messages.
pub const EMBEDDED_NAME: &str = "builtin:toy (studies/toy.toml)";

/// The plan as `--dry-run` prints it: every step with its state, commands, inputs, outputs
/// and rough cost, then the inputs that are missing.
pub fn describe(plan: &Plan, states: &[(String, &'static str)]) -> String {
    let mut s = String::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let state = states
            .iter()
            .find(|(n, _)| n == &step.name)
            .map_or("to run", |(_, st)| *st);
        s.push_str(&format!(
            "{:>2}. {:<28} {:<8} [{state}]\n",
            i + 1,
            step.name,
            step.kind.name()
        ));
        for c in &step.commands {
            s.push_str(&format!("      $ {}\n", runner::command_line(c)));
        }
        if !step.deps.is_empty() {
            s.push_str(&format!("      after: {}\n", step.deps.join(", ")));
        }
        for input in &step.inputs {
            let line = match input {
                plan::Input::Path(p) if !p.exists() => format!("{} (MISSING)", p.display()),
                plan::Input::Path(p) => p.display().to_string(),
                plan::Input::Hub(id) => format!("{id} (hub id, from the Hugging Face cache)"),
                plan::Input::Bundled => "files built into the binary".to_string(),
            };
            s.push_str(&format!("      in:  {line}\n"));
        }
        for o in &step.outputs {
            s.push_str(&format!("      out: {}\n", o.display()));
        }
        s.push_str(&format!("      cost: {}\n", step.cost));
    }
    if plan.missing.is_empty() {
        s.push_str("\nevery input file is present\n");
    } else {
        s.push_str(&format!(
            "\n{} input paths are missing (fill them in the study file):\n",
            plan.missing.len()
        ));
        for m in &plan.missing {
            s.push_str(&format!("  {}\n", m.display()));
        }
    }
    s
}
