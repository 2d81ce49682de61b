//! `sightline merge DIR... --output OUT`: the shards of a `sightline eval --shard I/N` run,
//! checked to be one whole run (same flags, model, build, tasks, requests and division of the
//! work; every shard and every work unit exactly once), become the `results.json`, samples and
//! table the unsharded run writes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use sightline_eval::shard::{self, ShardFile};

#[derive(ClapArgs)]
pub struct Args {
    /// Folders holding shard files (`shard-I-of-N.json`, from `sightline eval --shard I/N
    /// --output DIR`), or the files themselves; one folder may hold every shard.
    #[arg(required = true, value_name = "DIR")]
    shards: Vec<PathBuf>,
    /// Directory for results.json and the samples (created if needed).
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing results.json / samples files in --output.
    #[arg(long)]
    overwrite: bool,
    /// Let the task files' image names leave --image-root, as `sightline eval
    /// --allow-outside-paths` does. Never taken from the shard files: a file cannot grant
    /// itself what only the user may.
    #[arg(long)]
    allow_outside_paths: bool,
}

/// Finds and reads the shard files, checks the set, and writes the merged results.
pub fn run(a: Args) -> Result<()> {
    // Absolute before the merge enters the shards' working directory.
    let here = std::env::current_dir().context("the current directory")?;
    let output = here.join(&a.output);
    let dirs: Vec<PathBuf> = a.shards.iter().map(|d| here.join(d)).collect();
    let files = shard::find(&dirs)?;
    let shards = files
        .into_iter()
        .map(|p| ShardFile::read(&p).map(|s| (p, s)))
        .collect::<sightline_eval::Result<Vec<_>>>()?;
    let searched = a
        .shards
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let merged = shard::merge(shards, &searched)?;
    super::eval::shard::finish(merged, &output, a.overwrite, a.allow_outside_paths)
}
