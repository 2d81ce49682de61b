//! The evaluator's view of a language model: the two request kinds of lm-evaluation-harness.
//! Only this module touches `sightline-model`; tasks and the evaluator can be tested with a
//! scripted model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::Tensor;
use sightline_model::generate::{generate_ids, GenerateOptions};
use sightline_model::llama::{argmax, KvCache};
use sightline_model::score::{
    encode_request, plan_units, score_units, EncodedRequest, Request as LlRequest, ScoreOptions,
    Scored,
};
use sightline_model::LoadedModel;
use sightline_vision::conversation::{render_chat, ChatRole};

use crate::error::{Error, Result};

/// Receives finished log-likelihood results as `(request index, result)` pairs.
pub type DoneSink<'a> = dyn FnMut(&[(usize, Scored)]) -> Result<()> + 'a;

/// Receives finished image generations as `(request index, raw text)` pairs.
pub type TextSink<'a> = dyn FnMut(&[(usize, String)]) -> Result<()> + 'a;

/// One piece of a model call's work as the model cuts a request list into them (a
/// shared-context group, a padded batch, a window of image prompts), formed from the whole
/// list. A sharded evaluation hands out whole units, so every answer is computed exactly as
/// in the unsharded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkUnit {
    /// Indices into the request list the unit answers.
    pub requests: Vec<usize>,
    /// Estimated cost in token positions, for balancing shards.
    pub cost: u64,
}

/// One image-task generation request ([`crate::task::Request::GenerateImage`]).
#[derive(Debug, Clone)]
pub struct ImageGen {
    /// The full prompt, with `<image>` where the image goes.
    pub context: String,
    /// An [`crate::mm`] image reference (a path, or `bundled:...`).
    pub image: String,
    pub decoding: crate::protocol::MmDecoding,
}

/// A model answering log-likelihood and generation requests.
pub trait LanguageModel {
    /// Everything that changes the model's answers (for cache keys).
    fn identity(&self) -> String;

    /// Scores `(context, continuation)` pairs. Requests for which `skip(i)` holds may be left
    /// out; each finished group of results is passed to `on_done` as `(index, result)` pairs.
    fn loglikelihood(
        &self,
        requests: &[(String, String)],
        skip: &dyn Fn(usize) -> bool,
        on_done: &mut DoneSink<'_>,
    ) -> Result<()>;

    /// The units [`Self::loglikelihood`] cuts `requests` into, in the order it runs them;
    /// a call whose `skip` leaves out whole units computes the others exactly as before.
    fn loglikelihood_units(&self, requests: &[(String, String)]) -> Result<Vec<WorkUnit>>;

    /// Greedy generation until one of `until` (or EOS); the text is cut before the stop.
    fn generate_until(&self, context: &str, until: &[String]) -> Result<String>;

    /// [`Self::generate_until`] for every `(context, until)` request, each finished one handed
    /// to `on_done` as `(index, text)`. In-process models run them one at a time, in order (a
    /// greedy answer depends on nothing but its prompt); API models keep several in flight.
    fn generate_untils(
        &self,
        requests: &[(String, Vec<String>)],
        on_done: &mut TextSink<'_>,
    ) -> Result<()> {
        for (i, (context, until)) in requests.iter().enumerate() {
            let text = self.generate_until(context, until)?;
            on_done(&[(i, text)])?;
        }
        Ok(())
    }

    /// The paper's MMLU generation ([`crate::task::Request::GenerateFit`]): the longest prompt
    /// `header + shots[..k] + question` that fits `fit_tokens` with BOS, BOS prepended, greedy
    /// `max_new_tokens` tokens, decoded without special tokens.
    fn generate_fit(
        &self,
        header: &str,
        shots: &[String],
        question: &str,
        fit_tokens: usize,
        max_new_tokens: usize,
    ) -> Result<String> {
        let _ = (header, shots, question, fit_tokens, max_new_tokens);
        Err(Error::Config(format!(
            "{}: this model cannot run the MMLU script's generation",
            self.identity()
        )))
    }

    /// Facts about the run this model wants recorded in `results.json` (`config.api`: an API
    /// model's endpoint and token usage); `None` for in-process models.
    fn run_notes(&self) -> Option<serde_json::Value> {
        None
    }

