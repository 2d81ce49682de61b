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

use serde_json::{json, Value};
use sightline_eval::lm::{DoneSink, LanguageModel, WorkUnit};
use sightline_eval::Error as EvalError;
use sightline_model::score::{split_pair, Scored};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::wire::{
    ChatMessage, ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, Content, Prompt,
    Stop,
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
        let resp: ChatResponse = self.client.post("/chat/completions", &req)?;
        self.client.count(resp.usage.as_ref());
        let text = resp
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        Ok(cut_at_stop(text, until))
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
            "{}:{}|base_url={}|max_length={:?}|max_gen_toks={}",
            self.kind.name(),
            self.model,
            self.client.base_url(),
            self.max_length,
            self.max_gen_toks
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
