//! `sightline eval --shard I/N` writes `shard-I-of-N.json` ([`write`]); `sightline merge`
//! turns a complete set back into the unsharded run's `results.json`, samples and table
//! ([`finish`]).
//!
//! A shard file's `settings` hold what must be equal in every shard: the eval flags (less
//! --output, --overwrite, --cache, --shard), the model's identity as the cache keys it, and the
//! run's `results.json` facts less its timing; its `run` holds the timing, the cache hits and
//! the working directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sightline_eval::evaluator::{finish_merged, ShardRun, ShardSpec};
use sightline_eval::report::RunInfo;
use sightline_eval::shard::{Merged, ShardFile};

use super::{
    data_source, eval_options, refuse_to_overwrite, report, resolve_tasks, write_file, Args,
    RunKind,
};

/// `shard-I-of-N<suffix>.json`: named like the results file of the run (a corruption's
/// suffix), so the shards of a corruption sweep can share a folder with its results.
pub(super) fn file_name(shard: ShardSpec, run: &RunKind) -> String {
    ShardFile::file_name(shard, &run.suffix())
}

/// Writes what shard `s.shard` computed to `--output` (the caller checked that it exists and
/// that the file may be written).
pub(super) fn write(
    a: &Args,
    run: &RunKind,
    model_identity: String,
    s: ShardRun,
    info: RunInfo,
) -> Result<()> {
    let dir = a.output.as_deref().context("--shard needs --output DIR")?;
    let path = dir.join(file_name(s.shard, run));
    let shard = s.shard;
    let (units, answers) = (s.units.len(), s.responses.len());
    let timing = json!({
        "date": info.date,
        "total_seconds": info.total_seconds,
        "cache_hits": info.cache_hits,
        "cwd": std::env::current_dir().ok(),
    });
    let settled = RunInfo {
        date: 0.0,
        total_seconds: 0.0,
        cache_hits: 0,
        ..info
    };
    let settings = json!({
        "args": serde_json::to_value(a)?,
        "model_identity": model_identity,
        "results_config": serde_json::to_value(&settled)?,
    });
    let file = ShardFile::new(s, settings, timing);
    let text = serde_json::to_string(&file)?;
    write_file(&path, a.overwrite, text.as_bytes())?;
    println!(
        "shard {shard}: {units} work units, {answers} answers -> {}",
        path.display()
    );
    Ok(())
}

/// The unsharded run's outputs in `output` from a checked set of shards: the eval flags they
/// recorded select the documents again (no model is loaded), their answers are routed back
/// and aggregated, and `results.json`, samples and the table are written as `sightline eval`
/// writes them. `date` is the earliest shard's start, the evaluation time and the cache hits
/// are the shards' sums.
///
/// The recorded flags come from files, so the merge trusts them only as far as that is
/// harmless: it writes nothing but `output` (names the flags would take out of it are refused),
/// reads task data where the shards read it (said in one line) and uses it only when it gives
/// the very requests whose sha256 the shards recorded, and lets image names leave
/// `--image-root` only when the merge itself is given `--allow-outside-paths`.
pub(crate) fn finish(
    m: Merged,
    output: &Path,
    overwrite: bool,
    allow_outside_paths: bool,
) -> Result<()> {
    let mut a: Args = serde_json::from_value(m.settings["args"].clone())
        .context("the shards' recorded eval flags")?;
    a.overwrite = overwrite;
    a.allow_outside_paths = allow_outside_paths;
    let mut info: RunInfo = serde_json::from_value(m.settings["results_config"].clone())
        .context("the shards' recorded run facts")?;
    let num = |r: &Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    info.date = m
        .runs
        .iter()
        .map(|r| num(r, "date"))
        .fold(f64::INFINITY, f64::min);
    info.total_seconds = m.runs.iter().map(|r| num(r, "total_seconds")).sum();
    info.cache_hits = m.runs.iter().map(|r| num(r, "cache_hits") as usize).sum();
    enter_shards_directory(&m.runs)?;
    let read = data_paths(&a);
    if !read.is_empty() {
        eprintln!(
            "reading task data where the shards did: {}",
            read.join(", ")
        );
    }

    let tasks = resolve_tasks(&a)?;
    let run = RunKind::check(&a, &tasks, false)?;
    let data = data_source(&a, run.protocol);
    let opts = eval_options(&a, &data);
    let results = finish_merged(&tasks, &opts, &m.tasks, m.responses)?;
    // Only once the set has checked out: a refused merge leaves no folder behind.
    refuse_to_overwrite(output, &run.results_name(), overwrite)?;
    eprintln!(
        "merged {} shards ({} cached answers)",
        m.count, info.cache_hits
    );
    report(&a, Some(output), &run, &results, &info)
}

/// The recorded flags that name task data, as `--flag PATH`.
fn data_paths(a: &Args) -> Vec<String> {
    [
        ("--data-dir", &a.data_dir),
        ("--image-root", &a.image_root),
        ("--vqav2-questions", &a.vqav2_questions),
        ("--vqav2-annotations", &a.vqav2_annotations),
        ("--mme-dir", &a.mme_dir),
        ("--coco-caption-dir", &a.coco_caption_dir),
        ("--flickr30k-caption-dir", &a.flickr30k_caption_dir),
        ("--mathqa-train", &a.mathqa_train),
        ("--squad2-json", &a.squad2_json),
    ]
    .into_iter()
    .filter_map(|(flag, p)| p.as_ref().map(|p| format!("{flag} {}", p.display())))
    .collect()
}

/// Relative paths in the recorded flags (`--data-dir`, `--image-root`, ...) mean what they
/// meant to the shards: the merge works from the first shard's working directory when it
/// exists here (the caller made its own paths absolute); otherwise from its own, and the
/// request hashes tell whether the data read is the same.
fn enter_shards_directory(runs: &[Value]) -> Result<()> {
    let Some(cwd) = runs
        .first()
        .and_then(|r| r["cwd"].as_str())
        .map(PathBuf::from)
    else {
        return Ok(());
    };
    if cwd.is_dir() {
        std::env::set_current_dir(&cwd)
            .with_context(|| format!("{}: cannot enter the shards' directory", cwd.display()))?;
    } else {
        eprintln!(
            "note: the shards ran in {}, which does not exist here; relative paths in their flags are read from the current directory",
            cwd.display()
        );
    }
    Ok(())
}
