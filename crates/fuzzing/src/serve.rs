//! HTTP request bodies of `sightline serve`, sent through its router in-process (no sockets)
//! to the built-in model.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use serde_json::Value;
use sightline_openai::engine::{Engine, Served};
use sightline_openai::server::{router, ServeOptions};
use tower::ServiceExt;

/// The most bytes of an answer that are read (streams included); answers of the built-in
/// model are far smaller.
const ANSWER_CAP: usize = 64 << 20;

/// The most tokens a request may generate here. Without `max_tokens` a chat answer runs to the
/// end of the context (512 positions for the built-in model), as the API promises; that took
/// over libFuzzer's 1 s per input on the busy campaign machine without being a hang. The fuzz
/// build is far slower than a release build (coverage instrumentation, debug assertions): a
/// completion of 2 prompts × 16 tokens took 0.5 to 0.7 s there, and over 1 s beside three other
/// fuzzers, so both are bounded.
const MAX_TOKENS: u64 = 4;

/// The most prompts of one completions request that are sent.
const MAX_PROMPTS: usize = 2;

/// The body with `max_tokens` and `max_completion_tokens` set to at most [`MAX_TOKENS`], and a
/// list of prompts cut to [`MAX_PROMPTS`], when it is a JSON object (re-serialised); any other
/// body is sent as it is. The work of one request then stays bounded; what the server makes of
/// the fields is unchanged. A body whose invalid UTF-8 sits in a field the server ignores
/// (serde skips an ignored string's bytes without checking them, so the server takes it and,
/// uncapped, generated to the end of the context: 2 s in the fuzz build) is capped too, its
/// invalid bytes replaced by U+FFFD.
fn bounded(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(&text) else {
        return body.to_vec();
    };
    // A list of strings or of token lists is several prompts; a list of numbers is one.
    if let Some(Value::Array(prompts)) = o.get_mut("prompt") {
        if prompts.first().is_some_and(|p| !p.is_number()) {
            prompts.truncate(MAX_PROMPTS);
        }
    }
    for key in ["max_tokens", "max_completion_tokens"] {
        let n = o
            .get(key)
            .and_then(Value::as_u64)
            .map_or(MAX_TOKENS, |n| n.min(MAX_TOKENS));
        o.insert(key.into(), n.into());
    }
    serde_json::to_vec(&o).unwrap_or_else(|_| body.to_vec())
}

/// The server: a current-thread runtime and the router over an engine on
/// `builtin:stories260k`, started once per process as `sightline serve` starts them.
fn server() -> &'static (tokio::runtime::Runtime, Router) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime");
        let loaded = sightline_model::load("builtin:stories260k", &Default::default())
            .expect("built-in model");
        let engine = Engine::start(Served::Text(Box::new(loaded)), 8, 64).expect("engine");
        let opts = ServeOptions {
            name: "tiny".into(),
            conv_mode: "v1".into(),
            max_body_bytes: 1 << 20,
            max_concurrency: 4,
        };
        (rt, router(engine, opts))
    })
}

/// `PATH` newline `BODY`: a POST of BODY to PATH (`/v1/completions`, `/v1/chat/completions`,
/// `/tokenize`, or anything else, which must be refused), with generation [`bounded`], its
/// answer read to the end (a stream's last event included). Every bad request must be answered with a 4xx error, so a
/// 5xx answer is a failure here, like a panic.
pub fn serve(data: &[u8]) {
    let (path, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(req) = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bounded(body)))
    else {
        return;
    };
    let (rt, app) = server();
    let (status, answer) = rt.block_on(async {
        let resp = app
            .clone()
            .oneshot(req)
            .await
            .expect("the router's error type is Infallible");
        let status = resp.status();
        (
            status,
            axum::body::to_bytes(resp.into_body(), ANSWER_CAP).await,
        )
    });
    assert!(
        !status.is_server_error(),
        "{path}: answered {status}: {}",
        String::from_utf8_lossy(&answer.unwrap_or_default())
    );
}
