//! The flags of an API model (`--model openai-completions:NAME` / `openai-chat:NAME`):
//! endpoint, concurrency, timeout, retries.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use sightline_openai::api_lm::{ApiKind, ApiLm};
use sightline_openai::client::{Client, ClientOptions};

use super::model_args::ModelArgs;
use super::scoring_args::ScoringArgs;

/// The flags' defaults, shared by clap and [`Default`] so the two cannot drift apart.
const DEFAULT_CONCURRENCY: usize = 4;
const DEFAULT_TIMEOUT_S: u64 = 600;
const DEFAULT_MAX_RETRIES: u32 = 5;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// OpenAI-compatible endpoint up to `/v1` (e.g. http://127.0.0.1:8000/v1) for --model
    /// openai-completions:NAME or openai-chat:NAME. The key is read from OPENAI_API_KEY.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// API requests in flight at once (log-likelihood batches, generations, image requests).
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    pub api_concurrency: usize,
    /// Seconds before an API request is abandoned (and retried).
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_S)]
    pub api_timeout: u64,
    /// Retries of a request that failed with 429, 5xx or a transport error.
    #[arg(long, default_value_t = DEFAULT_MAX_RETRIES)]
    pub api_max_retries: u32,
}

/// The flags' defaults, for `sightline merge`, which rebuilds an eval's flags from a shard file:
/// the API settings are how a shard reached its endpoint, not what it computed, so shard files
/// do not record them (`#[serde(skip)]` in eval's `Args`).
impl Default for ApiArgs {
    fn default() -> Self {
        Self {
            base_url: None,
            api_concurrency: DEFAULT_CONCURRENCY,
            api_timeout: DEFAULT_TIMEOUT_S,
            api_max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

impl ApiArgs {
    /// The API model `model` names, or `None` for an in-process model.
    pub fn load(&self, model: &ModelArgs, scoring: &ScoringArgs) -> Result<Option<ApiLm>> {
        let Some((kind, name)) = ApiKind::parse(&model.model) else {
            if self.base_url.is_some() {
                bail!("--base-url applies to --model openai-completions:NAME or openai-chat:NAME");
            }
            return Ok(None);
        };
        let Some(url) = &self.base_url else {
            bail!(
                "--model {} needs --base-url (the endpoint up to /v1)",
                model.model
            );
        };
        if model.adapter.is_some() || model.vision_tower.is_some() || model.mm_projector.is_some() {
            bail!(
                "--adapter, --vision-tower and --mm-projector apply to local models, not to {}",
                model.model
            );
        }
        let mut opts = ClientOptions::new(url);
        opts.timeout = Duration::from_secs(self.api_timeout.max(1));
        opts.max_retries = self.api_max_retries;
        let client = Client::new(opts);
        let lm = ApiLm::new(
            kind,
            name,
            client,
            self.api_concurrency,
            scoring.batch_size,
            scoring.max_length,
        )?;
        Ok(Some(lm))
    }
}
