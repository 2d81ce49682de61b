//! `POST /v1/completions`, vLLM's shape of OpenAI's legacy endpoint: prompts as text (BOS
//! added as the tokenizer's config says, as `tokenizer(text)` does) or as token ids (used as
//! given: what a log-likelihood client sends), `echo` + `logprobs` for the prompt's own
//! log-probabilities, and `max_tokens: 0` for scoring without generating.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sightline_model::generate::{GenerateOptions, Generation};
use sightline_model::Tokenizer;
use tokio::sync::oneshot;

use super::stream::{self, ChunkFn, Piece, Work};
use super::{admit_and_parse, json_ok, now, ApiError, AppState, Sampling};
use crate::engine::{Job, PromptLogprobs};
use crate::wire::{
    CompletionChoice, CompletionRequest, CompletionResponse, Logprobs, Prompt, Usage,
};

/// Most prompts in one request.
const MAX_PROMPTS: usize = 256;
/// Most alternatives per position (vLLM's limit).
const MAX_LOGPROBS: usize = 20;

pub(super) async fn handle(State(s): State<AppState>, body: Body) -> Response {
    match run(&s, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(s: &AppState, body: Body) -> Result<Response, ApiError> {
    let (permit, req): (_, CompletionRequest) = admit_and_parse(s, body).await?;
    s.check_model(&req.model)?;
    let sampling = Sampling::check(req.temperature, req.top_p, req.seed, req.n)?;
    let facts = &s.engine.facts;
    let prompts = prompt_ids(req.prompt.clone(), &facts.tokenizer, facts.vocab_size)?;
    let max_tokens = req.max_tokens.unwrap_or(16);
    if let Some(k) = req.logprobs.filter(|&k| k > MAX_LOGPROBS) {
        return Err(ApiError::bad(
            "logprobs",
            format!("logprobs is at most {MAX_LOGPROBS}, got {k}"),
        ));
    }
    check_lengths(&prompts, max_tokens, req.echo, facts.max_position)?;
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        stop: req.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        seed: sampling.seed,
        ..Default::default()
    };
    if req.stream {
        if prompts.len() != 1 || req.echo || req.logprobs.is_some() || max_tokens == 0 {
            return Err(ApiError::bad(
                "stream",
                "streaming takes one prompt, max_tokens > 0, and no echo or logprobs",
            ));
        }
        let prompt = prompts.into_iter().next().unwrap_or_default();
        return stream::stream(
            s,
            permit,
            Work::Text { prompt, opts },
            chunks(req.model.clone()),
        )
        .await;
    }
    answer(s, &req, &prompts, &opts).await
}

/// Refuses prompts that do not fit the context (scoring alone may use one position more: the
/// last token is only a target) and a request that asks for nothing.
fn check_lengths(
    prompts: &[Vec<u32>],
    max_tokens: usize,
    echo: bool,
    max_position: usize,
) -> Result<(), ApiError> {
    let limit = if max_tokens == 0 {
        max_position + 1
    } else {
        max_position
    };
    if let Some(p) = prompts
        .iter()
        .find(|p| p.len() + usize::from(max_tokens > 0) > limit)
    {
        return Err(ApiError::bad(
            "prompt",
            format!(
                "a prompt of {} tokens does not fit the model's {max_position} positions",
                p.len()
            ),
        )
        .code("context_length_exceeded"));
    }
    if max_tokens == 0 && !echo {
        return Err(ApiError::bad(
            "max_tokens",
            "max_tokens = 0 returns nothing without echo",
        ));
    }
    Ok(())
}

/// The `text_completion` chunks of a streamed completion.
fn chunks(model: String) -> ChunkFn {
    let (id, created) = (format!("cmpl-{}", now()), now());
    std::sync::Arc::new(move |p: Piece<'_>| {
        let (text, finish) = match p {
            Piece::Start => return None,
            Piece::Text(t) => (t, Value::Null),
            Piece::Finish(f) => ("", json!(f)),
        };
        Some(
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]}),
        )
    })
}

