//! A blocking client for OpenAI-compatible endpoints: the key from `OPENAI_API_KEY` (sent as a
//! bearer token, never printed: errors carry the URL and the server's message only), a timeout
//! per request, retries with exponential backoff on 429, 5xx and transport failures (honouring
//! `Retry-After` in seconds), and counts of requests, retries and tokens used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::wire::{ErrorBody, ModelList, TokenizeRequest, TokenizeResponse, Usage};

/// How the client talks to the server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub timeout: Duration,
    /// Retries after the first try (so `max_retries + 1` tries at most).
    pub max_retries: u32,
    /// The first backoff; each retry doubles it, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientOptions {
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            timeout: Duration::from_secs(600),
            max_retries: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Counters over a run, reported in `results.json`.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

impl Counters {
    /// The counts as JSON (`requests`, `retries`, `prompt_tokens`, `completion_tokens`,
    /// `total_tokens`).
    pub fn to_json(&self) -> Value {
        let p = self.prompt_tokens.load(Ordering::Relaxed);
        let c = self.completion_tokens.load(Ordering::Relaxed);
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "retries": self.retries.load(Ordering::Relaxed),
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
        })
    }
}

/// The client. Cloning shares the connection pool; it is `Send + Sync` for worker threads.
pub struct Client {
    agent: ureq::Agent,
    opts: ClientOptions,
    key: Option<String>,
    pub counters: Counters,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.opts.base_url)
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What one try gave: an answer, a failure worth retrying (with the server's wait), or one
/// that is final.
enum Try {
    Done(String),
    Again(Error, Option<Duration>),
    Fail(Error),
}

impl Client {
    /// A client for `opts`, with the key from `OPENAI_API_KEY` when set.
    pub fn new(opts: ClientOptions) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .http_status_as_error(false)
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            key: std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            opts,
            counters: Counters::default(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.opts.base_url
    }

    /// POSTs `body` to `{base_url}{path}` and parses the answer, retrying as the module says.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = format!("{}{path}", self.opts.base_url);
        self.call(&url, Some(body))
    }

    /// GETs `{base_url}{path}`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.opts.base_url);
        self.call::<(), T>(&url, None)
    }

    /// The served models (`/v1/models`).
    pub fn models(&self) -> Result<ModelList> {
        self.get("/models")
    }

    /// vLLM's `/tokenize` (at the server's root, beside `/v1`), without special tokens.
    pub fn tokenize(&self, model: &str, text: &str) -> Result<Vec<u32>> {
        self.tokenize_with(model, text, false)
    }

    /// `/tokenize` with `add_special_tokens` as given (true: BOS where the tokenizer's
    /// config adds one, as a text prompt gets it).
    pub fn tokenize_with(
        &self,
        model: &str,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>> {
        let root = self
            .opts
            .base_url
            .strip_suffix("/v1")
            .unwrap_or(&self.opts.base_url);
        let url = format!("{root}/tokenize");
        let req = TokenizeRequest {
            model: Some(model.to_string()),
            prompt: text.to_string(),
            add_special_tokens,
        };
        let r: TokenizeResponse = self.call(&url, Some(&req)).map_err(|e| match e {
            Error::Status { status: 404, .. } => Error::Protocol {
                url: url.clone(),
                msg: "the server has no /tokenize endpoint; log-likelihoods over the API need it to split context and continuation into tokens exactly (vLLM and sightline serve have it)".into(),
            },
            e => e,
        })?;
        Ok(r.tokens)
    }

    /// Adds a response's `usage` to the counters.
    pub fn count(&self, usage: Option<&Usage>) {
        if let Some(u) = usage {
            self.counters
                .prompt_tokens
                .fetch_add(u.prompt_tokens, Ordering::Relaxed);
            self.counters
                .completion_tokens
                .fetch_add(u.completion_tokens, Ordering::Relaxed);
        }
    }

    fn call<B: Serialize, T: DeserializeOwned>(&self, url: &str, body: Option<&B>) -> Result<T> {
        let payload = body
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Error::Request(e.to_string()))?;
        let mut attempt = 0u32;
        loop {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            match self.try_once(url, payload.as_deref()) {
                Try::Done(text) => {
                    return serde_json::from_str(&text).map_err(|e| Error::Protocol {
                        url: url.to_string(),
                        msg: format!("{e}: {}", clip(&text)),
                    })
                }
                Try::Fail(e) => return Err(e),
                Try::Again(e, _) if attempt >= self.opts.max_retries => return Err(e),
                // The server's Retry-After, else exponential backoff; capped either way.
                Try::Again(_, wait) => {
                    let backoff = self.opts.backoff.saturating_mul(1 << attempt.min(16));
                    std::thread::sleep(wait.unwrap_or(backoff).min(self.opts.max_backoff));
                }
            }
            attempt += 1;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn try_once(&self, url: &str, payload: Option<&str>) -> Try {
        let sent = match payload {
            Some(p) => {
                let mut r = self
                    .agent
                    .post(url)
                    .header("Content-Type", "application/json");
                if let Some(k) = &self.key {
                    r = r.header("Authorization", &format!("Bearer {k}"));
                }
                r.send(p)
            }
            None => {
                let mut r = self.agent.get(url);
                if let Some(k) = &self.key {
                    r = r.header("Authorization", &format!("Bearer {k}"));
                }
                r.call()
            }
        };
        let transport = |e: ureq::Error| Error::Transport {
            url: url.to_string(),
            msg: e.to_string(),
        };
        let resp = match sent {
            Ok(r) => r,
            // Connection refused or reset, timeouts: worth another try.
            Err(e) => return Try::Again(transport(e), None),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let mut body = resp.into_body();
        let text = match body.with_config().limit(256 << 20).read_to_string() {
            Ok(t) => t,
            Err(e) => return Try::Again(transport(e), None),
        };
        if (200..300).contains(&status) {
            return Try::Done(text);
        }
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| clip(&text));
        let err = Error::Status {
            url: url.to_string(),
            status,
            msg,
        };
        if status == 429 || status >= 500 {
            Try::Again(err, retry_after)
        } else {
            Try::Fail(err)
        }
    }
}

/// The first 300 characters of a body, for error messages.
fn clip(text: &str) -> String {
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}
