//! Log-likelihood scoring with lm-evaluation-harness semantics (`spec/lm-eval-scoring.md`).
//!
//! A request is a `(context, continuation)` pair; the answer is `Σ log p(continuation token)`
//! and whether every continuation token is the argmax. Reference: lm-eval 0.4.9.1
//! `HFLM(add_bos_token=False)` `_encode_pair` / `_loglikelihood_tokens`, which match the
//! 0.3-era `hf-causal-experimental` the paper used (except for the empty-context prefix token,
//! see [`EmptyContextPrefix`]).

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::llama::{logprob_and_greedy, KvCache, Llama};
use crate::tokenizer::Tokenizer;

/// One log-likelihood request, as `sightline score` reads it from JSONL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub logprob: f64,
    pub is_greedy: bool,
}

/// The token that stands in for an empty context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptyContextPrefix {
    /// The 0.3-era harness the paper used: `[eos_token_id]`.
    #[default]
    Eos,
    /// lm-eval 0.4.x `prefix_token_id`: BOS when the tokenizer has one, else EOS.
    Bos,
}

/// Scoring settings.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Sequences per forward pass (after sorting by length).
    pub batch_size: usize,
    /// Left-truncation length; `None` = `max_position_embeddings` as the harness resolves it.
    pub max_length: Option<usize>,
    /// Prepend BOS to every context (lm-eval `add_bos_token=True`).
    pub add_bos: bool,
    /// Compute a context shared by several requests once and score continuations on its KV cache.
    pub shared_prefix: bool,
    pub empty_context: EmptyContextPrefix,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_length: None,
            add_bos: false,
            shared_prefix: true,
            empty_context: EmptyContextPrefix::Eos,
        }
    }
}

/// Token ids of a request after the harness's encoding rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncodedRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// `_encode_pair`: trailing whitespace of the context moves to the continuation, the whole
/// string is encoded and split at the context's token count.
pub fn encode_request(
    tok: &Tokenizer,
    req: &Request,
    opts: &ScoreOptions,
) -> Result<EncodedRequest> {
    let bos: Vec<u32> = if opts.add_bos {
        vec![tok
            .bos_id
            .ok_or_else(|| Error::Request("--add-bos: the tokenizer has no BOS token".into()))?]
    } else {
        vec![]
    };
    if req.context.is_empty() {
        let prefix = match opts.empty_context {
            EmptyContextPrefix::Bos => tok.bos_id.or(tok.eos_id),
            EmptyContextPrefix::Eos => tok.eos_id,
        }
        .ok_or_else(|| {
            Error::Request("empty context needs an EOS/BOS token, the tokenizer has none".into())
        })?;
        let continuation = tok.encode(&req.continuation)?;
        return check(
            EncodedRequest {
                context: vec![prefix],
                continuation,
            },
            req,
        );
    }
    let (ctx, cont) = split_pair(&req.context, &req.continuation, |t| tok.encode(t))?;
    let mut full_ctx = bos;
    full_ctx.extend(ctx);
    check(
        EncodedRequest {
            context: full_ctx,
            continuation: cont,
        },
        req,
    )
}

/// The token split of a non-empty context and its continuation by `_encode_pair`'s rule, with
/// any tokenizer (`encode` encodes without special tokens): trailing whitespace of the context
/// moves to the continuation, `context + continuation` is encoded whole and split at the
/// trimmed context's token count. `sightline serve`'s clients split the same way with the
/// server's tokenizer.
pub fn split_pair<E>(
    context: &str,
    continuation: &str,
    mut encode: impl FnMut(&str) -> std::result::Result<Vec<u32>, E>,
) -> std::result::Result<(Vec<u32>, Vec<u32>), E> {
    let trimmed = sightline_metrics::pystr::py_rstrip(context);
    let whole = encode(&format!("{context}{continuation}"))?;
    let ctx = encode(trimmed)?;
    let cont = whole.get(ctx.len()..).unwrap_or(&[]).to_vec();
    Ok((ctx, cont))
}

fn check(enc: EncodedRequest, req: &Request) -> Result<EncodedRequest> {
    if enc.context.is_empty() || enc.continuation.is_empty() {
        return Err(Error::Request(format!(
            "request {:?} + {:?}: the continuation encodes to no tokens of its own \
             (the harness asserts len(continuation_enc) > 0)",
            req.context, req.continuation
        )));
    }
    Ok(enc)
}

