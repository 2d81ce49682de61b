//! Batched generation for spliced LLaVA prompts, with a KV cache: what the multimodal
//! evaluation harness (`sightline eval` on image tasks) runs thousands of times.
//!
//! **Batching by equal length.** The decoder has no padding mask, so prompts are grouped by
//! their spliced length and each group is cut into batches of at most `batch_size` rows. Every
//! row of a batch then sits at the same positions, needs no padding, no mask and no position
//! offsets, and computes exactly what a batch of one computes: batching never changes a token
//! (the tests check this on the tiny fixtures). Evaluation prompts share a template and differ
//! by a few question tokens, so the groups are large. Rows that finish early keep being fed
//! (their extra tokens are dropped): the KV cache cannot drop rows, and a batch ends when every
//! row is done.
//!
//! **Decoding** follows transformers' `generate` as Sight-Beyond-Text calls it
//! (`spec/multimodal-eval.md` E1.6–E1.8): greedy, or sampling in the order temperature →
//! top-k → softmax → multinomial; `min_new_tokens` blocks EOS for the first steps; generation
//! stops at EOS, at `max_new_tokens`, or once the decoded new text contains a stop string. The
//! text is *not* cut at the stop string (SBT's output may end in `###`); callers that want it cut
//! do so themselves. Torch's sampling stream cannot be reproduced in Rust, so every prompt
//! samples from its own ChaCha8 stream seeded by [`BatchPrompt::seed`]: a prompt's output does
//! not depend on which other prompts share its batch.

use std::collections::BTreeMap;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sightline_model::llama::{argmax, KvCache};
use sightline_model::{Llama, Tokenizer};

use crate::error::{Error, Result};

/// How new tokens are chosen and when generation stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoding {
    pub max_new_tokens: usize,
    /// EOS is blocked until this many tokens were generated (HF `min_new_tokens`).
    pub min_new_tokens: usize,
    /// `None` = greedy.
    pub sampling: Option<Sampling>,
    /// Stop once the decoded new text contains one of these (the text keeps it).
    pub stop: Vec<String>,
}

/// Multinomial sampling settings (HF `do_sample=True`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    /// Keep the `top_k` largest logits, ties at the k-th value included (0 = all).
    pub top_k: usize,
}

/// One prompt: its spliced input embeddings and the seed of its sampling stream.
#[derive(Debug, Clone)]
pub struct BatchPrompt {
    /// `[len, hidden]` (see [`crate::llava::Llava::splice`]).
    pub embeds: Tensor,
    pub seed: u64,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutput {
    /// New tokens decoded with special tokens skipped, not stripped, not cut at a stop string.
    pub text: String,
    /// New token ids (EOS included when it ended the generation).
    pub tokens: Vec<u32>,
}

/// Receives each finished batch as `(prompt index, output)` pairs.
pub type OutputSink<'a> = dyn FnMut(&[(usize, BatchOutput)]) -> Result<()> + 'a;

/// Generates for every prompt, `batch_size` equal-length prompts at a time. `on_done` receives
/// each finished batch as `(prompt index, output)` pairs, so callers can log or cache progress.
pub fn generate_batched(
    llm: &Llama,
    tok: &Tokenizer,
    prompts: &[BatchPrompt],
    decoding: &Decoding,
    batch_size: usize,
    on_done: &mut OutputSink<'_>,
) -> Result<()> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let (len, _) = p.embeds.dims2()?;
        if len == 0 {
            return Err(Error::Request(format!("prompt {i} is empty")));
        }
        // Scoring a silently empty answer would hide the problem; say it instead.
        let max = llm.config.max_position_embeddings;
        if len >= max {
            return Err(Error::Request(format!(
                "a prompt of {len} positions (text and image features) leaves no room to generate within max_position_embeddings {max}"
            )));
        }
        by_len.entry(len).or_default().push(i);
    }
    for group in by_len.values() {
        for chunk in group.chunks(batch_size.max(1)) {
            let rows: Vec<&BatchPrompt> = chunk.iter().map(|&i| &prompts[i]).collect();
            let outs = generate_equal_length(llm, tok, &rows, decoding)?;
            let done: Vec<(usize, BatchOutput)> = chunk.iter().copied().zip(outs).collect();
            on_done(&done)?;
        }
    }
    Ok(())
}