    /// Generates for image requests (in any order, batched as the model likes), passing each
    /// finished group to `on_done`. Text-only models cannot.
    fn generate_images(&self, requests: &[ImageGen], on_done: &mut TextSink<'_>) -> Result<()> {
        let _ = (requests, on_done);
        Err(Error::Config(format!(
            "{}: a text-only model cannot run image tasks (they need a LLaVA checkpoint, or --mm-projector on a LLaMA one)",
            self.identity()
        )))
    }

    /// The units [`Self::generate_images`] cuts `requests` into; given the requests of whole
    /// units only, it forms the same units again.
    fn image_units(&self, requests: &[ImageGen]) -> Result<Vec<WorkUnit>> {
        let _ = requests;
        Err(Error::Config(format!(
            "{}: a text-only model cannot run image tasks (they need a LLaVA checkpoint, or --mm-projector on a LLaMA one)",
            self.identity()
        )))
    }
}

/// A candle model with lm-eval's request semantics (`HFLM(add_bos_token=False)`).
pub struct CandleLm {
    pub loaded: LoadedModel,
    pub score: ScoreOptions,
    /// lm-eval's `max_gen_toks` (256).
    pub max_gen_toks: usize,
    /// Extra identity (adapter path, dtype) recorded by the caller.
    pub tag: String,
    /// MMLU's shared 5-shot prefix ([`PrefixCache`]).
    pub prefix_cache: PrefixCache,
    /// `--chat-template MODE`: each generation prompt is sent as one user message through this
    /// conversation template (BOS as the tokenizer's config says, the template's stop string
    /// added), exactly as `sightline serve --conv-mode MODE` renders a chat request, so that a
    /// local model and an API model answer the same prompt. lm-eval's `--apply_chat_template`
    /// does the same with a tokenizer's Jinja template. As on a chat server, a conversation is
    /// not truncated (one longer than the model is an error) and generation ends where the
    /// model's positions do. Log-likelihood requests are refused under it (their
    /// context/continuation boundary has no place in a chat turn here).
    pub chat_template: Option<String>,
}

impl CandleLm {
    fn max_length(&self) -> usize {
        self.score
            .max_length
            .unwrap_or(self.loaded.model.config.max_position_embeddings)
    }

