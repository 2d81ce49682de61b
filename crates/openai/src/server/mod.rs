//! `sightline serve`: the HTTP layer over [`crate::engine`]. It only parses, checks and
//! shapes JSON; every model call goes through the engine's queue.
//!
//! Limits: request bodies over `max_body_bytes` get 413 (the rest of such a body, up to
//! [`DRAIN_BYTES`] more, is read and dropped first, so that the client gets to read the 413
//! rather than a reset connection); more than `max_concurrency` requests in flight get 429
//! with `Retry-After: 1` (a streaming request holds its slot until its last event); every
//! refusal is OpenAI's error JSON with a 4xx status.

mod chat;
mod completions;
mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::Engine;
use crate::error::Result;
use crate::wire::{
    ErrorBody, ErrorObject, ModelCard, ModelList, TokenizeRequest, TokenizeResponse,
};

/// How the server presents the model and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model id clients name (`model` in requests, `/v1/models`).
    pub name: String,
    /// The conversation template of `/v1/chat/completions` (a LLaVA `--conv-mode` name).
    pub conv_mode: String,
    pub max_body_bytes: usize,
    pub max_concurrency: usize,
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    engine: Engine,
    opts: Arc<ServeOptions>,
    permits: Arc<Semaphore>,
    created: u64,
}

/// The router with its limits; `serve` runs it.
pub fn router(engine: Engine, opts: ServeOptions) -> Router {
    let state = AppState {
        engine,
        permits: Arc::new(Semaphore::new(opts.max_concurrency.max(1))),
        created: now(),
        opts: Arc::new(opts.clone()),
    };
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/tokenize", post(tokenize))
        .route("/health", get(|| async { "ok" }))
        .fallback(|State(s): State<AppState>, body: Body| async move {
            drain(&s, body).await;
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").code("not_found")
        })
        .method_not_allowed_fallback(|State(s): State<AppState>, body: Body| async move {
            drain(&s, body).await;
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        // The limit is enforced while reading (`read_body`), which drains what it refuses.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Engine,
    opts: ServeOptions,
) -> Result<()> {
    axum::serve(listener, router(engine, opts)).await?;
    Ok(())
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An OpenAI-style error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorObject,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        Self {
            status,
            body: ErrorObject {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: None,
            },
            retry_after: None,
        }
    }

    /// 400 about one request field.
    pub(crate) fn bad(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, message);
        e.body.param = Some(param.into());
        e
    }

    pub(crate) fn code(mut self, code: &str) -> Self {
        self.body.code = Some(code.into());
        self
    }

    /// 500 for a failure of the model on a request that passed the checks.
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&ErrorBody { error: self.body }).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.into()
        });
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// A JSON answer with status 200.
pub(crate) fn json_ok(value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

impl AppState {
    /// A slot among `max_concurrency`, or 429.
    pub(crate) fn admit(&self) -> std::result::Result<OwnedSemaphorePermit, ApiError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the server is busy ({} requests in flight); retry later",
                    self.opts.max_concurrency
                ),
            )
            .code("rate_limit_exceeded");
            e.retry_after = Some(1);
            e
        })
    }

    /// 404 unless `model` is the served model's name.
    pub(crate) fn check_model(&self, model: &str) -> std::result::Result<(), ApiError> {
        if model == self.opts.name {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "the model `{model}` does not exist (this server has `{}`)",
                    self.opts.name
                ),
            )
            .code("model_not_found"))
        }
    }
}

/// How much of an oversized body is read and dropped before answering 413. Past that the
/// connection is closed unread (the client may then see a reset instead of the 413).
pub const DRAIN_BYTES: usize = 16 << 20;

/// Reads and drops a body the answer does not need: a connection closed with unread request
/// bytes is reset, and the client loses the answer (and a pooled connection) with it.
async fn drain(s: &AppState, body: Body) {
    let _ = read_body(s, body, false).await;
}

/// A slot and the parsed body, or the refusal (429 after draining the body, 413, 400).
pub(crate) async fn admit_and_parse<T: DeserializeOwned>(
    s: &AppState,
    body: Body,
) -> std::result::Result<(OwnedSemaphorePermit, T), ApiError> {
    match s.admit() {
        Ok(permit) => Ok((permit, parse_body(s, body).await?)),
        Err(e) => {
            drain(s, body).await;
            Err(e)
        }
    }
}

/// The body's bytes (kept only with `keep`), or 413 once more than the limit arrived. Memory
/// stays within the limit: the part of a body past it is dropped as it arrives.
async fn read_body(s: &AppState, body: Body, keep: bool) -> std::result::Result<Vec<u8>, ApiError> {
    let limit = s.opts.max_body_bytes;
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            if keep {
                buf.extend_from_slice(&chunk);
            }
        } else if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
        .code("request_too_large"));
    }
    Ok(buf)
}

/// The body as `T`, or 413 (too large) / 400 (not JSON of that shape).
pub(crate) async fn parse_body<T: DeserializeOwned>(
    s: &AppState,
    body: Body,
) -> std::result::Result<T, ApiError> {
    let buf = read_body(s, body, true).await?;
    serde_json::from_slice(&buf).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not a valid request: {e}"),
        )
        .code("invalid_json")
    })
}

async fn models(State(s): State<AppState>) -> Response {
    json_ok(&ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: s.opts.name.clone(),
            object: "model".into(),
            created: s.created,
            owned_by: "sightline".into(),
            max_model_len: Some(s.engine.facts.max_position),
        }],
    })
}

/// vLLM's `/tokenize`: the served tokenizer's ids for a text (what the log-likelihood client
/// needs to split context and continuation exactly as in-process scoring does).
async fn tokenize(State(s): State<AppState>, body: Body) -> Response {
    let run = async || -> std::result::Result<Response, ApiError> {
        let (_permit, req): (_, TokenizeRequest) = admit_and_parse(&s, body).await?;
        if let Some(m) = &req.model {
            s.check_model(m)?;
        }
        let tok = &s.engine.facts.tokenizer;
        let ids = if req.add_special_tokens {
            tok.encode_prompt(&req.prompt)
        } else {
            tok.encode(&req.prompt)
        }
        .map_err(|e| ApiError::bad("prompt", e.to_string()))?;
        Ok(json_ok(&TokenizeResponse {
            count: ids.len(),
            tokens: ids,
            max_model_len: s.engine.facts.max_position,
        }))
    };
    run().await.unwrap_or_else(IntoResponse::into_response)
}

/// Sampling settings shared by both generation endpoints, checked.
pub(crate) struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    /// Greedy unless a temperature is given (OpenAI defaults to 1; a server for evaluation
    /// defaults to the deterministic choice).
    pub(crate) fn check(
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        n: Option<usize>,
    ) -> std::result::Result<Self, ApiError> {
        let temperature = temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        let top_p = top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad("top_p", "top_p must be in (0, 1]"));
        }
        if n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad("n", "only n = 1 is supported"));
        }
        Ok(Self {
            temperature,
            top_p,
            seed: seed.unwrap_or(1234),
        })
    }
}