/// Where a request's scored rows come from once truncated: `input` is the model input
/// (`(ctx + cont)[-(max_length+1):][:-1]`) and the continuation occupies its last rows.
struct Prepared {
    input: Vec<u32>,
    targets: Vec<u32>,
}

fn prepare(enc: &EncodedRequest, max_length: usize) -> Result<Prepared> {
    if enc.continuation.len() > max_length {
        return Err(Error::Request(format!(
            "continuation of {} tokens is longer than max_length {max_length}",
            enc.continuation.len()
        )));
    }
    let mut seq: Vec<u32> = enc
        .context
        .iter()
        .chain(&enc.continuation)
        .copied()
        .collect();
    if seq.len() > max_length + 1 {
        seq.drain(..seq.len() - (max_length + 1));
    }
    seq.pop();
    Ok(Prepared {
        input: seq,
        targets: enc.continuation.clone(),
    })
}

/// Scores requests; results come back in input order. `progress(done, total)` is called as
/// requests finish.
pub fn score(
    model: &Llama,
    tok: &Tokenizer,
    requests: &[Request],
    opts: &ScoreOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Scored>> {
    let encoded = requests
        .iter()
        .map(|r| encode_request(tok, r, opts))
        .collect::<Result<Vec<_>>>()?;
    score_encoded(model, &encoded, opts, progress)
}

/// Scores already-encoded requests (see [`score`]).
pub fn score_encoded(
    model: &Llama,
    encoded: &[EncodedRequest],
    opts: &ScoreOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Scored>> {
    let mut results: Vec<Option<Scored>> = vec![None; encoded.len()];
    let mut done = 0;
    score_units(model, encoded, opts, &|_| false, &mut |unit| {
        for &(i, s) in unit {
            results[i] = Some(s);
        }
        done += unit.len();
        progress(done, encoded.len());
        Ok(())
    })?;
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| Error::Request("internal: a request was not scored".into())))
        .collect()
}

/// Receives each finished unit as `(input index, result)` pairs.
pub type UnitSink<'a> = dyn FnMut(&[(usize, Scored)]) -> Result<()> + 'a;

/// One piece of scoring work: a context shared by several requests, or a padded batch.
enum Unit<'a> {
    Shared {
        context: &'a [u32],
        members: Vec<usize>,
    },
    Batch(Vec<usize>),
}

/// The units a request list is cut into, with what scoring them needs.
struct Formed<'a> {
    /// The input indices each distinct request answers (identical requests run once).
    owners: Vec<Vec<usize>>,
    prepared: Vec<Prepared>,
    units: Vec<Unit<'a>>,
}

/// Cuts requests into units: shared-context groups (ordered by their first member), then
/// length-sorted padded batches. Formed from the *whole* request list, so a unit's members
/// (and so its results) never depend on which other units run.
fn form_units<'a>(
    encoded: &'a [EncodedRequest],
    opts: &ScoreOptions,
    max_length: usize,
) -> Result<Formed<'a>> {
    // Identical requests are computed once (the harness's Reorderer does the same).
    let mut unique: Vec<&EncodedRequest> = Vec::new();
    let mut owners: Vec<Vec<usize>> = Vec::new();
    let mut slot_of: HashMap<&EncodedRequest, usize> = HashMap::new();
    for (i, e) in encoded.iter().enumerate() {
        let slot = *slot_of.entry(e).or_insert_with(|| {
            unique.push(e);
            owners.push(Vec::new());
            unique.len() - 1
        });
        owners[slot].push(i);
    }
    let prepared = unique
        .iter()
        .map(|e| prepare(e, max_length))
        .collect::<Result<Vec<_>>>()?;

    // Requests whose untruncated context is shared by others go through the prefix cache.
    let mut plain: Vec<usize> = Vec::new();
    let mut groups: HashMap<&[u32], Vec<usize>> = HashMap::new();
    for (i, e) in unique.iter().enumerate() {
        let fits = e.context.len() + e.continuation.len() <= max_length + 1;
        if opts.shared_prefix && fits {
            groups.entry(e.context.as_slice()).or_default().push(i);
        } else {
            plain.push(i);
        }
    }
    let mut units: Vec<Unit> = Vec::new();
    for (context, members) in groups {
        if members.len() > 1 {
            units.push(Unit::Shared { context, members });
        } else {
            plain.extend(members);
        }
    }
    units.sort_by_key(|u| match u {
        Unit::Shared { members, .. } => members[0],
        Unit::Batch(_) => usize::MAX,
    });
    // Longest first, as the harness orders them; batch members are right-padded with id 0.
    plain.sort_by(|&a, &b| {
        prepared[b]
            .input
            .len()
            .cmp(&prepared[a].input.len())
            .then(a.cmp(&b))
    });
    units.extend(
        plain
            .chunks(opts.batch_size.max(1))
            .map(|c| Unit::Batch(c.to_vec())),
    );
    Ok(Formed {
        owners,
        prepared,
        units,
    })
}

