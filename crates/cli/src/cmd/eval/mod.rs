//! `sightline eval`: TruthfulQA / ETHICS and the retention checks (MMLU by the paper's script;
//! GSM8K, MathQA, BoolQ, SQuAD2) with lm-evaluation-harness semantics, and the image
//! tasks (POPE, MME, COCO/Flickr30k captions, Unicorn sketchy-VQA and OODCV-VQA, VQAv2) on a LLaVA model with Sight-Beyond-Text's protocol or a
//! greedy one; results in lm-eval's `results.json` schema either way. Text and image tasks run
//! in separate calls: a LLaVA model is loaded for image tasks, the decoder alone for text.
//! With `--shard I/N` the run answers one shard's work units ([`shard`]); `sightline merge`
//! turns the shards into the unsharded run's results.

mod run_kind;
pub(crate) mod shard;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sightline_eval::cache::RequestCache;
use sightline_eval::data::{DataSource, TruthfulQaVersion};
use sightline_eval::evaluator::{evaluate, EvalOptions, Phase, ShardSpec, TaskResult};
use sightline_eval::lm::{CandleLm, LanguageModel};
use sightline_eval::mm_lm::{ImageCorruption, LlavaLm};
use sightline_eval::protocol::Protocol;
use sightline_eval::report::{markdown_table, results_json, RunInfo};
use sightline_eval::tasks::mathqa::TrainFile;
use sightline_model::{dtype_name, hub};
use sightline_vision::conversation::{template, TEMPLATE_NAMES};

use super::api_args::ApiArgs;
use super::model_args::{keep_freed_memory_from_now, ModelArgs};
use super::scoring_args::ScoringArgs;
use crate::io::Output;
use run_kind::RunKind;

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
enum TqaData {
    /// Original release, what HF `truthful_qa` serves (the harness's and the paper's data).
    V0,
    /// The 2021-10-10 release with extra reference answers.
    Current,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
enum Gsm8kHarnessArg {
    /// The paper's: the 0.3-era harness (commit 0bf683b), 8-shot from the seed-42 stream,
    /// stops ":", "Question:", "Question"; `acc`.
    Paper,
    /// lm-eval 0.4.9.1's `gsm8k`: 5-shot from its seed-1234 sampler, stops "Question:",
    /// "</s>", "<|im_end|>"; `exact_match` under `strict-match` and `flexible-extract`.
    #[value(name = "0.4")]
    V04,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Deserialize)]
enum ProtocolArg {
    /// The paper's: `v0` prompt with its canned example, sampling (T 0.2, top-k 50, seeded).
    Sbt,
    /// Deterministic: greedy decoding, "Answer the question using a single word or phrase."
    Greedy,
}

