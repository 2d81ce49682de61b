//! `sightline score`: lm-evaluation-harness log-likelihoods for JSONL requests.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use sightline_guard::Folder;
use sightline_model::score::{score, Request};
use sightline_vision::llava::ImageRequest;

use super::model_args::{keep_freed_memory_from_now, ModelArgs};
use super::scoring_args::ScoringArgs;
use crate::io::Output;

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file: one `{"context": str, "continuation": str}` per line, with an optional
    /// `"image": path` for LLaVA models (the context then holds one `<image>` placeholder).
    #[arg(long)]
    requests: PathBuf,
    /// Folder that relative `image` paths are resolved against (default: the requests file's
    /// folder), like LLaVA's `--image-folder`.
    #[arg(long, value_name = "DIR")]
    image_folder: Option<PathBuf>,
    /// Let `image` paths leave the image folder (absolute paths, `..`, symlinks out of it).
    #[arg(long)]
    allow_outside_paths: bool,
    /// Write results here instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace --output if it exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    scoring: ScoringArgs,
}

/// Reads requests, naming the file, line and field of anything malformed; relative image
/// paths are resolved against `image_folder` and may not leave it (unless it allows that).
fn read_requests(path: &PathBuf, image_folder: &Folder) -> Result<Vec<ImageRequest>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let field = |name: &str| -> Result<String> {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| {
                    format!(
                        "{}:{}: field `{name}` must be a string",
                        path.display(),
                        i + 1
                    )
                })
        };
        let image = match v.get("image") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(p)) => Some(
                image_folder
                    .join(p)
                    .with_context(|| format!("{}:{}: field `image`", path.display(), i + 1))?,
            ),
            Some(_) => anyhow::bail!(
                "{}:{}: field `image` must be a path string",
                path.display(),
                i + 1
            ),
        };
        out.push(ImageRequest {
            context: field("context")?,
            continuation: field("continuation")?,
            image,
        });
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    let folder = match &a.image_folder {
        Some(f) => f.clone(),
        None => a
            .requests
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
    };
    let folder = Folder::new(folder, a.allow_outside_paths)?;
    let requests = read_requests(&a.requests, &folder)?;
    if a.output.as_deref() == Some(a.requests.as_path()) {
        anyhow::bail!(
            "--output would overwrite the requests file {}",
            a.requests.display()
        );
    }
    let mut out = Output::create(a.output.as_deref(), a.overwrite)?;
    let opts = a.scoring.options();
    let bar = ProgressBar::new(requests.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("scoring");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let count = requests.len();
    // Loading and scoring are timed apart, as lm-eval times `loglikelihood` apart from the
    // model's loading: the summary line on stderr says both.
    let started = std::time::Instant::now();
    let (results, loaded) = if requests.iter().any(|r| r.image.is_some()) {
        // Text requests in the same file are scored as the text path scores them; the
        // scoring flags (--add-bos, --max-length, ...) apply to those only.
        let m = a.model.load_llava()?;
        keep_freed_memory_from_now();
        let loaded = std::time::Instant::now();
        (m.score(&requests, &opts, &mut progress), loaded)
    } else {
        let m = a.model.load()?;
        keep_freed_memory_from_now();
        let loaded = std::time::Instant::now();
        let text: Vec<Request> = requests
            .into_iter()
            .map(|r| Request {
                context: r.context,
                continuation: r.continuation,
            })
            .collect();
        let results = score(&m.model, &m.tokenizer, &text, &opts, &mut progress);
        (results.map_err(Into::into), loaded)
    };
    let results = results.with_context(|| format!("{}", a.requests.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "scored {count} requests in {:.2} s (model loaded in {:.2} s)",
        loaded.elapsed().as_secs_f64(),
        (loaded - started).as_secs_f64()
    );
    let name = a
        .output
        .as_ref()
        .map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let w = out.writer();
    for r in results {
        serde_json::to_writer(&mut *w, &r)
            .map_err(std::io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .with_context(|| format!("{name}: cannot write"))?;
    }
    out.finish()
}
