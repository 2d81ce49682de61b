//! Text generation with a KV cache: greedy (what lm-eval's `generate_until` does) and
//! temperature / top-k / top-p sampling with a seeded RNG.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::llama::{argmax, KvCache, Llama};
use crate::tokenizer::Tokenizer;

/// Decoding settings. `temperature == 0` means greedy.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation stops once any of these appears in the decoded text, which is cut before it.
    pub stop: Vec<String>,
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = off).
    pub top_p: f64,
    pub seed: u64,
    /// Stop at the tokenizer's EOS token.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            stop: Vec::new(),
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 1234,
            stop_at_eos: true,
        }
    }
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Decoded text (special tokens skipped), cut at the first stop string.
    pub text: String,
    /// Generated token ids (EOS included if it ended the generation).
    pub tokens: Vec<u32>,
}

/// Generates from prompt token ids.
pub fn generate_ids(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Generation> {
    generate_ids_with(model, tok, prompt, opts, &mut |_| true)
}

/// Generates from prompt input embeddings `[1, t, hidden]` (a multimodal prompt with image
/// features spliced in, or embedded token ids); only new tokens are returned, as transformers'
/// `generate(inputs_embeds=...)` does.
pub fn generate_embeds(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &Tensor,
    opts: &GenerateOptions,
) -> Result<Generation> {
    generate_embeds_with(model, tok, prompt, opts, &mut |_| true)
}

/// Called with the tokens generated so far after each step; `false` stops the generation
/// there (a streaming client that went away). The tokens are what [`Generation::tokens`]
/// will hold, before any stop-string cut.
pub type StepHook<'a> = dyn FnMut(&[u32]) -> bool + 'a;

/// [`generate_ids`] with a hook after each generated token (`sightline serve` streams text
/// from it). The tokens, and so the text, are those of [`generate_ids`].
pub fn generate_ids_with(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_step: &mut StepHook<'_>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Request(
            "the prompt encodes to no tokens and the tokenizer adds no BOS: nothing to condition on".into(),
        ));
    }
    let ids = Tensor::from_slice(prompt, (1, prompt.len()), model.device())?;
    generate_embeds_with(model, tok, &model.embed(&ids)?, opts, on_step)
}

/// [`generate_embeds`] with a hook after each generated token ([`StepHook`]).
pub fn generate_embeds_with(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &Tensor,
    opts: &GenerateOptions,
    on_step: &mut StepHook<'_>,
) -> Result<Generation> {
    let (b, t, _) = prompt.dims3()?;
    if b != 1 || t == 0 {
        return Err(Error::Request(format!(
            "generation needs one non-empty prompt, got {b} prompts of {t} positions"
        )));
    }
    let dev = model.device();
    let max_pos = model.config.max_position_embeddings;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut cache = KvCache::default();
    let mut tokens: Vec<u32> = Vec::new();
    let mut input = prompt.clone();
    for _ in 0..opts.max_new_tokens {
        if cache.len() + input.dim(1)? > max_pos {
            break;
        }
        let logits: Vec<f32> = model
            .forward_last_embeds(&input, Some(&mut cache))?
            .flatten_all()?
            .to_vec1()?;
        let next = if opts.temperature <= 0.0 {
            argmax(&logits) as u32
        } else {
            sample(&logits, opts, &mut rng)
        };
        tokens.push(next);
        if !on_step(&tokens) || (opts.stop_at_eos && Some(next) == tok.eos_id) {
            break;
        }
        if !opts.stop.is_empty() {
            let mut text = tok.decode(&tokens, true)?;
            if let Some(cut) = first_stop(&text, &opts.stop) {
                text.truncate(cut);
                return Ok(Generation { text, tokens });
            }
        }
        input = model.embed(&Tensor::from_slice(&[next], (1, 1), dev)?)?;
    }
    let text = tok.decode(&tokens, true)?;
    Ok(Generation { text, tokens })
}

/// Generates from a text prompt, with BOS as the tokenizer config says.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &str,
    opts: &GenerateOptions,
) -> Result<Generation> {
    let ids = tok.encode_prompt(prompt)?;
    generate_ids(model, tok, &ids, opts)
}

/// Byte offset where the earliest stop string starts.
pub fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Samples from `softmax(logits / temperature)` restricted by top-k, then top-p.
fn sample(logits: &[f32], opts: &GenerateOptions, rng: &mut ChaCha8Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if opts.top_k > 0 {
        order.truncate(opts.top_k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / opts.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if opts.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= opts.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        r -= p;
        if r <= 0.0 {
            return i as u32;
        }
    }
    order[order.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_stop_wins() {
        let stops = vec![".".to_string(), "\n".to_string()];
        assert_eq!(first_stop("ab\ncd.", &stops), Some(2));
        assert_eq!(first_stop("abc", &stops), None);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1f32, 2.0, 1.9, -1.0];
        let opts = GenerateOptions {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..20 {
            assert_eq!(sample(&logits, &opts, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_restricts_to_nucleus() {
        // probs ~ [0.0, 0.5, 0.5, 0.0]: p = 0.4 keeps only the first of the top two.
        let logits = [-30.0f32, 0.0, 0.0, -30.0];
        let opts = GenerateOptions {
            temperature: 1.0,
            top_p: 0.4,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(sample(&logits, &opts, &mut rng), 1);
        }
    }
}
