//! Log-likelihood requests with an optional image, as lm-eval's `loglikelihood` on the LLaVA
//! prompt.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use sightline_model::llama::logprob_and_greedy;
use sightline_model::score::{Request, ScoreOptions, Scored};

use super::{ImageRequest, Llava, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX};
use crate::error::{Error, Result};

impl Llava {
    /// Log-likelihood of each request's continuation given its context and image.
    ///
    /// Requests without an image are scored exactly as a text model's are
    /// ([`sightline_model::score::score`] with `opts`), so a text request's number never depends
    /// on the other requests in the file. Image requests follow lm-eval's `_encode_pair` rules on
    /// the LLaVA prompt (trailing context whitespace moves to the continuation; the continuation
    /// is what tokenizing the whole string adds after the context's tokens; BOS as the
    /// tokenizer says, no truncation). They run in length-sorted batches of `opts.batch_size`,
    /// right-padded: causal attention keeps padding out of every real row, so batching never
    /// changes a result.
    pub fn score(
        &self,
        requests: &[ImageRequest],
        opts: &ScoreOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Scored>> {
        let (with_image, text): (Vec<usize>, Vec<usize>) =
            (0..requests.len()).partition(|&i| requests[i].image.is_some());
        let total = requests.len();
        let text_requests: Vec<Request> = text
            .iter()
            .map(|&i| Request {
                context: requests[i].context.clone(),
                continuation: requests[i].continuation.clone(),
            })
            .collect();
        let mut out: Vec<Option<Scored>> = vec![None; total];
        if !text_requests.is_empty() {
            let scored = sightline_model::score::score(
                &self.llm,
                &self.tokenizer,
                &text_requests,
                opts,
                &mut |done, _| progress(done, total),
            )?;
            for (&i, s) in text.iter().zip(scored) {
                out[i] = Some(s);
            }
        }
        let image_requests: Vec<ImageRequest> =
            with_image.iter().map(|&i| requests[i].clone()).collect();
        let offset = text.len();
        let scored = self.score_images(&image_requests, opts.batch_size, &mut |done, _| {
            progress(offset + done, total)
        })?;
        for (&i, s) in with_image.iter().zip(scored) {
            out[i] = Some(s);
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| Error::Request("internal: a request was not scored".into())))
            .collect()
    }

    fn score_images(
        &self,
        requests: &[ImageRequest],
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Scored>> {
        let mut prepared = Vec::with_capacity(requests.len());
        let mut feature_cache: HashMap<PathBuf, Tensor> = HashMap::new();
        for r in requests {
            prepared.push(self.prepare_request(r, &mut feature_cache)?);
        }
        let mut order: Vec<usize> = (0..prepared.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prepared[i].embeds.dim(0).unwrap_or(0)));
        let mut out: Vec<Option<Scored>> = vec![None; prepared.len()];
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            let max_len = chunk
                .iter()
                .map(|&i| prepared[i].embeds.dim(0))
                .collect::<candle_core::Result<Vec<_>>>()?
                .into_iter()
                .max()
                .unwrap_or(0);
            let hidden = self.llm.config.hidden_size;
            let rows = chunk
                .iter()
                .map(|&i| {
                    let e = &prepared[i].embeds;
                    let pad = max_len - e.dim(0)?;
                    if pad == 0 {
                        Ok(e.clone())
                    } else {
                        let z = Tensor::zeros((pad, hidden), e.dtype(), e.device())?;
                        Ok(Tensor::cat(&[e, &z], 0)?)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let batch = Tensor::stack(&rows, 0)?;
            // Only the target rows go through the last layer's queries and MLP.
            let windows: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let p = &prepared[i];
                    p.first_target_row..p.first_target_row + p.targets.len()
                })
                .collect();
            let hidden_states = self
                .llm
                .forward_hidden_embeds_rows(&batch, None, &windows)?;
            let mut offset = 0;
            for &i in chunk {
                let p = &prepared[i];
                let n = p.targets.len();
                let h = hidden_states.narrow(0, offset, n)?;
                offset += n;
                let logits: Vec<Vec<f32>> = self.llm.logits(&h)?.to_vec2()?;
                let mut lp = 0.0;
                let mut greedy = true;
                for (row_logits, &t) in logits.iter().zip(&p.targets) {
                    let (l, g) = logprob_and_greedy(row_logits, t);
                    lp += l;
                    greedy &= g;
                }
                out[i] = Some(Scored {
                    logprob: lp,
                    is_greedy: greedy,
                });
            }
            done += chunk.len();
            progress(done, prepared.len());
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| Error::Request("internal: a request was not scored".into())))
            .collect()
    }

    fn prepare_request(
        &self,
        r: &ImageRequest,
        cache: &mut HashMap<PathBuf, Tensor>,
    ) -> Result<PreparedRequest> {
        let context = sightline_metrics::pystr::py_rstrip(&r.context);
        let moved = &r.context[context.len()..];
        let continuation = format!("{moved}{}", r.continuation);
        if continuation.contains(IMAGE_PLACEHOLDER) {
            return Err(Error::Request(format!(
                "the continuation {:?} contains `<image>`: the image belongs in the context",
                r.continuation
            )));
        }
        let ctx_ids = self.tokenize(context)?;
        let whole = self.tokenize(&format!("{context}{continuation}"))?;
        let targets: Vec<u32> = whole
            .get(ctx_ids.len()..)
            .unwrap_or(&[])
            .iter()
            .map(|&t| t as u32)
            .collect();
        if targets.is_empty() || ctx_ids.is_empty() {
            return Err(Error::Request(format!(
                "request {:?} + {:?}: the continuation encodes to no tokens of its own",
                r.context, r.continuation
            )));
        }
        let markers = ctx_ids.iter().filter(|&&t| t == IMAGE_TOKEN_INDEX).count();
        let features = match (&r.image, markers) {
            (Some(path), 1) => {
                let f = match cache.get(path) {
                    Some(f) => f.clone(),
                    None => {
                        let px = self.load_pixels(path)?.unsqueeze(0)?;
                        let f = self.image_features(&px)?.squeeze(0)?;
                        cache.insert(path.clone(), f.clone());
                        f
                    }
                };
                vec![f]
            }
            _ => self.features_for(&ctx_ids, r.image.as_deref(), &r.context)?,
        };
        // Model input = context + continuation without its last token; the continuation's
        // targets are predicted by the rows from the last context position on.
        let mut input = whole.clone();
        input.pop();
        let embeds = self.splice(&input, &features)?;
        let len = embeds.dim(0)?;
        Ok(PreparedRequest {
            first_target_row: len - targets.len(),
            embeds,
            targets,
        })
    }
}

struct PreparedRequest {
    embeds: Tensor,
    targets: Vec<u32>,
    first_target_row: usize,
}