/// One batch of prompts of the same length → one output per prompt, in order.
fn generate_equal_length(
    llm: &Llama,
    tok: &Tokenizer,
    rows: &[&BatchPrompt],
    d: &Decoding,
) -> Result<Vec<BatchOutput>> {
    let b = rows.len();
    let embeds: Vec<Tensor> = rows.iter().map(|p| p.embeds.clone()).collect();
    let mut input = Tensor::stack(&embeds, 0)?; // [b, t, hidden]
    let max_pos = llm.config.max_position_embeddings;
    let mut rngs: Vec<ChaCha8Rng> = rows
        .iter()
        .map(|p| ChaCha8Rng::seed_from_u64(p.seed))
        .collect();
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let mut cache = KvCache::default();
    for step in 0..d.max_new_tokens {
        let t = input.dim(1)?;
        if cache.len() + t > max_pos {
            break;
        }
        let logits: Vec<Vec<f32>> = llm
            .forward_last_embeds(&input, Some(&mut cache))? // [b, vocab]
            .to_vec2()?;
        let mut next = vec![0u32; b];
        for (r, mut row) in logits.into_iter().enumerate() {
            if done[r] {
                next[r] = tokens[r].last().copied().unwrap_or(0);
                continue;
            }
            if step < d.min_new_tokens {
                if let Some(eos) = tok.eos_id.and_then(|e| row.get_mut(e as usize)) {
                    *eos = f32::NEG_INFINITY;
                }
            }
            let id = match &d.sampling {
                None => argmax(&row) as u32,
                Some(s) => sample(&row, s, &mut rngs[r]),
            };
            next[r] = id;
            tokens[r].push(id);
            if Some(id) == tok.eos_id {
                done[r] = true;
            } else if !d.stop.is_empty() {
                let text = tok.decode(&tokens[r], true)?;
                done[r] = d.stop.iter().any(|s| !s.is_empty() && text.contains(s));
            }
        }
        if done.iter().all(|&x| x) {
            break;
        }
        let ids = Tensor::from_vec(next, (b, 1), llm.device())?;
        input = llm.embed(&ids)?;
    }
    tokens
        .into_iter()
        .map(|ids| {
            Ok(BatchOutput {
                text: tok.decode(&ids, true)?,
                tokens: ids,
            })
        })
        .collect()
}

