//! `sightline generate`: text from a prompt, greedy by default.

use std::io::Write;

use anyhow::Result;
use clap::Args as ClapArgs;
use sightline_model::generate::{generate, GenerateOptions};

use super::model_args::ModelArgs;

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt; BOS is added as the tokenizer's config says.
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Stop when this string appears (repeatable); the output is cut before it.
    #[arg(long)]
    stop: Vec<String>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample only from the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        anyhow::bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if a.temperature < 0.0 {
        anyhow::bail!("--temperature must be >= 0, got {}", a.temperature);
    }
    let m = a.model.load()?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        stop: a.stop,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_at_eos: true,
    };
    let g = generate(&m.model, &m.tokenizer, &a.prompt, &opts)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", g.text)?;
    Ok(())
}
