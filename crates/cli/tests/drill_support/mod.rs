//! Helpers of the CLI tests that train (`train.rs`) and of the crash drills (`crash_train.rs`,
//! `full_disk.rs`): run the binary from the repository root, kill it while it is writing an
//! output, and give it a small disk.
// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const BASE: &str = "tests/fixtures/train/base";
pub const TEXT_RUN: &str = "configs/text-only.toml";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The binary, run in the repository root (the configs' paths are relative to it), offline.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sightline"));
    c.current_dir(root()).env("HF_HUB_OFFLINE", "1");
    c
}

pub fn run(args: &[String]) -> Output {
    command().args(args).output().expect("runs")
}

pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The arguments of a text-only training run into `out` with `overrides`.
pub fn train_args(out: &Path, overrides: &[&str]) -> Vec<String> {
    let mut a = vec![
        "train".to_string(),
        "--config".into(),
        TEXT_RUN.into(),
        format!("output_dir={:?}", out.display().to_string()),
    ];
    a.extend(overrides.iter().map(|s| s.to_string()));
    a
}

/// Names in `dir` that are temporaries (`.<name>.tmp-<pid>`).
pub fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `sig` to `child` with kill(2) itself: spawning kill(1) took a millisecond or more, in
/// which a small checkpoint's temporary was often written and renamed already.
fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid, which `child` has not reaped yet.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Returns once every thread of `child` is stopped (state `T` in /proc), so that nothing is
/// renamed between looking at the directory and the kill; gives up after a second.
fn wait_until_stopped(child: &Child) {
    let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
    let stopped = || {
        std::fs::read_dir(&tasks).is_ok_and(|rd| {
            rd.filter_map(Result::ok).all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    // `pid (comm) S ...`: the state follows the last ')'.
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                })
            })
        })
    };
    let start = Instant::now();
    while !stopped() && start.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Waits until `child` has a temporary named `.<prefix>….tmp-<pid>` in `dir`, freezes it
/// (SIGSTOP), and when the temporary is still there (the writer had not renamed it yet)
/// SIGKILLs it: the kill lands while the output is half written. Returns the temporary's
/// name, or `None` when the child finished first or `limit` passed (it is then killed).
pub fn kill_mid_write(
    child: &mut Child,
    dir: &Path,
    prefix: &str,
    limit: Duration,
) -> Option<String> {
    kill_mid_write_of(child, dir, &|name| name.starts_with(prefix), limit)
}

