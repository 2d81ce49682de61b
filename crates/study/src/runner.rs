//! Runs a [`Plan`]: each step's key (its commands, its inputs' fingerprints, the keys of the
//! steps it reads, sightline's version) decides whether it is up to date, resumable, or to be
//! redone from scratch.
//!
//! - `DIR/<step>/manifest.json` is written when a step finishes: a rerun whose key matches
//!   skips the step.
//! - `DIR/<step>/started.json` is written when a step starts: a step that was cut (kill,
//!   crash, Ctrl-C) with the same key resumes — a training run from its newest
//!   `checkpoint-N` (`sightline train --resume`), an evaluation from its request cache
//!   (`--cache`). With a different key the folder is cleared and the step starts over, and
//!   so does every step after it (their keys include its key).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::fingerprint::{fingerprint, sha256_hex};
use crate::plan::{Input, Kind, Plan, Step};

/// What happened to a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Its manifest matched: nothing was computed.
    UpToDate,
    /// It ran (`resumed` when it continued an interrupted run).
    Ran { seconds: f64, resumed: bool },
    /// Not selected by `--only` (and not needed by a selected step).
    NotSelected,
}

/// How to run a plan.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only these steps (names, or kinds: prepare, data, train, eval, report) and the
    /// steps they need that are not up to date.
    pub only: Vec<String>,
    /// Redo these steps (names or kinds) and everything after them, from scratch.
    pub force: Vec<String>,
}

/// Runs one `sightline` command (the CLI passes an in-process runner).
pub type Exec<'a> = dyn FnMut(&[String]) -> std::result::Result<(), String> + 'a;

/// A line of progress for the caller to print.
pub type Progress<'a> = dyn FnMut(&str) + 'a;