/// The flags of `sightline eval`. A shard file records them (all but where output goes and
/// what is cached, which are the run's own business) for `sightline merge` to compare between
/// shards and to select the documents again.
#[derive(ClapArgs, Serialize, Deserialize)]
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
    /// Where an API model is served and how it is called (`--model openai-*:NAME`).
    #[command(flatten)]
    #[serde(skip)]
    api: ApiArgs,
    /// Directory for results.json (and samples_<task>.jsonl with --log-samples); with
    /// --shard, for the shard's shard-I-of-N.json.
    #[arg(long)]
    #[serde(skip)]
    output: Option<PathBuf>,
    /// Replace an existing results.json / samples files in --output.
    #[arg(long)]
    #[serde(skip)]
    overwrite: bool,
    /// Write per-document records (doc, requests, responses, metrics).
    #[arg(long)]
    log_samples: bool,
    /// Request log directory: finished requests are appended as they finish and reused by a
    /// rerun (also after a crash or kill).
    #[arg(long)]
    #[serde(skip)]
    cache: Option<PathBuf>,
    /// Compute only shard I of N (I from 0, e.g. `--shard $SLURM_ARRAY_TASK_ID/4`) of the
    /// run's work units and write them to --output/shard-I-of-N.json; `sightline merge`
    /// makes the results of the whole run from all N.
    #[arg(long, value_name = "I/N", value_parser = shard_spec)]
    #[serde(skip)]
    shard: Option<ShardSpec>,
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
    /// gsm8k: which harness version's task (prompt shots, stops, metric).
    #[arg(long, value_enum, default_value = "paper")]
    gsm8k_harness: Gsm8kHarnessArg,
    /// Image tasks: the folder holding the task's images (POPE: the COCO val2014 images;
    /// sketchy-VQA: a full copy of the sketches, default the bundled ones).
    #[arg(long, value_name = "DIR")]
    image_root: Option<PathBuf>,
    /// Image tasks: let the task files' image names leave --image-root (absolute paths, `..`,
    /// symlinks out of it); without it such a record stops the run, named.
    #[arg(long)]
    allow_outside_paths: bool,
    /// Image tasks: skip records whose image is missing (counted in results.json and on
    /// stderr) instead of failing; --limit then counts records that have their image.
    #[arg(long)]
    skip_missing_images: bool,
    /// vqav2: the val2014 questions file (`v2_OpenEnded_mscoco_val2014_questions.json`).
    #[arg(long, value_name = "FILE")]
    vqav2_questions: Option<PathBuf>,
    /// vqav2: the val2014 annotations file (`v2_mscoco_val2014_annotations.json`).
    #[arg(long, value_name = "FILE")]
    vqav2_annotations: Option<PathBuf>,
    /// mme: your MME copy (`MME_Benchmark_release_version`, one folder per sub-task); MME may
    /// not be redistributed, so it is not bundled.
    #[arg(long, value_name = "DIR")]
    mme_dir: Option<PathBuf>,
    /// coco_caption: SBT's files (`mscoco_train.json`, `mscoco_test.json`, `test_images/`).
    #[arg(long, value_name = "DIR")]
    coco_caption_dir: Option<PathBuf>,
    /// flickr30k_caption: SBT's files (`flickr30k_train.json`, `flickr30k_test.json`,
    /// `test_images/`).
    #[arg(long, value_name = "DIR")]
    flickr30k_caption_dir: Option<PathBuf>,
    /// mathqa (4-shot): MathQA's `train.json` (HF `math_qa` train split), the few-shot pool;
    /// not bundled (`mathqa_0shot` runs without it).
    #[arg(long, value_name = "FILE", value_parser = mathqa_train_file)]
    mathqa_train: Option<PathBuf>,
    /// squad2: the official `dev-v2.0.json`, read instead of the bundled SQuAD-explorer pages
    /// (both give the same documents).
    #[arg(long, value_name = "FILE")]
    squad2_json: Option<PathBuf>,
    /// Image tasks: how prompts are built and answers decoded.
    #[arg(long, value_enum, default_value = "sbt")]
    protocol: ProtocolArg,
    /// Image tasks: apply an ImageNet-C corruption at a severity (1-5) to every image, e.g.
    /// `gaussian_noise:3` (after resizing/center-cropping to 224, spec E8.1). Results go to
    /// results_<name>_<severity>.json (samples likewise) so runs can share --output.
    #[arg(long, value_name = "NAME:S")]
    corrupt: Option<String>,
    /// Base seed of the corruptions' noise (each image gets its own, derived from this, its
    /// file name, the corruption and the severity).
    #[arg(long, default_value_t = 0)]
    corrupt_seed: u64,
    /// Generation tasks on a local model: send each prompt as one user message through this
    /// conversation template (a LLaVA --conv-mode name: v1, v0, llama_2, ...), as `sightline
    /// serve --conv-mode MODE` does for /v1/chat/completions, so the local run and an
    /// openai-chat run on the same model answer the same prompt (lm-eval's
    /// --apply_chat_template). Log-likelihood tasks are refused under it.
    #[arg(long, value_name = "MODE")]
    #[serde(default)]
    chat_template: Option<String>,
}

/// `--mathqa-train FILE`: every record validated (errors name the file, record and field), and
/// one warning line on stderr when it is not MathQA's official `train.json`.
fn mathqa_train_file(arg: &str) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(arg);
    let file = TrainFile::check(&path).map_err(|e| e.to_string())?;
    if let Some(w) = file.warning(&path) {
        eprintln!("{w}");
    }
    Ok(path)
}

/// `--shard I/N`.
fn shard_spec(arg: &str) -> std::result::Result<ShardSpec, String> {
    arg.parse()
        .map_err(|e: sightline_eval::Error| e.to_string())
}

