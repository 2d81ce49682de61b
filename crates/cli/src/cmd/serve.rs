//! `sightline serve`: an OpenAI-compatible HTTP server over a model (`/v1/models`,
//! `/v1/completions` with echo + logprobs, `/v1/chat/completions` with streaming, vLLM's
//! `/tokenize`). On a LLaVA checkpoint (or with --mm-projector) chat messages may carry images
//! as base64 `data:` URLs; on a text model image parts are refused with a 400.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use sightline_openai::engine::{Engine, Served};
use sightline_openai::server::{serve, ServeOptions};
use sightline_vision::conversation::{template, TEMPLATE_NAMES};

use super::model_args::ModelArgs;

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (127.0.0.1: this machine only; there is no TLS and no key check,
    /// so put a proxy in front before exposing it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one. The address is printed on stdout once listening.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model id clients send (`model`), default --model as given.
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// Conversation template of /v1/chat/completions (a LLaVA --conv-mode name).
    #[arg(long, default_value = "v1")]
    conv_mode: String,
    /// Prompts per forward pass when scoring (echo + logprobs), and image generations per
    /// batch, across concurrent requests.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Requests in flight at once; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_concurrency: usize,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
}

pub fn run(a: Args) -> Result<()> {
    if template(&a.conv_mode).is_none() {
        bail!(
            "--conv-mode `{}` is not a known template (expected one of: {})",
            a.conv_mode,
            TEMPLATE_NAMES.join(", ")
        );
    }
    let served = if a.model.is_multimodal()? {
        Served::Vision(Box::new(a.model.load_llava()?))
    } else {
        if a.model.vision_tower.is_some() {
            bail!("--vision-tower applies to a LLaVA checkpoint or with --mm-projector; {} is a text model", a.model.model);
        }
        Served::Text(Box::new(a.model.load()?))
    };
    let opts = ServeOptions {
        name: a
            .served_model_name
            .clone()
            .unwrap_or_else(|| a.model.model.clone()),
        conv_mode: a.conv_mode.clone(),
        max_body_bytes: a.max_body_bytes,
        max_concurrency: a.max_concurrency.max(1),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let engine = Engine::start(served, a.batch_size, a.max_concurrency.max(1) * 2)?;
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "sightline serve: model `{}` on http://{addr}/v1",
            opts.name
        )?;
        out.flush()?;
        drop(out);
        serve(listener, engine, opts).await?;
        Ok(())
    })
}
