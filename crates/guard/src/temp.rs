//! The temporary names outputs are written under, and the sweeping of those a killed run left.
//!
//! Every output sightline writes (a results file, a checkpoint directory, a merged model) is
//! first written as a hidden sibling `.<name>.tmp-<pid>` and renamed into place when complete,
//! so the real name never holds half an output. A run killed with SIGKILL cannot remove its
//! temporary, so one may be left behind. It is never mistaken for an output (its name is
//! hidden and ends in `.tmp-<pid>`), and the next run that writes the same output (or, for a
//! training run, the same output folder) removes the ones whose process is no longer running:
//! [`remove_stale`], [`remove_stale_in`]. A temporary of a process that still runs is left
//! alone, so two runs never delete each other's work in progress.

use std::io;
use std::path::{Path, PathBuf};

/// `.<name>.tmp-<pid>` next to `target`, for this process.
pub fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// The output name and the process id of a temporary name (`.<name>.tmp-<pid>`).
pub fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let (output, pid) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let pid = pid.parse().ok()?;
    (!output.is_empty()).then_some((output, pid))
}

/// Whether process `pid` runs on this machine. Where that cannot be told (no `/proc`), every
/// process counts as running, so nothing is removed.
fn running(pid: u32) -> bool {
    if pid == std::process::id() || !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporaries of `target` (files or directories) that a process no longer running
/// left; returns how many. A missing parent folder holds none.
pub fn remove_stale(target: &Path) -> io::Result<usize> {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(0);
    };
    let dir = parent(target);
    sweep(&dir, |output| output == name)
}

/// Removes every stale temporary directly in `dir` (a training run's output folder, whose
/// checkpoints are written as `.checkpoint-N.tmp-<pid>`); returns how many.
pub fn remove_stale_in(dir: &Path) -> io::Result<usize> {
    sweep(dir, |_| true)
}

fn parent(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sweep(dir: &Path, wanted: impl Fn(&str) -> bool) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((output, pid)) = parse_temp_name(&name) else {
            continue;
        };
        if !wanted(output) || running(pid) {
            continue;
        }
        // Not followed: a symlink under a temporary name is removed as a link.
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process id that is not running: one past the largest Linux allows by default.
    const GONE: u32 = 4_194_305;

    #[test]
    fn temporary_names_round_trip() {
        let t = temp_path(Path::new("out/results.json"));
        let name = t.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(t.parent(), Some(Path::new("out")));
        assert_eq!(
            parse_temp_name(name),
            Some(("results.json", std::process::id()))
        );
        assert_eq!(parse_temp_name("results.json"), None);
        assert_eq!(parse_temp_name(".x.tmp-abc"), None);
        assert_eq!(parse_temp_name("..tmp-12"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_the_dead_processes_temporaries_of_the_target_go() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let target = d.path().join("results.json");
        let stale = d.path().join(format!(".results.json.tmp-{GONE}"));
        let live = temp_path(&target);
        let other = d.path().join(format!(".samples.jsonl.tmp-{GONE}"));
        let stale_dir = d.path().join(format!(".checkpoint-2.tmp-{GONE}"));
        for f in [&stale, &live, &other] {
            std::fs::write(f, b"half")?;
        }
        std::fs::create_dir(&stale_dir)?;
        std::fs::write(stale_dir.join("model.safetensors"), b"half")?;
        assert_eq!(remove_stale(&target)?, 1);
        assert!(!stale.exists() && live.exists() && other.exists());
        assert_eq!(remove_stale_in(d.path())?, 2);
        assert!(!other.exists() && !stale_dir.exists() && live.exists());
        assert_eq!(remove_stale(&d.path().join("none/x.json"))?, 0);
        Ok(())
    }
}