/// HF's sampling chain: `logits / temperature`, keep the top-k values (ties at the k-th value
/// kept, as `TopKLogitsWarper`'s `< kth value` filter does), softmax, one multinomial draw.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let temp = if s.temperature > 0.0 {
        s.temperature
    } else {
        1.0
    };
    let scaled: Vec<f64> = logits.iter().map(|&x| x as f64 / temp).collect();
    let kth = if s.top_k > 0 && s.top_k < scaled.len() {
        let mut sorted = scaled.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        sorted[s.top_k - 1]
    } else {
        f64::NEG_INFINITY
    };
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scaled
        .iter()
        .map(|&x| {
            if x < kth || !x.is_finite() {
                0.0
            } else {
                (x - max).exp()
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return argmax(logits) as u32;
    }
    let mut r = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            last = i;
            r -= w;
            if r <= 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_ties_and_excludes_the_rest() {
        let logits = [0.0f32, 5.0, 5.0, 4.0, -3.0];
        let s = Sampling {
            temperature: 0.2,
            top_k: 2,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = [0usize; 5];
        for _ in 0..200 {
            seen[sample(&logits, &s, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3] + seen[4], 0);
        assert!(seen[1] > 50 && seen[2] > 50, "{seen:?}");
    }

    #[test]
    fn low_temperature_sharpens_towards_the_argmax() {
        let logits = [1.0f32, 2.0, 0.0];
        let s = Sampling {
            temperature: 0.05,
            top_k: 50,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!((0..100).all(|_| sample(&logits, &s, &mut rng) == 1));
    }
}

#[cfg(test)]
mod fixture_tests {
    //! Batch size never changes a token, on the tiny LLaVA fixtures of both layouts.
    use std::path::{Path, PathBuf};

    use sightline_model::generate::GenerateOptions;

    use super::*;
    use crate::llava::{Llava, LlavaOptions};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn prompts(llava: &Llava) -> Vec<(String, PathBuf)> {
        let img = llava.image_prompt_token();
        let images = [
            root().join("data/llava/examples/extreme_ironing.jpg"),
            root().join("data/unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png"),
        ];
        // Same-length pairs (one-token object names) and a longer one.
        ["dog", "cat", "tree", "a red traffic light near the road"]
            .iter()
            .enumerate()
            .flat_map(|(k, obj)| {
                let q = format!("###Human: {img}\nIs there a {obj} in the image?###Assistant:");
                images
                    .iter()
                    .map(move |p| (q.clone(), p.clone()))
                    .take(1 + k % 2)
            })
            .collect()
    }

    fn embeds(llava: &Llava, cases: &[(String, PathBuf)]) -> Vec<BatchPrompt> {
        cases
            .iter()
            .enumerate()
            .map(|(i, (q, p))| BatchPrompt {
                embeds: llava.prompt_embeds(q, Some(p)).unwrap().squeeze(0).unwrap(),
                seed: 42 + i as u64,
            })
            .collect()
    }

    fn run(llava: &Llava, prompts: &[BatchPrompt], d: &Decoding, bs: usize) -> Vec<BatchOutput> {
        let mut out: Vec<Option<BatchOutput>> = vec![None; prompts.len()];
        llava
            .generate_batched(prompts, d, bs, &mut |done| {
                for (i, o) in done {
                    out[*i] = Some(o.clone());
                }
                Ok(())
            })
            .unwrap();
        out.into_iter().map(Option::unwrap).collect()
    }

    #[test]
    fn batch_size_never_changes_tokens() {
        let f = root().join("tests/fixtures/llava");
        let models = [
            (f.join("tiny-llava-hf"), None),
            (f.join("tiny-llava-orig"), Some(f.join("tiny-clip"))),
        ];
        for (dir, tower) in models {
            let opts = LlavaOptions {
                vision_tower: tower,
                ..Default::default()
            };
            let llava = Llava::load(&dir, &opts).unwrap();
            let cases = prompts(&llava);
            let ps = embeds(&llava, &cases);
            let lens: Vec<usize> = ps.iter().map(|p| p.embeds.dim(0).unwrap()).collect();
            assert!(lens.windows(2).any(|w| w[0] == w[1]), "{lens:?}");
            let greedy = Decoding {
                max_new_tokens: 8,
                min_new_tokens: 0,
                sampling: None,
                stop: vec![],
            };
            let one = run(&llava, &ps, &greedy, 1);
            assert_eq!(one, run(&llava, &ps, &greedy, 4), "{}", dir.display());
            // The single-prompt path (`Llava::generate`) agrees with the batched one.
            let single = llava
                .generate(
                    &cases[0].0,
                    Some(&cases[0].1),
                    &GenerateOptions {
                        max_new_tokens: 8,
                        stop_at_eos: true,
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(single.tokens, one[0].tokens);
            let sampled = Decoding {
                sampling: Some(Sampling {
                    temperature: 1.0,
                    top_k: 50,
                }),
                min_new_tokens: 1,
                ..greedy
            };
            let s1 = run(&llava, &ps, &sampled, 1);
            assert_eq!(s1, run(&llava, &ps, &sampled, 3));
            assert!(s1
                .iter()
                .all(|o| o.tokens.first() != llava.tokenizer.eos_id.as_ref()));
        }
    }
}