/// Shell-style rendering of a command line, for messages and manifests.
pub fn command_line(args: &[String]) -> String {
    std::iter::once("sightline".to_string())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn matches(step: &Step, sel: &[String]) -> bool {
    sel.iter().any(|x| x == &step.name || x == step.kind.name())
}

/// Steps named (or of a kind named) in `sel`, closed over `edges` (deps or dependents).
fn closure(plan: &Plan, sel: &[String], forward: bool) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = plan
        .steps
        .iter()
        .filter(|s| matches(s, sel))
        .map(|s| s.name.clone())
        .collect();
    loop {
        let before = set.len();
        for s in &plan.steps {
            if forward {
                if s.deps.iter().any(|d| set.contains(d)) {
                    set.insert(s.name.clone());
                }
            } else if set.contains(&s.name) {
                set.extend(s.deps.iter().cloned());
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// Checks `--only` / `--force` names against the plan.
pub fn check_selection(plan: &Plan, names: &[String], flag: &str) -> Result<()> {
    for n in names {
        if !plan
            .steps
            .iter()
            .any(|s| &s.name == n || s.kind.name() == n)
        {
            return Err(Error::Plan(format!(
                "{flag} {n}: no such step or kind (steps: {})",
                plan.steps
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Fingerprints of the inputs seen so far. Many steps read the same input (every training
/// and evaluation step of a base reads its model folder), and inputs live outside the study
/// folder, so nothing a step writes changes them: each is hashed once per command.
#[derive(Debug, Default)]
pub struct Prints(BTreeMap<String, String>);

impl Prints {
    /// The fingerprints of a step's inputs, as (name, fingerprint).
    fn of(&mut self, step: &Step) -> Result<Vec<(String, String)>> {
        step.inputs
            .iter()
            .map(|i| {
                let name = match i {
                    Input::Path(p) => p.to_string_lossy().into_owned(),
                    Input::Hub(id) => id.clone(),
                    Input::Bundled => "bundled".to_string(),
                };
                if let Some(fp) = self.0.get(&name) {
                    return Ok((name, fp.clone()));
                }
                let fp = match i {
                    Input::Path(p) => fingerprint(p)?,
                    Input::Hub(id) => format!("hub:{id}"),
                    Input::Bundled => crate::plan::bundled_fingerprint(),
                };
                self.0.insert(name.clone(), fp.clone());
                Ok((name, fp))
            })
            .collect()
    }
}

/// The key of a step, given the keys of the steps before it.
pub fn step_key(
    step: &Step,
    keys: &BTreeMap<String, String>,
    prints: &mut Prints,
) -> Result<(String, Value)> {
    let deps: BTreeMap<&str, &str> = step
        .deps
        .iter()
        .map(|d| {
            (
                d.as_str(),
                keys.get(d).map(String::as_str).unwrap_or("unknown"),
            )
        })
        .collect();
    let body = json!({
        "sightline_version": env!("CARGO_PKG_VERSION"),
        "step": step.name,
        "commands": step.commands,
        "inputs": prints.of(step)?,
        "deps": deps,
    });
    Ok((sha256_hex(body.to_string().as_bytes()), body))
}

fn read_key(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("key")?.as_str().map(str::to_string)
}

/// Writes JSON to a temporary sibling and renames it over `path`.
fn write_json(path: &Path, v: &Value) -> Result<()> {
    // `.<name>.tmp-<pid>`: two runs writing the same manifest never share a temporary, and a
    // killed run's leftover is swept by the next write.
    let _ = sightline_guard::temp::remove_stale(path);
    let tmp = sightline_guard::temp::temp_path(path);
    let text = serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Whether a training output holds a `checkpoint-N` to resume from.
fn has_checkpoint(out: &Path) -> bool {
    std::fs::read_dir(out).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("checkpoint-")
                .is_some_and(|n| n.parse::<u64>().is_ok())
                && e.path().is_dir()
        })
    })
}

/// The state of every step before anything runs (for `--dry-run` and for the run itself).
pub fn statuses(plan: &Plan, prints: &mut Prints) -> Result<Vec<(String, &'static str)>> {
    let mut keys = BTreeMap::new();
    let mut out = Vec::new();
    for step in &plan.steps {
        let (key, _) = step_key(step, &keys, prints)?;
        let dir = plan.dir.join(&step.name);
        let state = if read_key(&dir.join("manifest.json")).as_deref() == Some(&key) {
            "up to date"
        } else if read_key(&dir.join("started.json")).as_deref() == Some(&key) {
            "to resume"
        } else {
            "to run"
        };
        keys.insert(step.name.clone(), key);
        out.push((step.name.clone(), state));
    }
    Ok(out)
}

/// Runs the plan; returns each step's status in plan order. Stops at the first failure with
/// an error naming the step and the command line that reruns it alone.
pub fn run(
    plan: &Plan,
    opts: &RunOptions,
    exec: &mut Exec,
    progress: &mut Progress,
    prints: &mut Prints,
) -> Result<Vec<(String, Status)>> {
    check_selection(plan, &opts.only, "--only")?;
    check_selection(plan, &opts.force, "--force")?;
    let selected = (!opts.only.is_empty()).then(|| closure(plan, &opts.only, false));
    let forced = closure(plan, &opts.force, true);
    std::fs::create_dir_all(&plan.dir).map_err(|e| Error::io(&plan.dir, e))?;
    let mut keys = BTreeMap::new();
    let mut out = Vec::new();
    let total = plan.steps.len();
    let started_all = Instant::now();
    let mut ran_seconds: BTreeMap<Kind, (f64, usize)> = BTreeMap::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let (key, body) = step_key(step, &keys, prints)?;
        keys.insert(step.name.clone(), key.clone());
        let dir = plan.dir.join(&step.name);
        let manifest = dir.join("manifest.json");
        let up_to_date = read_key(&manifest).as_deref() == Some(&key);
        let header = format!("[{}/{total}] {}", i + 1, step.name);
        if up_to_date && !forced.contains(&step.name) {
            progress(&format!("{header}: up to date"));
            out.push((step.name.clone(), Status::UpToDate));
            continue;
        }
        if selected.as_ref().is_some_and(|s| !s.contains(&step.name)) {
            progress(&format!("{header}: not selected"));
            out.push((step.name.clone(), Status::NotSelected));
            continue;
        }
        for dep in &step.deps {
            if let Some((_, Status::NotSelected)) = out.iter().find(|(n, _)| n == dep) {
                return Err(Error::Plan(format!(
                    "step {} needs {dep}, which is not up to date and not selected",
                    step.name
                )));
            }
        }
        let eta = eta_note(&plan.steps[i..], &ran_seconds, started_all);
        let started_path = dir.join("started.json");
        let resumable = !forced.contains(&step.name)
            && read_key(&started_path).as_deref() == Some(&key)
            && matches!(step.kind, Kind::Train | Kind::Eval);
        if !resumable && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        write_json(&started_path, &json!({"key": key}))?;
        progress(&format!(
            "{header}: {} — {}{eta}",
            if resumable { "resuming" } else { "running" },
            step.cost
        ));
        let t0 = Instant::now();
        let resumed = run_commands(step, resumable, exec, progress)?;
        let seconds = t0.elapsed().as_secs_f64();
        let e = ran_seconds.entry(step.kind).or_insert((0.0, 0));
        e.0 += seconds;
        e.1 += 1;
        write_json(&manifest, &manifest_of(step, body, &key))?;
        progress(&format!("{header}: done in {}", clock(seconds)));
        out.push((step.name.clone(), Status::Ran { seconds, resumed }));
    }
    Ok(out)
}

/// ` (elapsed …, ETA ~…)` for the steps from here on, once a step has run to estimate from.
fn eta_note(
    remaining_steps: &[Step],
    ran_seconds: &BTreeMap<Kind, (f64, usize)>,
    started_all: Instant,
) -> String {
    if ran_seconds.is_empty() {
        return String::new();
    }
    let remaining: f64 = remaining_steps
        .iter()
        .map(|s| estimate(ran_seconds, s.kind))
        .sum();
    format!(
        " (elapsed {}, ETA ~{})",
        clock(started_all.elapsed().as_secs_f64()),
        clock(remaining)
    )
}

/// Runs a step's commands in order; a training run with a checkpoint gets `--resume` (one cut
/// before its first checkpoint starts over). Returns whether the step resumed.
fn run_commands(
    step: &Step,
    resumable: bool,
    exec: &mut Exec,
    progress: &mut Progress,
) -> Result<bool> {
    let mut resumed = false;
    for cmd in &step.commands {
        let mut cmd = cmd.clone();
        if let Some(train_out) = &step.train_output {
            if resumable && has_checkpoint(train_out) {
                cmd.push("--resume".into());
                resumed = true;
            } else if train_out.exists() {
                // Cut before its first checkpoint: nothing to resume, start over.
                std::fs::remove_dir_all(train_out).map_err(|e| Error::io(train_out, e))?;
            }
        } else if resumable && step.kind == Kind::Eval {
            resumed = true;
        }
        progress(&format!("  $ {}", command_line(&cmd)));
        exec(&cmd).map_err(|msg| Error::Step {
            step: step.name.clone(),
            command: command_line(&cmd),
            msg,
        })?;
    }
    Ok(resumed)
}

/// A finished step's `manifest.json`: its key's inputs (`body`), the key, its outputs,
/// resolved training config and command lines.
fn manifest_of(step: &Step, body: Value, key: &str) -> Value {
    let mut m = body;
    m["key"] = json!(key);
    m["outputs"] = json!(step
        .outputs
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>());
    if let Some(cfg) = &step.resolved {
        m["resolved_config"] = cfg.clone();
    }
    m["command_lines"] = json!(step
        .commands
        .iter()
        .map(|c| command_line(c))
        .collect::<Vec<_>>());
    m
}

/// Seconds a step of `kind` is expected to take: the mean of those of its kind that ran,
/// else of all that ran.
fn estimate(ran: &BTreeMap<Kind, (f64, usize)>, kind: Kind) -> f64 {
    if let Some((s, n)) = ran.get(&kind) {
        return s / *n as f64;
    }
    let (s, n) = ran.values().fold((0.0, 0), |(a, b), (s, n)| (a + s, b + n));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// `1h02m`, `3m05s` or `12.3s`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s >= 3600.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.1}s")
    }
}

/// Where a step keeps its manifest.
pub fn manifest_path(plan: &Plan, step: &str) -> PathBuf {
    plan.dir.join(step).join("manifest.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest is written under this process's own hidden temporary and renamed; a stale
    /// temporary a killed run left (a process id that cannot be running) is swept, another
    /// file of the folder is not touched.
    #[test]
    fn manifests_are_written_through_a_per_process_temporary() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("manifest.json");
        let stale = d
            .path()
            .join(format!(".manifest.json.tmp-{}", u32::MAX - 1));
        std::fs::write(&stale, "half").unwrap();
        std::fs::write(d.path().join("other.json"), "{}").unwrap();
        write_json(&path, &serde_json::json!({"key": "k"})).unwrap();
        assert_eq!(read_key(&path).as_deref(), Some("k"));
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["manifest.json", "other.json"]);
    }
}