    /// The harness's encoding of every `(context, continuation)` pair.
    fn encode(&self, requests: &[(String, String)]) -> Result<Vec<EncodedRequest>> {
        let tok = &self.loaded.tokenizer;
        requests
            .iter()
            .map(|(c, x)| {
                encode_request(
                    tok,
                    &LlRequest {
                        context: c.clone(),
                        continuation: x.clone(),
                    },
                    &self.score,
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::Model)
    }
}

impl CandleLm {
    fn refuse_under_chat_template(&self, requests: &[(String, String)]) -> Result<()> {
        match &self.chat_template {
            Some(mode) if !requests.is_empty() => Err(Error::Config(format!(
                "--chat-template {mode} applies to generation tasks; log-likelihood tasks run on the raw prompt (drop the flag, or run their generative protocols, e.g. truthfulqa_mc1_joint)"
            ))),
            _ => Ok(()),
        }
    }
}

impl LanguageModel for CandleLm {
    fn identity(&self) -> String {
        format!(
            "{}|{}|max_length={}|add_bos={}|empty={:?}|max_gen_toks={}{}",
            self.loaded.spec,
            self.tag,
            self.max_length(),
            self.score.add_bos,
            self.score.empty_context,
            self.max_gen_toks,
            self.chat_template
                .as_ref()
                .map_or(String::new(), |m| format!("|chat_template={m}"))
        )
    }

    fn loglikelihood(
        &self,
        requests: &[(String, String)],
        skip: &dyn Fn(usize) -> bool,
        on_done: &mut DoneSink<'_>,
    ) -> Result<()> {
        self.refuse_under_chat_template(requests)?;
        let encoded = self.encode(requests)?;
        let mut inner_err: Option<Error> = None;
        score_units(
            &self.loaded.model,
            &encoded,
            &self.score,
            skip,
            &mut |unit| {
                on_done(unit).map_err(|e| {
                    let msg = e.to_string();
                    inner_err = Some(e);
                    sightline_model::Error::Request(msg)
                })
            },
        )
        .map_err(|e| inner_err.take().unwrap_or(Error::Model(e)))
    }

    fn loglikelihood_units(&self, requests: &[(String, String)]) -> Result<Vec<WorkUnit>> {
        self.refuse_under_chat_template(requests)?;
        let encoded = self.encode(requests)?;
        Ok(plan_units(&self.loaded.model, &encoded, &self.score)?
            .into_iter()
            .map(|u| WorkUnit {
                requests: u.requests,
                cost: u.tokens as u64,
            })
            .collect())
    }

    fn generate_until(&self, context: &str, until: &[String]) -> Result<String> {
        let tok = &self.loaded.tokenizer;
        let max_length = self.max_length();
        if max_length <= self.max_gen_toks {
            return Err(Error::Config(format!(
                "max_length {max_length} leaves no room for a context before {} generated tokens",
                self.max_gen_toks
            )));
        }
        let mut stop = until.to_vec();
        let ids = match &self.chat_template {
            None => {
                let mut ids = tok.encode(context)?;
                let keep = max_length - self.max_gen_toks;
                if ids.len() > keep {
                    ids.drain(..ids.len() - keep);
                }
                ids
            }
            // As a chat server takes it: the whole conversation or nothing (no truncation),
            // and generation ends where the model's positions do.
            Some(mode) => {
                let (prompt, template_stop) = render_chat(mode, &[(ChatRole::User, context)])
                    .map_err(|e| Error::Config(format!("--chat-template {mode}: {e}")))?;
                stop.extend(template_stop.map(str::to_string));
                let ids = tok.encode_prompt(&prompt)?;
                let positions = self.loaded.model.config.max_position_embeddings;
                if ids.len() >= positions {
                    return Err(Error::Config(format!(
                        "--chat-template {mode}: the conversation is {} tokens; the model has {positions} positions (a chat server refuses it too; prompts without a template are left-truncated)",
                        ids.len()
                    )));
                }
                ids
            }
        };
        let opts = GenerateOptions {
            max_new_tokens: self.max_gen_toks,
            stop,
            temperature: 0.0,
            stop_at_eos: true,
            ..Default::default()
        };
        Ok(generate_ids(&self.loaded.model, tok, &ids, &opts)?.text)
    }

    fn generate_fit(
        &self,
        header: &str,
        shots: &[String],
        question: &str,
        fit_tokens: usize,
        max_new_tokens: usize,
    ) -> Result<String> {
        let tok = &self.loaded.tokenizer;
        let model = &self.loaded.model;
        let (ids, k) = fit_prompt(tok, header, shots, question, fit_tokens)?;
        let mut prefix = vec![ids[0]];
        prefix.extend(tok.encode(&format!("{header}{}", shots[..k].concat()))?);
        let mut cache = KvCache::default();
        let mut start = 0;
        // What is reused is the prompt's own first tokens: the longest run it shares with the
        // header + shots encoded alone. The two part where the boundary tokenizes differently:
        // byte-level BPE (GPT-2, LLaMA 3, SmolLM2) ends the block alone with one `\n\n` token
        // but splits it into `\n`, `\n` before the question's first letter. The cached keys
        // and values are those of the prompt's own tokens, so the answer is the whole prompt's.
        let shared = prefix.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        let max_pos = model.config.max_position_embeddings;
        if shared > 1 && shared < ids.len() && ids.len() <= max_pos {
            (cache, start) = self.prefix_cache.get_or_fill(model, &ids, shared)?;
        }
        let candle = |e: candle_core::Error| Error::Model(e.into());
        // Positions past the model's end are not generated (transformers would extrapolate
        // RoPE); with the script's 2,048 and a 2,048-position model only the last tokens of a
        // prompt that fills the budget exactly are affected.
        let mut input: Vec<u32> = ids[start..].to_vec();
        let mut out: Vec<u32> = Vec::new();
        for _ in 0..max_new_tokens {
            if cache.len() + input.len() > max_pos {
                break;
            }
            let t = Tensor::from_slice(&input, (1, input.len()), model.device()).map_err(candle)?;
            let logits: Vec<f32> = model
                .forward_last(&t, Some(&mut cache))?
                .flatten_all()
                .and_then(|l| l.to_vec1())
                .map_err(candle)?;
            let next = argmax(&logits) as u32;
            out.push(next);
            // `model.generate` stops at EOS too (the rest is padding, skipped on decode).
            if Some(next) == tok.eos_id {
                break;
            }
            input = vec![next];
        }
        Ok(tok.decode(&out, true)?)
    }
}

/// The KV cache of the last MMLU prefix (BOS + header + the shots kept). The script's prompts
/// of one subject differ only in the question, so the evaluator sends them together and the
/// 5-shot block runs once per subject instead of once per question. One entry: a 7B model's
/// cache of a 1,500-token prefix is about 1.5 GB in f32.
#[derive(Default)]
pub struct PrefixCache {
    slot: Mutex<Option<(Vec<u32>, KvCache)>>,
    /// Prompts that reused the cached prefix.
    pub hits: AtomicUsize,
}

impl PrefixCache {
    /// The KV cache of the first tokens of `ids` and how many they are: the slot's when the
    /// prompt begins with the tokens it holds, else that of `ids[..shared]`, which then fills
    /// the slot. Taking any slot the prompt begins with (not only one of exactly `shared`
    /// tokens) keeps a subject on one entry when its questions' first characters tokenize the
    /// shots' last `\n\n` differently (` Why` keeps it whole, `Why` splits it).
    fn get_or_fill(
        &self,
        model: &sightline_model::Llama,
        ids: &[u32],
        shared: usize,
    ) -> Result<(KvCache, usize)> {
        let mut slot = self
            .slot
            .lock()
            .map_err(|_| Error::Config("internal: the prefix cache lock is poisoned".into()))?;
        if let Some((p, c)) = slot.as_ref() {
            if p.len() < ids.len() && ids.starts_with(p) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((c.clone(), p.len()));
            }
        }
        let prefix = &ids[..shared];
        let candle = |e: candle_core::Error| Error::Model(e.into());
        let mut cache = KvCache::default();
        let t = Tensor::from_slice(prefix, (1, prefix.len()), model.device()).map_err(candle)?;
        // Only the keys and values are kept: no row of the last layer is computed past them.
        let no_rows = [std::ops::Range::default()]; // 0..0 for the one sequence
        model.forward_hidden_rows(&t, Some(&mut cache), &no_rows)?;
        *slot = Some((prefix.to_vec(), cache.clone()));
        Ok((cache, shared))
    }
}

/// `evaluate_mmlu.py`'s prompt fitting: k from `shots.len()` down while
/// `len(tokenizer(prompt).input_ids) > fit_tokens` (BOS counted) and k > 0; returns the ids
/// of the chosen prompt with BOS first, as `tokenizer(prompt)` gives them, and k.
pub fn fit_prompt(
    tok: &sightline_model::tokenizer::Tokenizer,
    header: &str,
    shots: &[String],
    question: &str,
    fit_tokens: usize,
) -> Result<(Vec<u32>, usize)> {
    let bos = tok.bos_id.ok_or_else(|| {
        Error::Config("the MMLU script prepends BOS, but this tokenizer has no BOS token".into())
    })?;
    fit_prompt_with(
        bos,
        &|t| Ok(tok.encode(t)?),
        header,
        shots,
        question,
        fit_tokens,
    )
}

/// [`fit_prompt`] with any tokenizer (`encode` without special tokens): an API model fits
/// its prompts with the server's `/tokenize`.
pub fn fit_prompt_with(
    bos: u32,
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    header: &str,
    shots: &[String],
    question: &str,
    fit_tokens: usize,
) -> Result<(Vec<u32>, usize)> {
    let mut k = shots.len();
    loop {
        let prompt = format!("{header}{}{question}", shots[..k].concat());
        let mut ids = vec![bos];
        ids.extend(encode(&prompt)?);
        if ids.len() <= fit_tokens || k == 0 {
            return Ok((ids, k));
        }
        k -= 1;
    }
}