/// Generates (when `max_tokens` > 0) and scores (with `logprobs`) every prompt, and shapes
/// the answer.
async fn answer(
    s: &AppState,
    req: &CompletionRequest,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Response, ApiError> {
    let max_tokens = opts.max_new_tokens;
    // All of a request's prompts are queued at once, so the worker can batch them.
    let gens: Vec<Option<Generation>> = if max_tokens > 0 {
        futures_util::future::try_join_all(prompts.iter().map(|p| {
            stream::generate(
                s,
                Work::Text {
                    prompt: p.clone(),
                    opts: opts.clone(),
                },
            )
        }))
        .await?
        .into_iter()
        .map(Some)
        .collect()
    } else {
        vec![None; prompts.len()]
    };
    let scored = match req.logprobs {
        Some(k) => Some(score(s, prompts, &gens, k).await?),
        None => None,
    };
    let tok = &s.engine.facts.tokenizer;
    let mut usage = Usage::default();
    let mut choices = Vec::with_capacity(prompts.len());
    for (i, (p, g)) in prompts.iter().zip(&gens).enumerate() {
        usage.prompt_tokens += p.len() as u64;
        usage.completion_tokens += g.as_ref().map_or(0, |g| g.tokens.len()) as u64;
        let echo_text = if req.echo {
            decode(tok, p, false)
        } else {
            String::new()
        };
        let text = format!("{echo_text}{}", g.as_ref().map_or("", |g| g.text.as_str()));
        let logprobs = scored
            .as_ref()
            .map(|sc| logprobs_of(tok, p, g.as_ref(), &sc[i], req.echo, &echo_text));
        choices.push(CompletionChoice {
            index: i,
            text,
            logprobs,
            finish_reason: Some(
                g.as_ref()
                    .map_or("length", |g| stream::finish_reason(tok, g))
                    .into(),
            ),
        });
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(json_ok(&CompletionResponse {
        id: format!("cmpl-{}", now()),
        object: "text_completion".into(),
        created: now(),
        model: req.model.clone(),
        choices,
        usage: Some(usage),
    }))
}

/// Every prompt as token ids, checked against the vocabulary.
fn prompt_ids(
    prompt: Option<Prompt>,
    tok: &Tokenizer,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |t: &str| {
        tok.encode_prompt(t)
            .map_err(|e| ApiError::bad("prompt", e.to_string()))
    };
    let prompts = match prompt {
        None => return Err(ApiError::bad("prompt", "prompt is required")),
        Some(Prompt::Text(t)) => vec![encode(&t)?],
        Some(Prompt::Texts(ts)) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        Some(Prompt::Tokens(ids)) => vec![ids],
        Some(Prompt::TokenLists(l)) => l,
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::bad(
            "prompt",
            format!("between 1 and {MAX_PROMPTS} prompts per request"),
        ));
    }
    for p in &prompts {
        if p.is_empty() {
            return Err(ApiError::bad("prompt", "a prompt has no tokens"));
        }
        if let Some(&bad) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::bad(
                "prompt",
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
    }
    Ok(prompts)
}

/// Log-probabilities of each prompt followed by its generated tokens.
async fn score(
    s: &AppState,
    prompts: &[Vec<u32>],
    gens: &[Option<Generation>],
    top: usize,
) -> Result<Vec<PromptLogprobs>, ApiError> {
    let seqs: Vec<Vec<u32>> = prompts
        .iter()
        .zip(gens)
        .map(|(p, g)| {
            p.iter()
                .chain(g.iter().flat_map(|g| &g.tokens))
                .copied()
                .collect()
        })
        .collect();
    let (reply, rx) = oneshot::channel();
    s.engine
        .submit(Job::Score {
            prompts: seqs,
            top,
            reply,
        })
        .await
        .map_err(ApiError::internal)?;
    rx.await
        .map_err(|_| ApiError::internal("the model worker dropped the request"))?
        .map_err(ApiError::internal)
}

fn decode(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    tok.decode(ids, skip_special).unwrap_or_default()
}

/// The `logprobs` object: prompt tokens (with `echo`; the first has no log-probability) then
/// generated tokens; offsets are characters into the choice's text.
fn logprobs_of(
    tok: &Tokenizer,
    prompt: &[u32],
    gen: Option<&Generation>,
    scored: &PromptLogprobs,
    echo: bool,
    echo_text: &str,
) -> Logprobs {
    let mut out = Logprobs::default();
    let top_map = |t: &crate::engine::TokenLogprob| {
        let mut m = Map::new();
        for &(id, lp) in &t.top {
            m.entry(token_str(tok, id)).or_insert(json!(lp));
        }
        m
    };
    if echo {
        let mut last = 0;
        for (i, &id) in prompt.iter().enumerate() {
            out.tokens.push(token_str(tok, id));
            let off = decode(tok, &prompt[..i], false).chars().count().max(last);
            out.text_offset.push(off);
            last = off;
            let lp = i.checked_sub(1).and_then(|j| scored.get(j));
            out.token_logprobs.push(lp.map(|t| t.logprob));
            out.top_logprobs.push(lp.map(top_map));
        }
    }
    if let Some(g) = gen {
        let base = echo_text.chars().count();
        let mut last = base;
        for (j, &id) in g.tokens.iter().enumerate() {
            out.tokens.push(token_str(tok, id));
            let off = (base + decode(tok, &g.tokens[..j], true).chars().count()).max(last);
            out.text_offset.push(off);
            last = off;
            let lp = scored.get(prompt.len() - 1 + j);
            out.token_logprobs.push(lp.map(|t| t.logprob));
            out.top_logprobs.push(lp.map(top_map));
        }
    }
    out
}

/// A token's string as the vocabulary spells it (`▁the`, `<0x0A>`).
fn token_str(tok: &Tokenizer, id: u32) -> String {
    tok.id_to_token(id).unwrap_or_else(|| format!("<{id}>"))
}