/// One unit of [`score_units`]' work as [`plan_units`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPlan {
    /// The input indices the unit answers, duplicates included, in the order it reports them.
    pub requests: Vec<usize>,
    /// Token positions the unit runs through the decoder (padding included): its cost.
    pub tokens: usize,
}

/// The units [`score_units`] cuts `encoded` into, in the order it runs them, without running
/// them: what a sharded evaluation divides between processes, so that each unit is computed
/// exactly as the unsharded run computes it.
pub fn plan_units(
    model: &Llama,
    encoded: &[EncodedRequest],
    opts: &ScoreOptions,
) -> Result<Vec<UnitPlan>> {
    let max_length = opts
        .max_length
        .unwrap_or(model.config.max_position_embeddings);
    let f = form_units(encoded, opts, max_length)?;
    let plans = f
        .units
        .iter()
        .map(|unit| {
            let (members, tokens) = match unit {
                Unit::Shared { context, members } => (
                    members,
                    context.len()
                        + members
                            .iter()
                            .map(|&i| f.prepared[i].targets.len())
                            .sum::<usize>(),
                ),
                Unit::Batch(members) => (
                    members,
                    members.len()
                        * members
                            .iter()
                            .map(|&i| f.prepared[i].input.len())
                            .max()
                            .unwrap_or(0),
                ),
            };
            UnitPlan {
                requests: members
                    .iter()
                    .flat_map(|&u| f.owners[u].iter().copied())
                    .collect(),
                tokens,
            }
        })
        .collect();
    Ok(plans)
}

/// The streaming engine under [`score`]: requests are cut into units ([`form_units`]). Units
/// whose every request `skip`s are not computed (a resumed or sharded evaluation); each
/// finished unit is handed to `on_unit` as `(input index, result)` pairs, duplicates included.
pub fn score_units(
    model: &Llama,
    encoded: &[EncodedRequest],
    opts: &ScoreOptions,
    skip: &dyn Fn(usize) -> bool,
    on_unit: &mut UnitSink<'_>,
) -> Result<()> {
    let max_length = opts
        .max_length
        .unwrap_or(model.config.max_position_embeddings);
    let Formed {
        owners,
        prepared,
        units,
    } = form_units(encoded, opts, max_length)?;
    for unit in units {
        let members = match &unit {
            Unit::Shared { members, .. } | Unit::Batch(members) => members,
        };
        if members.iter().flat_map(|&u| &owners[u]).all(|&i| skip(i)) {
            continue;
        }
        let scored = match &unit {
            Unit::Shared { context, members } => {
                let targets: Vec<&[u32]> = members
                    .iter()
                    .map(|&i| prepared[i].targets.as_slice())
                    .collect();
                score_shared_prefix(model, context, &targets, opts.batch_size.max(1))?
            }
            Unit::Batch(members) => {
                let batch: Vec<&Prepared> = members.iter().map(|&i| &prepared[i]).collect();
                score_padded_batch(model, &batch)?
            }
        };
        let fanned: Vec<(usize, Scored)> = members
            .iter()
            .zip(scored)
            .flat_map(|(&u, s)| owners[u].iter().map(move |&i| (i, s)))
            .collect();
        on_unit(&fanned)?;
    }
    Ok(())
}

/// Sums log-probs of `targets` read from `rows` (`[n, vocab]` f32, one row per target).
fn sum_rows(logits: &[f32], vocab: usize, targets: &[u32]) -> Scored {
    let mut logprob = 0.0;
    let mut is_greedy = true;
    for (r, &t) in targets.iter().enumerate() {
        let (lp, greedy) = logprob_and_greedy(&logits[r * vocab..(r + 1) * vocab], t);
        logprob += lp;
        is_greedy &= greedy;
    }
    Scored { logprob, is_greedy }
}

