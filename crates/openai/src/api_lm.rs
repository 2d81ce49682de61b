//! `--model openai-completions:NAME` and `--model openai-chat:NAME`: the evaluator's
//! [`LanguageModel`] over an OpenAI-compatible endpoint.
//!
//! Log-likelihoods (completions only) follow lm-eval's `local-completions`: the prompt is
//! context + continuation with `echo`, `max_tokens: 0`, `logprobs: 1`; the continuation's
//! token log-probabilities are summed, and it is greedy when each equals the best
//! alternative's. The prompt goes as **token ids**, split with the server's own tokenizer
//! (vLLM's `/tokenize`) by in-process scoring's rule ([`split_pair`]): a text prompt would be
//! tokenized whole by the server, with BOS added, and where the context's tokens end would be
//! a guess from character offsets. With ids the server scores exactly the tokens
//! `sightline eval` scores locally.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};
use sightline_eval::lm::{fit_prompt_with, DoneSink, ImageGen, LanguageModel, TextSink, WorkUnit};
use sightline_eval::mm::{image_bytes, load_image};
use sightline_eval::mm_lm::ImageCorruption;
use sightline_eval::protocol::chat_turns;
use sightline_eval::Error as EvalError;
use sightline_model::score::{split_pair, Scored};
use sightline_vision::conversation::ChatRole;
use sightline_vision::llava::IMAGE_PLACEHOLDER;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::wire::{
    ChatMessage, ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, Content,
    ContentPart, ImageUrl, Prompt, Stop,
};

/// Which endpoint the model is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    Completions,
    Chat,
}

impl ApiKind {
    /// `openai-completions:NAME` / `openai-chat:NAME` → the kind and NAME.
    pub fn parse(spec: &str) -> Option<(Self, &str)> {
        if let Some(n) = spec.strip_prefix("openai-completions:") {
            Some((Self::Completions, n))
        } else {
            spec.strip_prefix("openai-chat:").map(|n| (Self::Chat, n))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Completions => "openai-completions",
            Self::Chat => "openai-chat",
        }
    }
}

/// An API model for the evaluator.
pub struct ApiLm {
    pub kind: ApiKind,
    pub model: String,
    pub client: Client,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Prompts per completions request (log-likelihoods).
    pub batch: usize,
    /// Left-truncation length, as in-process scoring's `max_length` (the server's
    /// `max_model_len` when not given).
    pub max_length: Option<usize>,
    /// lm-eval's `max_gen_toks`.
    pub max_gen_toks: usize,
    /// Image tasks: applied to every image before it is sent (`--corrupt`), which then goes
    /// as a PNG of the corrupted 224×224 crop.
    pub corruption: Option<ImageCorruption>,
    /// Tokenizations already asked for (contexts repeat across a document's choices).
    tokens: Mutex<HashMap<String, Vec<u32>>>,
}

fn eval_err(e: Error) -> EvalError {
    EvalError::Config(e.to_string())
}