/// `gaussian_noise:3` → the corruption and its severity.
fn parse_corruption(spec: &str, seed: u64) -> Result<ImageCorruption> {
    let (name, sev) = spec.split_once(':').with_context(|| {
        format!("--corrupt {spec}: expected NAME:SEVERITY, e.g. gaussian_noise:3")
    })?;
    let kind: sightline_corrupt::Corruption =
        name.parse().with_context(|| format!("--corrupt {spec}"))?;
    let severity: u8 = sev
        .parse()
        .ok()
        .filter(|s| (1..=5).contains(s))
        .with_context(|| format!("--corrupt {spec}: the severity must be 1 to 5"))?;
    Ok(ImageCorruption {
        kind,
        severity,
        seed,
    })
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
    out.writer()
        .write_all(contents)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    out.finish()
}

/// `sightline eval`: check the arguments, load the model, evaluate, write `results.json` (and
/// samples), print the table; with `--shard`, evaluate one shard and write its file.
pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let tasks = resolve_tasks(&a)?;
    let run = RunKind::check(&a, &tasks, true)?;
    let output_name = match a.shard {
        Some(s) => shard::file_name(s, &run),
        None => run.results_name(),
    };
    match &a.output {
        Some(dir) => refuse_to_overwrite(dir, &output_name, a.overwrite)?,
        None if a.shard.is_some() => bail!(
            "--shard needs --output DIR: the shard's answers go to DIR/{output_name} for `sightline merge`"
        ),
        None => {}
    }
    let data = data_source(&a, run.protocol);
    let opts = eval_options(&a, &data);
    let (lm, max_length) = load_lm(&a, &run)?;
    let mut cache = match &a.cache {
        Some(dir) => Some(RequestCache::open(dir)?),
        None => None,
    };
    if let Some(s) = a.shard {
        let sharded = with_bars(|progress| {
            Ok(sightline_eval::evaluator::evaluate_shard(
                lm.as_ref(),
                &tasks,
                &opts,
                cache.as_mut(),
                s,
                progress,
            )?)
        })?;
        let cache_hits = cache.as_ref().map_or(0, |c| c.hits);
        let info = run_info(&a, &run, &data, max_length, (date, started), cache_hits);
        return shard::write(&a, &run, lm.identity(), sharded, info);
    }

    let results = with_bars(|progress| {
        Ok(evaluate(
            lm.as_ref(),
            &tasks,
            &opts,
            cache.as_mut(),
            progress,
        )?)
    })?;

    let cache_hits = cache.as_ref().map_or(0, |c| c.hits);
    let mut info = run_info(&a, &run, &data, max_length, (date, started), cache_hits);
    info.api = lm.run_notes();
    if info.cache_hits > 0 {
        eprintln!(
            "reused {} cached responses from {}",
            info.cache_hits,
            a.cache.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    report(&a, a.output.as_deref(), &run, &results, &info)
}

/// The tasks `--tasks` names, in the variants the flags choose.
fn resolve_tasks(a: &Args) -> Result<Vec<Box<dyn sightline_eval::task::Task>>> {
    let variants = sightline_eval::tasks::Variants {
        gsm8k: match a.gsm8k_harness {
            Gsm8kHarnessArg::Paper => sightline_eval::tasks::gsm8k::Harness::Paper,
            Gsm8kHarnessArg::V04 => sightline_eval::tasks::gsm8k::Harness::V04,
        },
    };
    Ok(sightline_eval::tasks::resolve_with(&a.tasks, variants)?)
}

/// Which documents are scored and what is logged, from the flags.
fn eval_options(a: &Args, data: &DataSource) -> EvalOptions {
    EvalOptions {
        limit: a.limit,
        shuffle_seed: a.seed,
        data: data.clone(),
        log_samples: a.log_samples,
        skip_missing_images: a.skip_missing_images,
    }
}

/// What a finished run (or a merge) leaves: notes on stderr, `results.json` and samples in
/// `output`, the corruption and the Markdown table on stdout.
fn report(
    a: &Args,
    output: Option<&Path>,
    run: &RunKind,
    results: &[TaskResult],
    info: &RunInfo,
) -> Result<()> {
    warn_about(results);
    if let Some(dir) = output {
        write_results(a, dir, run, results, info)?;
    }
    if let Some(c) = &run.corruption {
        println!("corruption: {} at severity {}", c.kind.name(), c.severity);
    }
    print!("{}", markdown_table(results));
    Ok(())
}

/// Creates `--output` and refuses to replace its results file without `--overwrite`, before
/// any work is done.
fn refuse_to_overwrite(dir: &Path, results_name: &str, overwrite: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let results = dir.join(results_name);
    if results.exists() && !overwrite {
        bail!(
            "{}: already exists (pass --overwrite to replace it)",
            results.display()
        );
    }
    Ok(())
}

/// Where the tasks read their data, from the data flags.
fn data_source(a: &Args, protocol: Protocol) -> DataSource {
    DataSource {
        dir: a.data_dir.clone(),
        truthfulqa: match a.truthfulqa_data {
            TqaData::V0 => TruthfulQaVersion::V0,
            TqaData::Current => TruthfulQaVersion::Current,
        },
        image_root: a.image_root.clone(),
        allow_outside_paths: a.allow_outside_paths,
        protocol,
        vqav2_questions: a.vqav2_questions.clone(),
        vqav2_annotations: a.vqav2_annotations.clone(),
        mme_dir: a.mme_dir.clone(),
        coco_caption_dir: a.coco_caption_dir.clone(),
        flickr30k_caption_dir: a.flickr30k_caption_dir.clone(),
        mathqa_train: a.mathqa_train.clone(),
        squad2_json: a.squad2_json.clone(),
    }
}

/// Loads the model (LLaVA for image tasks) with the cache identity its answers are stored
/// under; returns it with its context length.
fn load_lm(a: &Args, run: &RunKind) -> Result<(Box<dyn LanguageModel>, usize)> {
    if let Some(mode) = &a.chat_template {
        if template(mode).is_none() {
            bail!(
                "--chat-template `{mode}` is not a known template (expected one of: {})",
                TEMPLATE_NAMES.join(", ")
            );
        }
        if run.multimodal {
            bail!("--chat-template applies to text generation tasks; image tasks build their own `v0` prompts (--protocol)");
        }
    }
    if let Some(mut lm) = a.api.load(&a.model, &a.scoring)? {
        if a.chat_template.is_some() {
            bail!("--chat-template applies to local models: an openai-chat server applies its own template (sightline serve: --conv-mode)");
        }
        lm.corruption = run.corruption;
        let max_length = lm.max_length.unwrap_or(0);
        return Ok((Box::new(lm), max_length));
    }
    // Cache identities pin Hub ids to the commit they resolved to (`repo@commit`, known once
    // loaded), so a moved branch is a new model; local paths stay as given.
    let pin = |p: Option<&Path>| p.map_or(String::new(), |p| hub::identity(&p.to_string_lossy()));
    // The dtype answers are computed in (`auto` resolved), not the flag's spelling.
    let dtype = dtype_name(a.model.dtype()?);
    let tag = || format!("adapter={}|dtype={dtype}", pin(a.model.adapter.as_deref()),);
    if run.multimodal {
        let llava = a.model.load_llava()?;
        keep_freed_memory_from_now();
        let max_length = llava.llm.config.max_position_embeddings;
        let mut tag = format!(
            "{}|{}|vision_tower={}|mm_projector={}|aspect={:?}",
            hub::identity(&a.model.model),
            tag(),
            pin(a.model.vision_tower.as_deref()),
            pin(a.model.mm_projector.as_deref()),
            llava.aspect
        );
        if let Some(t) = &llava.tower_hub {
            tag.push_str(&format!("|tower={t}"));
        }
        let lm = LlavaLm {
            llava,
            batch_size: a.scoring.batch_size.max(1),
            tag,
            corruption: run.corruption,
        };
        Ok((Box::new(lm), max_length))
    } else {
        let loaded = a.model.load()?;
        keep_freed_memory_from_now();
        let mut tag = tag();
        let pinned = hub::identity(&a.model.model);
        if pinned != a.model.model {
            tag.push_str(&format!("|model={pinned}"));
        }
        let max_length = a
            .scoring
            .max_length
            .unwrap_or(loaded.model.config.max_position_embeddings);
        let lm = CandleLm {
            loaded,
            score: a.scoring.options(),
            max_gen_toks: 256,
            tag,
            prefix_cache: Default::default(),
            chat_template: a.chat_template.clone(),
        };
        Ok((Box::new(lm), max_length))
    }
}

/// Runs an evaluation (`work`, given the progress callback) with a progress bar per phase on
/// stderr.
fn with_bars<T>(work: impl FnOnce(&mut dyn FnMut(Phase, usize, usize)) -> Result<T>) -> Result<T> {
    let multi = MultiProgress::new();
    let ll_bar = bar(&multi, "loglikelihood");
    let gen_bar = bar(&multi, "generate");
    let results = work(&mut |phase, done, total| {
        let b = match phase {
            Phase::Loglikelihood => &ll_bar,
            Phase::Generate => &gen_bar,
        };
        b.set_length(total as u64);
        b.set_position(done as u64);
    })?;
    ll_bar.finish_and_clear();
    gen_bar.finish_and_clear();
    Ok(results)
}

/// What `results.json` records about the run: its `config`, when it started (`date`, Unix
/// seconds) and how long it took (`started`), and how many answers came from the cache.
fn run_info(
    a: &Args,
    run: &RunKind,
    data: &DataSource,
    max_length: usize,
    (date, started): (f64, Instant),
    cache_hits: usize,
) -> RunInfo {
    let adapter = a.model.adapter.as_ref().map(|p| p.display().to_string());
    let model_hub = hub::cached_source(&a.model.model);
    let adapter_hub = adapter.as_deref().and_then(hub::cached_source);
    RunInfo {
        api: None,
        chat_template: a.chat_template.clone(),
        model_revision: model_hub.as_ref().map(|h| h.revision.clone()),
        model_sha: model_hub.map(|h| h.commit),
        peft_sha: adapter_hub.map(|h| h.commit),
        model: a.model.model.clone(),
        adapter,
        // `auto` as resolved for this checkpoint on this machine.
        dtype: a
            .model
            .dtype()
            .map(|d| dtype_name(d).to_string())
            .unwrap_or_else(|_| a.model.dtype.clone()),
        batch_size: a.scoring.batch_size,
        limit: a.limit,
        shuffle_seed: a.seed,
        truthfulqa_data: data.truthfulqa.name().to_string(),
        git_hash: Some(env!("SIGHTLINE_GIT_HASH").to_string()).filter(|h| !h.is_empty()),
        date,
        total_seconds: started.elapsed().as_secs_f64(),
        cache_hits,
        add_bos: a.scoring.add_bos,
        empty_context_prefix: format!("{:?}", a.scoring.empty_context_prefix).to_lowercase(),
        max_length,
        multimodal: run.multimodal.then(|| {
            serde_json::json!({
                "protocol": run.protocol.describe(),
                "image_root": a.image_root.as_ref().map(|p| p.display().to_string()),
                "skip_missing_images": a.skip_missing_images,
                "generation_batch_size": a.scoring.batch_size.max(1),
                "batching": "equal-length prompts per batch, no padding (batch-size invariant)",
                "corruption": run.corruption.map(|c| serde_json::json!({
                    "name": c.kind.name(),
                    "severity": c.severity,
                    "seed": c.seed,
                    "geometry": "shortest side resized to 224 (bicubic), center crop 224, then corrupted (spec E8.1)",
                })),
            })
        }),
    }
}

/// Notes on stderr about what the results lack: caption metrics that are not computed, records
/// skipped for a missing image.
fn warn_about(results: &[TaskResult]) {
    for r in results {
        if r.name.ends_with("_caption") {
            eprintln!(
                "{}: METEOR and SPICE are absent (they need Java and the pycocoevalcap jars, which sightline does not run)",
                r.name
            );
        }
        if let Some(k) = r.skipped_missing_images.filter(|&k| k > 0) {
            eprintln!(
                "{}: skipped {k} of {} records whose image is missing",
                r.name, r.n_original
            );
        }
    }
}

/// `results<suffix>.json` and, with `--log-samples`, `samples_<task><suffix>.jsonl` in `dir`:
/// all written to temporaries first and only then renamed into place, so a failure (a full
/// disk) leaves the files of an earlier run whole and consistent.
fn write_results(
    a: &Args,
    dir: &Path,
    run: &RunKind,
    results: &[TaskResult],
    info: &RunInfo,
) -> Result<()> {
    let json = serde_json::to_string_pretty(&results_json(results, info))?;
    let mut files = vec![(dir.join(run.results_name()), json)];
    if a.log_samples {
        for r in results {
            let mut text = String::new();
            for s in &r.samples {
                text.push_str(&serde_json::to_string(s)?);
                text.push('\n');
            }
            let name = format!("samples_{}{}.jsonl", r.name, run.suffix());
            files.push((dir.join(name), text));
        }
    }
    let mut written = Vec::with_capacity(files.len());
    for (path, text) in &files {
        let mut out = Output::create(Some(path), a.overwrite)?;
        out.writer()
            .write_all(text.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
        out.flush()?;
        written.push(out);
    }
    written.into_iter().try_for_each(Output::finish)
}
