//! `sightline`: evaluate, train and compare LLaMA / LLaVA models for the question "does
//! training on images make a language model more truthful and ethical in plain text?".
//!
//! A thin layer over the library crates: parse flags, call the library, print, and turn
//! errors into one line and exit code 1.

mod cmd;
mod io;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sightline",
    version,
    about = "Evaluate, train and compare LLaMA/LLaVA models (Sight Beyond Text)"
)]
pub(crate) struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the whole study (data → stage 1 → stage 2 → text-only baselines → eval → report);
    /// with no arguments, the paper's study at toy scale, offline.
    Study(cmd::study::Args),
    /// Log-likelihoods of (context, continuation) requests, lm-evaluation-harness style.
    Score(cmd::score::Args),
    /// Generate text from a prompt (greedy or sampled).
    Generate(cmd::generate::Args),
    /// Evaluate on TruthfulQA / ETHICS / the retention checks with lm-evaluation-harness
    /// semantics, and on the image tasks.
    // Boxed: the largest variant by far (clippy::large_enum_variant).
    Eval(Box<cmd::eval::Args>),
    /// Merge the shards of `eval --shard I/N` runs into the unsharded run's results.
    Merge(cmd::merge::Args),
    /// List the evaluation tasks.
    Tasks,
    /// Convert foreign checkpoints to Hugging Face layout.
    #[command(subcommand)]
    Convert(cmd::convert::Command),
    /// Build and check training data (validate, stats, strip-images, convert, sample, groups,
    /// preview) and corrupt images (ImageNet-C).
    #[command(subcommand)]
    Data(cmd::data::Command),
    /// Train: LLaVA stage 1 / stage 2 (full or LoRA) or text-only, from a TOML run file.
    Train(cmd::train::Args),
    /// Merge a LoRA adapter into its base model (checked against the unmerged model).
    MergeLora(cmd::merge_lora::Args),
    /// Compare runs (sightline, lm-eval, lmms-eval, training logs): tables, paired tests, plots.
    Report(cmd::report::Args),
    /// Serve a model over an OpenAI-compatible HTTP API (completions with echo + logprobs,
    /// chat completions with streaming).
    Serve(cmd::serve::Args),
}

fn run() -> anyhow::Result<()> {
    // Before any thread exists: candle's idle workers would otherwise spin on the cores the
    // kernels' rayon pool needs (see the function).
    sightline_kernels::park_idle_candle_workers();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // candle and rayon read this once, at their first parallel op.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    dispatch(cli)
}

/// Runs a parsed command line (also how `sightline study` runs its steps in-process).
pub(crate) fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Study(a) => cmd::study::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Eval(a) => cmd::eval::run(*a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Tasks => cmd::tasks::run(),
        Command::Convert(c) => cmd::convert::run(c),
        Command::Data(c) => cmd::data::run(c),
        Command::Train(a) => cmd::train::run(a),
        Command::MergeLora(a) => cmd::merge_lora::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Serve(a) => cmd::serve::run(a),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
