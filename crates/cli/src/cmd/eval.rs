//! `sightline eval`: TruthfulQA / ETHICS with lm-evaluation-harness semantics, results in its
//! `results.json` schema.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sightline_eval::cache::RequestCache;
use sightline_eval::data::{DataSource, TruthfulQaVersion};
use sightline_eval::evaluator::{evaluate, EvalOptions, Phase};
use sightline_eval::lm::CandleLm;
use sightline_eval::report::{markdown_table, results_json, RunInfo};

use super::model_args::ModelArgs;
use super::scoring_args::ScoringArgs;
use crate::io::Output;

#[derive(Clone, Copy, ValueEnum)]
enum TqaData {
    /// Original release, what HF `truthful_qa` serves (the harness's and the paper's data).
    V0,
    /// The 2021-10-10 release with extra reference answers.
    Current,
}

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated tasks or groups (`sightline tasks` lists them).
    #[arg(long, default_value = "truthfulqa,ethics")]
    tasks: String,
    /// Evaluate only the first N documents of each task (after the harness's seed-42 shuffle).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    scoring: ScoringArgs,
    /// Directory for results.json (and samples_<task>.jsonl with --log-samples).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace an existing results.json / samples files in --output.
    #[arg(long)]
    overwrite: bool,
    /// Write per-document records (doc, requests, responses, metrics).
    #[arg(long)]
    log_samples: bool,
    /// Request log directory: finished requests are appended as they finish and reused by a
    /// rerun (also after a crash or kill).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Seed of the per-task document shuffle (lm-eval 0.3 uses 42).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Read task data from this directory (same layout as the repository's data/) instead of
    /// the copies built into the binary.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TruthfulQA release.
    #[arg(long, value_enum, default_value = "v0")]
    truthfulqa_data: TqaData,
}

fn bar(multi: &MultiProgress, label: &str) -> ProgressBar {
    let b = multi.add(ProgressBar::new(0));
    b.set_style(
        ProgressStyle::with_template("{msg:>14} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(label.to_string());
    b
}

fn write_file(path: &Path, overwrite: bool, contents: &[u8]) -> Result<()> {
    let mut out = Output::create(Some(path), overwrite)?;
    out.writer().write_all(contents)?;
    out.finish()
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let tasks = sightline_eval::tasks::resolve(&a.tasks)?;
    if let Some(dir) = &a.output {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let results = dir.join("results.json");
        if results.exists() && !a.overwrite {
            bail!(
                "{}: already exists (pass --overwrite to replace it)",
                results.display()
            );
        }
    }
    let data = DataSource {
        dir: a.data_dir.clone(),
        truthfulqa: match a.truthfulqa_data {
            TqaData::V0 => TruthfulQaVersion::V0,
            TqaData::Current => TruthfulQaVersion::Current,
        },
    };
    let opts = EvalOptions {
        limit: a.limit,
        shuffle_seed: a.seed,
        data: data.clone(),
        log_samples: a.log_samples,
    };
    let loaded = a.model.load()?;
    let max_length = a
        .scoring
        .max_length
        .unwrap_or(loaded.model.config.max_position_embeddings);
    let adapter = a.model.adapter.as_ref().map(|p| p.display().to_string());
    let lm = CandleLm {
        loaded,
        score: a.scoring.options(),
        max_gen_toks: 256,
        tag: format!(
            "adapter={}|dtype={}",
            adapter.clone().unwrap_or_default(),
            a.model.dtype
        ),
    };
    let mut cache = match &a.cache {
        Some(dir) => Some(RequestCache::open(dir)?),
        None => None,
    };

    let multi = MultiProgress::new();
    let ll_bar = bar(&multi, "loglikelihood");
    let gen_bar = bar(&multi, "generate");
    let results = evaluate(
        &lm,
        &tasks,
        &opts,
        cache.as_mut(),
        &mut |phase, done, total| {
            let b = match phase {
                Phase::Loglikelihood => &ll_bar,
                Phase::Generate => &gen_bar,
            };
            b.set_length(total as u64);
            b.set_position(done as u64);
        },
    )?;
    ll_bar.finish_and_clear();
    gen_bar.finish_and_clear();

    let info = RunInfo {
        model: a.model.model.clone(),
        adapter,
        dtype: a.model.dtype.clone(),
        batch_size: a.scoring.batch_size,
        limit: a.limit,
        shuffle_seed: a.seed,
        truthfulqa_data: data.truthfulqa.name().to_string(),
        git_hash: Some(env!("SIGHTLINE_GIT_HASH").to_string()).filter(|h| !h.is_empty()),
        date,
        total_seconds: started.elapsed().as_secs_f64(),
        cache_hits: cache.as_ref().map_or(0, |c| c.hits),
        add_bos: a.scoring.add_bos,
        empty_context_prefix: format!("{:?}", a.scoring.empty_context_prefix).to_lowercase(),
        max_length,
    };
    if let Some(dir) = &a.output {
        let json = serde_json::to_string_pretty(&results_json(&results, &info))?;
        write_file(&dir.join("results.json"), a.overwrite, json.as_bytes())?;
        if a.log_samples {
            for r in &results {
                let mut text = String::new();
                for s in &r.samples {
                    text.push_str(&serde_json::to_string(s)?);
                    text.push('\n');
                }
                write_file(
                    &dir.join(format!("samples_{}.jsonl", r.name)),
                    a.overwrite,
                    text.as_bytes(),
                )?;
            }
        }
    }
    if info.cache_hits > 0 {
        eprintln!(
            "reused {} cached responses from {}",
            info.cache_hits,
            a.cache.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    print!("{}", markdown_table(&results));
    Ok(())
}