/// [`kill_mid_write`] for the first temporary whose name (without its leading dot and its
/// `.tmp-<pid>` suffix) `wanted` accepts; the others are let through.
pub fn kill_mid_write_of(
    child: &mut Child,
    dir: &Path,
    wanted: &dyn Fn(&str) -> bool,
    limit: Duration,
) -> Option<String> {
    let suffix = format!(".tmp-{}", child.id());
    let find = || {
        temporaries(dir).into_iter().find(|n| {
            n.strip_suffix(&suffix)
                .is_some_and(|stem| wanted(stem.trim_start_matches('.')))
        })
    };
    let start = Instant::now();
    let caught = loop {
        if start.elapsed() > limit || child.try_wait().expect("wait").is_some() {
            break None;
        }
        if find().is_some() {
            signal(child, libc::SIGSTOP);
            wait_until_stopped(child);
            match find() {
                Some(name) => break Some(name),
                None => signal(child, libc::SIGCONT),
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    caught
}

/// `SIGHTLINE_REQUIRE_SMALL_DISK=1` (set by `.ci/run` where it can mount one) turns a skipped
/// full-disk drill into a failure.
const REQUIRE: &str = "SIGHTLINE_REQUIRE_SMALL_DISK";

/// How to get a private mount namespace in which a tmpfs can be mounted: as root with
/// CAP_SYS_ADMIN a plain one, otherwise a user namespace that maps us to root in it.
const NAMESPACES: [&[&str]; 2] = [&["--mount"], &["--user", "--map-root-user", "--mount"]];

/// The `unshare` arguments under which mounting a tmpfs works here, or why none does.
fn namespace() -> Result<&'static [&'static str], String> {
    let probe = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut why = String::from("no `unshare` (util-linux)");
    for ns in NAMESPACES {
        let o = Command::new("unshare")
            .args(ns)
            .args(["sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$1\"", "sh"])
            .arg(probe.path())
            .output();
        match o {
            Ok(o) if o.status.success() => return Ok(ns),
            Ok(o) => why = String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => why = format!("unshare: {e}"),
        }
    }
    Err(why)
}

/// What a run on a small disk did: its exit code and stderr, and a copy of the disk's files
/// as the run left them (the tmpfs itself is gone with its namespace).
pub struct DiskRun {
    pub code: Option<i32>,
    pub stderr: String,
    pub after: PathBuf,
}

/// Runs `sightline args` with `disk` replaced by a tmpfs of `bytes` bytes (in a private mount
/// namespace, so nothing is mounted outside the test) that first receives a copy of `seed`'s
/// files. `None`, with the reason printed, where no tmpfs can be mounted, unless CI requires
/// one. `disk` must not exist yet (it is created, empty, as the mount point).
pub fn on_small_disk(
    disk: &Path,
    bytes: u64,
    seed: Option<&Path>,
    args: &[String],
) -> Option<DiskRun> {
    let ns = match namespace() {
        Ok(ns) => ns,
        Err(why) => {
            assert!(
                std::env::var_os(REQUIRE).is_none(),
                "{REQUIRE} is set but no tmpfs can be mounted: {why}"
            );
            eprintln!("skipped: cannot mount a small tmpfs here ({why})");
            return None;
        }
    };
    std::fs::create_dir(disk).expect("mount point");
    let work = disk.with_extension("drill");
    std::fs::create_dir(&work).expect("drill folder");
    let (err, code, after) = (work.join("stderr"), work.join("code"), work.join("after"));
    std::fs::create_dir(&after).expect("copy folder");
    let seed = seed
        .map(|s| format!("{}/.", s.display()))
        .unwrap_or_default();
    let script = r#"
        disk=$1 seed=$2 err=$3 code=$4 after=$5; shift 5
        mount -t tmpfs -o "size=$SIZE" tmpfs "$disk" || exit 90
        if [ -n "$seed" ]; then cp -a "$seed" "$disk/" || exit 91; fi
        "$@" 2>"$err" >/dev/null; echo $? >"$code"
        cp -a "$disk/." "$after/"
    "#;
    let status = Command::new("unshare")
        .args(ns)
        .args(["sh", "-c", script, "sh"])
        .arg(disk)
        .arg(&seed)
        .args([&err, &code, &after])
        .arg(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .env("SIZE", bytes.to_string())
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(root())
        .status()
        .expect("unshare");
    assert!(status.success(), "the small-disk script failed: {status}");
    let code = std::fs::read_to_string(&code).expect("exit code");
    Some(DiskRun {
        code: code.trim().parse().ok(),
        stderr: std::fs::read_to_string(&err).expect("stderr"),
        after,
    })
}

/// Bytes a tmpfs needs for the files under `dir`: each file takes whole 4 KiB pages.
pub fn pages(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("dir").filter_map(Result::ok) {
        let m = e.metadata().expect("metadata");
        total += if m.is_dir() {
            pages(&e.path())
        } else {
            m.len().div_ceil(4096) * 4096
        };
    }
    total
}

/// Every file under `dir`, relative, with its bytes.
pub fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// Exit code 1 and exactly one `error: …` line, which says the disk is full; returns it.
pub fn one_full_disk_line(r: &DiskRun) -> String {
    let err = &r.stderr;
    assert_eq!(r.code, Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("No space left on device"), "{err}");
    eprintln!("the full disk's line: {}", errors[0]);
    errors[0].to_string()
}