impl ApiLm {
    /// A model on `client`; asks `/v1/models` for the context length when `max_length` is
    /// `None` and the server reports one.
    pub fn new(
        kind: ApiKind,
        model: &str,
        client: Client,
        concurrency: usize,
        batch: usize,
        max_length: Option<usize>,
    ) -> Result<Self> {
        let max_length = match max_length {
            Some(m) => Some(m),
            None => client
                .models()?
                .data
                .iter()
                .find(|m| m.id == model)
                .and_then(|m| m.max_model_len),
        };
        Ok(Self {
            kind,
            model: model.to_string(),
            client,
            concurrency: concurrency.max(1),
            batch: batch.max(1),
            max_length,
            max_gen_toks: 256,
            corruption: None,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(t) = self.tokens.lock().ok().and_then(|m| m.get(text).cloned()) {
            return Ok(t);
        }
        let t = self.client.tokenize(&self.model, text)?;
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(text.to_string(), t.clone());
        }
        Ok(t)
    }

    /// The prompt ids of one request and how many of them (at the end) are the continuation.
    fn encode(&self, context: &str, continuation: &str) -> Result<(Vec<u32>, usize)> {
        if context.is_empty() {
            return Err(Error::Request(
                "an empty context needs the model's EOS token id, which the API does not give; not supported over the API".into(),
            ));
        }
        let (ctx, cont) = split_pair(context, continuation, |t| self.tokenize(t))?;
        if ctx.is_empty() || cont.is_empty() {
            return Err(Error::Request(format!(
                "request {context:?} + {continuation:?}: the continuation encodes to no tokens of its own"
            )));
        }
        let n = cont.len();
        let mut seq = ctx;
        seq.extend(cont);
        if let Some(m) = self.max_length {
            if n > m {
                return Err(Error::Request(format!(
                    "continuation of {n} tokens is longer than max_length {m}"
                )));
            }
            // In-process scoring keeps the last max_length + 1 tokens (the last one is only a
            // target).
            if seq.len() > m + 1 {
                seq.drain(..seq.len() - (m + 1));
            }
        }
        Ok((seq, n))
    }

    /// Scores one batch of requests: `(request index, ids, continuation length)`.
    fn score_batch(&self, batch: &[(usize, Vec<u32>, usize)]) -> Result<Vec<(usize, Scored)>> {
        let req = CompletionRequest {
            model: self.model.clone(),
            prompt: Some(Prompt::TokenLists(
                batch.iter().map(|(_, p, _)| p.clone()).collect(),
            )),
            max_tokens: Some(0),
            temperature: Some(0.0),
            echo: true,
            logprobs: Some(1),
            ..Default::default()
        };
        let resp: CompletionResponse = self.client.post("/completions", &req)?;
        self.client.count(resp.usage.as_ref());
        let url = format!("{}/completions", self.client.base_url());
        let bad = |msg: String| Error::Protocol {
            url: url.clone(),
            msg,
        };
        let mut out = Vec::with_capacity(batch.len());
        for (k, (i, prompt, n)) in batch.iter().enumerate() {
            let choice = resp
                .choices
                .iter()
                .find(|c| c.index == k)
                .ok_or_else(|| bad(format!("no choice {k} for {} prompts", batch.len())))?;
            let lp = choice.logprobs.as_ref().ok_or_else(|| {
                bad("no logprobs in the answer: this endpoint does not support echo + logprobs, so it cannot score log-likelihoods".into())
            })?;
            if lp.token_logprobs.len() < prompt.len() {
                return Err(bad(format!(
                    "{} prompt log-probabilities for a prompt of {} tokens (echo not supported?)",
                    lp.token_logprobs.len(),
                    prompt.len()
                )));
            }
            let mut scored = Scored {
                logprob: 0.0,
                is_greedy: true,
            };
            for pos in prompt.len() - n..prompt.len() {
                let l = lp.token_logprobs[pos]
                    .ok_or_else(|| bad(format!("no log-probability for prompt token {pos}")))?;
                scored.logprob += l;
                let best = lp
                    .top_logprobs
                    .get(pos)
                    .and_then(Option::as_ref)
                    .and_then(|m| m.values().filter_map(Value::as_f64).reduce(f64::max))
                    .ok_or_else(|| bad(format!("no top_logprobs for prompt token {pos}")))?;
                scored.is_greedy &= l >= best;
            }
            out.push((*i, scored));
        }
        Ok(out)
    }

    /// Runs `work` items on `concurrency` threads, handing each result to `sink` on this
    /// thread; stops at the first error.
    fn run_parallel<W: Sync, R: Send>(
        &self,
        work: &[W],
        f: &(dyn Fn(&W) -> Result<R> + Sync),
        sink: &mut dyn FnMut(R) -> std::result::Result<(), EvalError>,
    ) -> std::result::Result<(), EvalError> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Result<R>>();
        std::thread::scope(|scope| {
            for _ in 0..self.concurrency.min(work.len()) {
                let tx = tx.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(w) = work.get(i) else { break };
                        if tx.send(f(w)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut first_err = None;
            for r in rx {
                if first_err.is_some() {
                    continue;
                }
                let done = r.map_err(eval_err).and_then(&mut *sink);
                if let Err(e) = done {
                    stop.store(true, Ordering::Relaxed);
                    first_err = Some(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }

    fn chat(&self, context: &str, until: &[String]) -> Result<String> {
        let req = ChatRequest {
            model: self.model.clone(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: Content::Text(context.to_string()),
            }],
            max_tokens: Some(self.max_gen_toks),
            temperature: Some(0.0),
            stop: (!until.is_empty()).then(|| Stop::Many(until.to_vec())),
            ..Default::default()
        };
        self.post_chat(&req, until)
    }

    /// Sends a chat request; the reply's text cut at the first of `stop`.
    fn post_chat(&self, req: &ChatRequest, stop: &[String]) -> Result<String> {
        let resp: ChatResponse = self.client.post("/chat/completions", req)?;
        self.client.count(resp.usage.as_ref());
        let text = resp
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        Ok(cut_at_stop(text, stop))
    }

    /// Greedy completion from the context's ids, left-truncated as in-process generation
    /// does (`max_length - max_gen_toks` tokens kept).
    fn complete(&self, context: &str, until: &[String]) -> Result<String> {
        let mut ids = self.tokenize(context)?;
        if let Some(m) = self.max_length {
            if m <= self.max_gen_toks {
                return Err(Error::Request(format!(
                    "max_length {m} leaves no room for a context before {} generated tokens",
                    self.max_gen_toks
                )));
            }
            let keep = m - self.max_gen_toks;
            if ids.len() > keep {
                ids.drain(..ids.len() - keep);
            }
        }
        let req = CompletionRequest {
            model: self.model.clone(),
            prompt: Some(Prompt::Tokens(ids)),
            max_tokens: Some(self.max_gen_toks),
            temperature: Some(0.0),
            stop: (!until.is_empty()).then(|| Stop::Many(until.to_vec())),
            ..Default::default()
        };
        let resp: CompletionResponse = self.client.post("/completions", &req)?;
        self.client.count(resp.usage.as_ref());
        let text = resp
            .choices
            .into_iter()
            .next()
            .map(|c| c.text)
            .unwrap_or_default();
        Ok(cut_at_stop(text, until))
    }
}

impl ApiLm {
    /// One image request as a chat: the `v0` prompt's turns ([`chat_turns`]), the image as a
    /// `data:` URL part where `<image>` stands, the request's decoding (`top_k` and
    /// `min_tokens` as vLLM's extensions, the per-record seed), and the answer cut at the
    /// first stop string.
    fn chat_image(&self, r: &ImageGen) -> Result<String> {
        let turns = chat_turns(&r.context).map_err(|e| Error::Request(e.to_string()))?;
        let url = self.image_url(&r.image)?;
        let mut messages = Vec::with_capacity(turns.len());
        for (role, text) in turns {
            let content = match text.split_once(IMAGE_PLACEHOLDER) {
                None => Content::Text(text),
                Some((before, after)) => Content::Parts(image_parts(before, after, &url).ok_or_else(|| {
                    Error::Request(format!(
                        "`{IMAGE_PLACEHOLDER}` must start or end its turn (with a newline between it and the text) to go as an image part: {text:?}"
                    ))
                })?),
            };
            let role = match role {
                ChatRole::System => "system",
                ChatRole::User => "user",
                ChatRole::Assistant => "assistant",
            };
            messages.push(ChatMessage {
                role: role.into(),
                content,
            });
        }
        let d = &r.decoding;
        let req = ChatRequest {
            model: self.model.clone(),
            messages,
            max_tokens: Some(d.max_new_tokens),
            temperature: Some(d.temperature),
            top_k: (d.temperature > 0.0 && d.top_k > 0).then_some(d.top_k),
            min_tokens: (d.min_new_tokens > 0).then_some(d.min_new_tokens),
            seed: (d.temperature > 0.0).then_some(d.seed),
            stop: (!d.stop.is_empty()).then(|| Stop::Many(d.stop.clone())),
            ..Default::default()
        };
        self.post_chat(&req, &d.stop)
    }

    /// The image as a `data:` URL: the file as stored, or with `--corrupt` a PNG of the
    /// corrupted crop (lossless, so the server sees the pixels a local run computes with).
    fn image_url(&self, image_ref: &str) -> Result<String> {
        let eval = |e: EvalError| Error::Request(e.to_string());
        let (bytes, mime) = match &self.corruption {
            None => {
                let (bytes, path) = image_bytes(image_ref).map_err(eval)?;
                let mime = image_mime(&bytes).ok_or_else(|| {
                    Error::Request(format!(
                        "{}: not a JPEG, PNG or WebP file (by its signature)",
                        path.display()
                    ))
                })?;
                (bytes, mime)
            }
            Some(c) => {
                let rgb = c
                    .apply(&load_image(image_ref).map_err(eval)?, image_ref)
                    .map_err(eval)?;
                let mut png = std::io::Cursor::new(Vec::new());
                rgb.write_to(&mut png, image::ImageFormat::Png)
                    .map_err(|e| {
                        Error::Request(format!("{image_ref}: cannot encode as PNG: {e}"))
                    })?;
                (png.into_inner(), "image/png")
            }
        };
        Ok(format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }
}

/// The parts of a turn `before<image>after`: the image and the text with the newline that
/// the server's `\n` join puts back; `None` when the image sits inside the text.
fn image_parts(before: &str, after: &str, url: &str) -> Option<Vec<ContentPart>> {
    let image = ContentPart::ImageUrl {
        image_url: ImageUrl { url: url.into() },
    };
    let text = |t: &str| ContentPart::Text { text: t.into() };
    match (before, after) {
        ("", "") => Some(vec![image]),
        ("", a) => a.strip_prefix('\n').map(|a| vec![image, text(a)]),
        (b, "") => b.strip_suffix('\n').map(|b| vec![text(b), image]),
        _ => None,
    }
}

/// The MIME type of an image file by its signature.
fn image_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

impl ApiLm {
    fn images_over_chat(&self) -> std::result::Result<(), EvalError> {
        match self.kind {
            ApiKind::Chat => Ok(()),
            ApiKind::Completions => Err(EvalError::Config(format!(
                "{}: image tasks go through chat messages with image parts; use openai-chat:{}",
                self.identity(),
                self.model
            ))),
        }
    }
}

/// Servers cut at stop strings already; cutting again makes the text independent of how a
/// server treats them.
fn cut_at_stop(mut text: String, until: &[String]) -> String {
    if let Some(cut) = sightline_model::generate::first_stop(&text, until) {
        text.truncate(cut);
    }
    text
}

impl LanguageModel for ApiLm {
    fn identity(&self) -> String {
        format!(
            "{}:{}|base_url={}|max_length={:?}|max_gen_toks={}{}",
            self.kind.name(),
            self.model,
            self.client.base_url(),
            self.max_length,
            self.max_gen_toks,
            self.corruption.map_or(String::new(), |c| format!(
                "|corrupt={}|seed={}",
                c.label(),
                c.seed
            ))
        )
    }

    fn loglikelihood(
        &self,
        requests: &[(String, String)],
        skip: &dyn Fn(usize) -> bool,
        on_done: &mut DoneSink<'_>,
    ) -> std::result::Result<(), EvalError> {
        let todo: Vec<usize> = (0..requests.len()).filter(|&i| !skip(i)).collect();
        if self.kind == ApiKind::Chat && !todo.is_empty() {
            return Err(EvalError::Config(format!(
                "{}: chat models return no log-likelihoods, so log-likelihood tasks cannot run on them; use openai-completions on a server with echo + logprobs",
                self.identity()
            )));
        }
        let chunks: Vec<&[usize]> = todo.chunks(self.batch).collect();
        let f = |chunk: &&[usize]| -> Result<Vec<(usize, Scored)>> {
            let batch = chunk
                .iter()
                .map(|&i| {
                    let (c, x) = &requests[i];
                    self.encode(c, x).map(|(ids, n)| (i, ids, n))
                })
                .collect::<Result<Vec<_>>>()?;
            self.score_batch(&batch)
        };
        self.run_parallel(&chunks, &f, &mut |scored| on_done(&scored))
    }

    /// Every request is its own unit: the server scores each prompt whole, so how requests
    /// are grouped into HTTP calls does not change an answer (beyond the server's own
    /// batching across clients). The cost estimate is the prompt's bytes / 4.
    fn loglikelihood_units(
        &self,
        requests: &[(String, String)],
    ) -> std::result::Result<Vec<WorkUnit>, EvalError> {
        Ok(requests
            .iter()
            .enumerate()
            .map(|(i, (c, x))| WorkUnit {
                requests: vec![i],
                cost: ((c.len() + x.len()) / 4).max(1) as u64,
            })
            .collect())
    }

    fn generate_until(
        &self,
        context: &str,
        until: &[String],
    ) -> std::result::Result<String, EvalError> {
        match self.kind {
            ApiKind::Completions => self.complete(context, until),
            ApiKind::Chat => self.chat(context, until),
        }
        .map_err(eval_err)
    }

    /// The paper's MMLU script over `openai-completions`: the prompt fitted with the server's
    /// `/tokenize` (BOS: what it adds to an empty text with special tokens), sent as token ids,
    /// `max_new_tokens` greedy tokens, the text not cut — what in-process generation does.
    fn generate_fit(
        &self,
        header: &str,
        shots: &[String],
        question: &str,
        fit_tokens: usize,
        max_new_tokens: usize,
    ) -> std::result::Result<String, EvalError> {
        if self.kind == ApiKind::Chat {
            return Err(EvalError::Config(format!(
                "{}: the MMLU script fits its prompt token by token, which needs the server's tokenizer; use openai-completions (with /tokenize), or a chat protocol task",
                self.identity()
            )));
        }
        let bos = match self.client.tokenize_with(&self.model, "", true).map_err(eval_err)?[..] {
            [bos] => bos,
            _ => {
                return Err(EvalError::Config(format!(
                    "{}: the MMLU script prepends BOS, but the server's tokenizer adds no single BOS token",
                    self.identity()
                )))
            }
        };
        let encode = |t: &str| self.tokenize(t).map_err(eval_err);
        let (ids, _) = fit_prompt_with(bos, &encode, header, shots, question, fit_tokens)?;
        // In-process generation writes nothing for a prompt past the model's positions and
        // stops where they run out; the server refuses such prompts, so the limits are applied
        // here. (A prompt of exactly the model's length gets one token in-process, none here.)
        let room = self
            .max_length
            .map_or(max_new_tokens, |m| m.saturating_sub(ids.len()));
        let max_tokens = max_new_tokens.min(room);
        if max_tokens == 0 {
            return Ok(String::new());
        }
        let req = CompletionRequest {
            model: self.model.clone(),
            prompt: Some(Prompt::Tokens(ids)),
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ..Default::default()
        };
        let resp: CompletionResponse = self.client.post("/completions", &req).map_err(eval_err)?;
        self.client.count(resp.usage.as_ref());
        Ok(resp
            .choices
            .into_iter()
            .next()
            .map(|c| c.text)
            .unwrap_or_default())
    }

    /// Several generations in flight at once (`--api-concurrency`); each answer depends on
    /// its own prompt only, so the order they finish in changes nothing.
    fn generate_untils(
        &self,
        requests: &[(String, Vec<String>)],
        on_done: &mut TextSink<'_>,
    ) -> std::result::Result<(), EvalError> {
        let indexed: Vec<usize> = (0..requests.len()).collect();
        let f = |&i: &usize| -> Result<(usize, String)> {
            let (context, until) = &requests[i];
            let text = match self.kind {
                ApiKind::Completions => self.complete(context, until),
                ApiKind::Chat => self.chat(context, until),
            }?;
            Ok((i, text))
        };
        self.run_parallel(&indexed, &f, &mut |done| on_done(&[done]))
    }

    /// Every image request is its own unit (the server batches what arrives together).
    fn image_units(&self, requests: &[ImageGen]) -> std::result::Result<Vec<WorkUnit>, EvalError> {
        self.images_over_chat()?;
        Ok(requests
            .iter()
            .enumerate()
            .map(|(i, r)| WorkUnit {
                requests: vec![i],
                cost: (r.context.len() / 4 + r.decoding.max_new_tokens).max(1) as u64,
            })
            .collect())
    }

    fn generate_images(
        &self,
        requests: &[ImageGen],
        on_done: &mut TextSink<'_>,
    ) -> std::result::Result<(), EvalError> {
        self.images_over_chat()?;
        let indexed: Vec<usize> = (0..requests.len()).collect();
        let f = |&i: &usize| -> Result<(usize, String)> { Ok((i, self.chat_image(&requests[i])?)) };
        self.run_parallel(&indexed, &f, &mut |done| on_done(&[done]))
    }

    fn run_notes(&self) -> Option<Value> {
        Some(json!({
            "kind": self.kind.name(),
            "model": self.model,
            "base_url": self.client.base_url(),
            "concurrency": self.concurrency,
            "prompts_per_request": self.batch,
            "max_length": self.max_length,
            "loglikelihood": "echo + logprobs over token-id prompts split with the server's /tokenize (lm-eval local-completions' rule)",
            "usage": self.client.counters.to_json(),
        }))
    }
}
