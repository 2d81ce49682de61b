//! `sightline generate`: text from a prompt (and an image, for LLaVA models), greedy by
//! default.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use sightline_model::generate::{generate, GenerateOptions};
use sightline_vision::conversation::{template, TEMPLATE_NAMES};
use sightline_vision::llava::IMAGE_PLACEHOLDER;

use super::model_args::ModelArgs;

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt. Without --conv-mode it is used verbatim (BOS added as the tokenizer's
    /// config says) and, with --image, must contain one `<image>` where the image goes.
    /// With --conv-mode it is the user's question.
    #[arg(long, default_value = "")]
    prompt: String,
    /// An image (JPEG, PNG, WebP) for a LLaVA model.
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Wrap the prompt in a LLaVA conversation template (v0, v1, llava_v1, llava_llama_2,
    /// llama_2, plain, ...) as LLaVA's eval scripts do: the image placeholder goes before the
    /// question (`<im_start><image><im_end>` for models trained with mm_use_im_start_end),
    /// and the reply stops at the template's separator.
    #[arg(long, value_name = "NAME")]
    conv_mode: Option<String>,
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

/// The prompt after the conversation template, and the template's stop string.
fn build_prompt(a: &Args, image_token: &str) -> Result<(String, Option<String>)> {
    let Some(mode) = &a.conv_mode else {
        return Ok((a.prompt.clone(), None));
    };
    let Some(mut conv) = template(mode) else {
        bail!(
            "--conv-mode `{mode}` is not a known template (expected one of: {})",
            TEMPLATE_NAMES.join(", ")
        );
    };
    let question = if a.image.is_some() && !a.prompt.contains(IMAGE_PLACEHOLDER) {
        format!("{image_token}\n{}", a.prompt)
    } else {
        a.prompt.clone()
    };
    conv.ask(&question);
    Ok((conv.prompt(), conv.stop().map(str::to_string)))
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if a.temperature < 0.0 {
        bail!("--temperature must be >= 0, got {}", a.temperature);
    }
    let mut opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        stop: a.stop.clone(),
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_at_eos: true,
    };
    let text = if a.image.is_some() {
        let m = a.model.load_llava()?;
        let (prompt, stop) = build_prompt(&a, &m.image_prompt_token())?;
        opts.stop.extend(stop);
        m.generate(&prompt, a.image.as_deref(), &opts)?.text
    } else {
        if a.prompt.contains(IMAGE_PLACEHOLDER) && a.model.is_multimodal()? {
            bail!("the prompt has an `<image>` placeholder but no --image was given");
        }
        let (prompt, stop) = build_prompt(&a, IMAGE_PLACEHOLDER)?;
        opts.stop.extend(stop);
        let m = a.model.load()?;
        generate(&m.model, &m.tokenizer, &prompt, &opts)?.text
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}
