//! Generation for both endpoints: one job on the engine, answered whole or streamed as
//! server-sent events (`data: {chunk}` lines, then `data: [DONE]`).
//!
//! A streamed delta is text that can no longer change: the tokens so far are decoded, cut at
//! the first stop string, and a tail that could still grow into a stop string (or is an
//! incomplete UTF-8 character) is held back. The concatenated deltas equal the non-streamed
//! text.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sightline_model::generate::{first_stop, GenerateOptions, Generation};
use sightline_model::Tokenizer;
use sightline_vision::batch_generate::Decoding;
use sightline_vision::RgbImage;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::{ApiError, AppState};
use crate::engine::Job;

/// One event of a stream, shaped into the endpoint's chunk by a [`ChunkFn`].
pub(crate) enum Piece<'a> {
    Start,
    Text(&'a str),
    Finish(&'static str),
}

/// Builds an endpoint's chunk object; `None` sends nothing for that piece.
pub(crate) type ChunkFn = Arc<dyn Fn(Piece<'_>) -> Option<Value> + Send + Sync>;

/// One generation for the engine: from token ids, or about images (a LLaVA model).
pub(crate) enum Work {
    Text {
        prompt: Vec<u32>,
        opts: GenerateOptions,
    },
    /// `prompt` holds one `<image>` per image; the text is cut at the first of `decoding.stop`.
    Image {
        prompt: String,
        images: Vec<RgbImage>,
        decoding: Decoding,
        seed: u64,
    },
}

impl Work {
    fn stops(&self) -> Vec<String> {
        match self {
            Work::Text { opts, .. } => opts.stop.clone(),
            Work::Image { decoding, .. } => decoding.stop.clone(),
        }
    }

    /// Queues the work; `steps` (text only) receives the tokens so far after each step.
    async fn submit(
        self,
        state: &AppState,
        steps: Option<mpsc::UnboundedSender<Vec<u32>>>,
    ) -> Result<oneshot::Receiver<crate::error::Result<Generation>>, ApiError> {
        let (reply, rx) = oneshot::channel();
        match self {
            Work::Text { prompt, opts } => {
                state
                    .engine
                    .submit(Job::Generate {
                        prompt,
                        opts,
                        steps,
                        reply,
                    })
                    .await
                    .map_err(ApiError::internal)?;
            }
            Work::Image {
                prompt,
                images,
                decoding,
                seed,
            } => {
                let (image_reply, image_rx) = oneshot::channel();
                let stops = decoding.stop.clone();
                state
                    .engine
                    .submit(Job::Image {
                        prompt,
                        images,
                        decoding,
                        seed,
                        reply: image_reply,
                    })
                    .await
                    .map_err(ApiError::internal)?;
                // The batched LLaVA decoder keeps the stop string in its text (SBT scores it
                // that way); the API cuts it, as OpenAI's servers do.
                tokio::spawn(async move {
                    let out = match image_rx.await {
                        Ok(r) => r.map(|o| {
                            let mut text = o.text;
                            if let Some(cut) = first_stop(&text, &stops) {
                                text.truncate(cut);
                            }
                            Generation {
                                text,
                                tokens: o.tokens,
                            }
                        }),
                        Err(_) => Err(crate::error::Error::EngineStopped),
                    };
                    let _ = reply.send(out);
                });
            }
        }
        Ok(rx)
    }
}

/// Runs one generation to the end.
pub(crate) async fn generate(state: &AppState, work: Work) -> Result<Generation, ApiError> {
    let rx = work.submit(state, None).await?;
    rx.await
        .map_err(|_| ApiError::internal("the model worker dropped the request"))?
        .map_err(|e| match e {
            crate::error::Error::Refused(m) => ApiError::bad("messages", m),
            e => ApiError::internal(e),
        })
}

/// `stop` when a stop string or EOS ended the text, else `length`.
pub(crate) fn finish_reason(tok: &Tokenizer, gen: &Generation) -> &'static str {
    let full = tok.decode(&gen.tokens, true).unwrap_or_default();
    if full.len() > gen.text.len()
        || (gen.tokens.last().is_some() && gen.tokens.last() == tok.eos_id.as_ref())
    {
        "stop"
    } else {
        "length"
    }
}

/// The part of the text after `tokens` that no later token can change.
fn settled(tok: &Tokenizer, tokens: &[u32], stops: &[String]) -> String {
    let mut text = tok.decode(tokens, true).unwrap_or_default();
    if let Some(cut) = first_stop(&text, stops) {
        text.truncate(cut);
        return text;
    }
    let trimmed = text.trim_end_matches('\u{fffd}').len();
    text.truncate(trimmed);
    let hold = stops
        .iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| {
            (1..s.len())
                .filter(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k]))
                .max()
        })
        .max()
        .unwrap_or(0);
    text.truncate(text.len() - hold);
    text
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Starts the generation and answers with its event stream; the slot `permit` is held until
/// the stream ends, and a client that goes away stops a text generation. An image generation
/// runs in a batch and reports no steps, so its text arrives as one delta at the end.
pub(crate) async fn stream(
    state: &AppState,
    permit: OwnedSemaphorePermit,
    work: Work,
    chunk: ChunkFn,
) -> Result<Response, ApiError> {
    let (steps_tx, mut steps) = mpsc::unbounded_channel();
    let stops = work.stops();
    let done = work.submit(state, Some(steps_tx)).await?;
    let tok = state.engine.facts.tokenizer.clone();
    let (out, body_rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let mut sent = String::new();
        let send = |v: Option<Value>| {
            let out = out.clone();
            async move {
                match v {
                    Some(v) => out.send(event(&v)).await.is_ok(),
                    None => true,
                }
            }
        };
        if !send(chunk(Piece::Start)).await {
            return;
        }
        while let Some(tokens) = steps.recv().await {
            let now = settled(&tok, &tokens, &stops);
            if now.len() > sent.len() && now.starts_with(sent.as_str()) {
                let delta = now[sent.len()..].to_string();
                sent = now;
                if !send(chunk(Piece::Text(&delta))).await {
                    return;
                }
            }
        }
        let last = match done.await {
            Ok(Ok(gen)) => {
                let rest = gen.text.strip_prefix(sent.as_str()).unwrap_or("");
                if !rest.is_empty() && !send(chunk(Piece::Text(rest))).await {
                    return;
                }
                chunk(Piece::Finish(finish_reason(&tok, &gen)))
            }
            Ok(Err(e)) => Some(
                serde_json::json!({"error": {"message": e.to_string(), "type": "server_error", "param": null, "code": null}}),
            ),
            Err(_) => None,
        };
        if send(last).await {
            let _ = out.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
    });
    let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_possible_stop_prefix_is_held_back() {
        let tok = sightline_model::load("builtin:stories260k", &Default::default())
            .unwrap()
            .tokenizer;
        let ids = tok.encode("Once upon a time").unwrap();
        let stops = vec![" time".to_string()];
        // Before " time" completes the tail " t" / " ti" is held back; after, the text is cut.
        let all = settled(&tok, &ids, &stops);
        assert_eq!(all, "Once upon a");
        let none: Vec<String> = Vec::new();
        assert_eq!(settled(&tok, &ids, &none), tok.decode(&ids, true).unwrap());
        let partial = settled(&tok, &ids, &["a timex".to_string()]);
        assert_eq!(partial, "Once upon ");
    }
}