/// The plain path: one forward over right-padded inputs; only continuation rows go through
/// the last layer's queries and MLP (`Llama::forward_hidden_rows`) and reach the LM head.
fn score_padded_batch(model: &Llama, batch: &[&Prepared]) -> Result<Vec<Scored>> {
    let dev = model.device();
    let width = batch.iter().map(|p| p.input.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(batch.len() * width);
    let mut windows = Vec::with_capacity(batch.len());
    for p in batch {
        ids.extend(&p.input);
        ids.extend(std::iter::repeat_n(0u32, width - p.input.len()));
        windows.push(p.input.len() - p.targets.len()..p.input.len());
    }
    let ids = Tensor::from_vec(ids, (batch.len(), width), dev)?;
    let hidden = model.forward_hidden_rows(&ids, None, &windows)?;
    let logits: Vec<f32> = model.logits(&hidden)?.flatten_all()?.to_vec1()?;
    let vocab = model.config.vocab_size;
    let mut out = Vec::with_capacity(batch.len());
    let mut offset = 0;
    for p in batch {
        let n = p.targets.len();
        out.push(sum_rows(
            &logits[offset * vocab..(offset + n) * vocab],
            vocab,
            &p.targets,
        ));
        offset += n;
    }
    Ok(out)
}

/// The shared-prefix path: the context runs once (its last row predicts every continuation's
/// first token); the continuations `cont[..-1]` then run in padded batches of `batch_size` on
/// its KV cache.
fn score_shared_prefix(
    model: &Llama,
    context: &[u32],
    targets: &[&[u32]],
    batch_size: usize,
) -> Result<Vec<Scored>> {
    let dev = model.device();
    let vocab = model.config.vocab_size;
    let mut cache = KvCache::default();
    let ctx = Tensor::from_slice(context, (1, context.len()), dev)?;
    let first: Vec<f32> = model
        .forward_last(&ctx, Some(&mut cache))?
        .flatten_all()?
        .to_vec1()?;

    let mut out = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(batch_size) {
        let width = chunk.iter().map(|t| t.len() - 1).max().unwrap_or(0);
        let rest: Vec<f32> = if width > 0 {
            let mut ids = Vec::with_capacity(chunk.len() * width);
            let mut rows = Vec::new();
            for (b, t) in chunk.iter().enumerate() {
                ids.extend(&t[..t.len() - 1]);
                ids.extend(std::iter::repeat_n(0u32, width - (t.len() - 1)));
                rows.extend((0..t.len() - 1).map(|r| (b * width + r) as u32));
            }
            let ids = Tensor::from_vec(ids, (chunk.len(), width), dev)?;
            let hidden = model.forward_hidden_after(&ids, &cache)?;
            let hidden = hidden
                .flatten_to(1)?
                .index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
            model.logits(&hidden)?.flatten_all()?.to_vec1()?
        } else {
            Vec::new()
        };
        let mut offset = 0;
        for t in chunk {
            let head = sum_rows(&first, vocab, &t[..1]);
            let n = t.len() - 1;
            let tail = sum_rows(&rest[offset * vocab..(offset + n) * vocab], vocab, &t[1..]);
            offset += n;
            out.push(Scored {
                logprob: head.logprob + tail.logprob,
                is_greedy: head.is_greedy && tail.is_greedy,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_information_separators() {
        assert!(sightline_metrics::pystr::is_py_space('\u{1f}'));
        assert!(sightline_metrics::pystr::is_py_space('\u{a0}'));
        assert!(sightline_metrics::pystr::is_py_space('\n'));
        assert!(!sightline_metrics::pystr::is_py_space('\u{200b}'));
    }

    #[test]
    fn truncation_keeps_the_end() {
        let enc = EncodedRequest {
            context: vec![1, 2, 3, 4, 5],
            continuation: vec![6, 7],
        };
        let p = prepare(&enc, 4).unwrap();
        // seq = [3,4,5,6,7] (max_length + 1 = 5 kept), input drops the last token.
        assert_eq!(p.input, vec![3, 4, 5, 6]);
        assert_eq!(p.targets, vec![6, 7]);
        assert!(prepare(&enc, 1).is_err());
    }
}
