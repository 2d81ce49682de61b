//! A record → `(input_ids, labels)` exactly as LLaVA's `LazySupervisedDataset.__getitem__`
//! builds them (spec llava-training.md T2, T6; UCSC-VLAA/Sight-Beyond-Text @ 47f96a32
//! `llava/train/train.py`, `llava/mm_utils.py tokenizer_image_token`): `input_ids` hold
//! [`IMAGE_TOKEN_INDEX`] (−200) where the image goes, `labels` hold [`IGNORE_INDEX`] (−100)
//! where no loss is taken. The trainer reuses this; `sightline data preview` shows it.
//!
//! `tok(s)` below is one tokenizer call, BOS included (`tokenizer(s).input_ids`), or
//! `tokenizer_image_token(s)` when the record has an image (one call per chunk around each
//! `<image>`, one BOS, −200 between chunks).
//!
//! - **v0** (`_mask_targets`): mask `[0, tok(header))`; then for each formatted turn
//!   `"### R: value\n"` of length `len_k = tok(turn)`: mask `[cur+2, cur+len_k)` if its `from`
//!   is exactly `"human"`; `cur += len_k`. Each `len_k` counts a BOS the joined text lacks, so
//!   the windows drift by one token per turn; that quirk is reproduced, not fixed.
//! - **v1 / llama-2**: mask `[0, 1)`; split the prompt on `sep2` (`</s>`) into rounds, stop at
//!   an empty one or one that does not split into exactly two parts on `sep`
//!   (`" ASSISTANT: "` / `"[/INST] "`); mask `[cur, cur + tok(instruction) − 2)`,
//!   `cur += tok(round)`; mask `[cur, end)`. If `cur < model_max_length` and `cur` differs
//!   from the number of non-pad tokens, LLaVA masks the whole sample and prints a warning;
//!   here that is [`Error::Mismatch`] with where the round tokenization and the conversation
//!   part ways ([`OnMismatch::MaskAll`] reproduces LLaVA; the trainer offers it as a skip flag).
//! - **plain**: mask `tok("<image>") = [BOS, −200]`; the caption and its `\n` are targets.
//! - Text-only records are truncated to `model_max_length` tokens (2048); image records are not.
//!
//! **Tokenizer.** LLaVA ran transformers 4.31's *slow* `LlamaTokenizer`, which strips the spaces
//! around added tokens (`<im_start>`, `<im_end>`, LLaMA-1's `</s>`) and so tokenizes e.g.
//! `"USER: <im_start>"` without the `▁` before `<im_start>` (spec T5). sightline uses the fast
//! `tokenizer.json`, as transformers 4.46.3's `LlamaTokenizerFast` does, and matches *that*
//! token for token (`tests/fixtures/data/golden.json`, written by
//! `scripts/reference/make_data_fixtures.py`): around added tokens a sample can differ from what
//! the original LLaVA code fed its model by a `▁`, and the label arithmetic, written for the
//! slow tokenizer, can land one token off there. The golden fixtures pin what the fast
//! tokenizer gives.

use sightline_model::Tokenizer;
use sightline_vision::llava::{IM_END, IM_PATCH, IM_START};

pub use sightline_vision::llava::IMAGE_TOKEN_INDEX;

use crate::error::{Error, Result};
use crate::preprocess::{self, Prompt, Template};
use crate::record::{Record, IMAGE_PLACEHOLDER};

/// LLaVA's `IGNORE_INDEX`: a label that takes no loss.
pub const IGNORE_INDEX: i64 = -100;

/// What to do when LLaVA's round count disagrees with the tokenized conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnMismatch {
    /// Return [`Error::Mismatch`] with a token-level diff.
    #[default]
    Error,
    /// Do what LLaVA does: keep the sample with every label masked (it trains on nothing).
    MaskAll,
}

/// Settings that LLaVA takes from its training arguments.
#[derive(Debug, Clone)]
pub struct Options {
    /// `mm_use_im_start_end` (True in every SBT script): `<image>` becomes
    /// `<im_start><image><im_end>` in image records.
    pub mm_use_im_start_end: bool,
    /// `model_max_length` (2048): text-only records are truncated to it, and the mismatch check
    /// only applies below it.
    pub model_max_length: usize,
    /// The pad id that `ne(pad_token_id)` counts against: `[PAD]` under `v0`, the unknown
    /// token otherwise (T3.5); see [`Options::for_template`].
    pub pad_id: Option<u32>,
    pub on_mismatch: OnMismatch,
}

impl Options {
    /// LLaVA's settings for `template`: `mm_use_im_start_end`, 2048 tokens, and the pad token
    /// `train.py` sets (`[PAD]` for `v0` if the tokenizer has one, else its `unk_token`:
    /// `<unk>` for LLaMA, whatever `tokenizer_config.json` names for others).
    pub fn for_template(template: &Template, tokenizer: &Tokenizer) -> Self {
        let pad_id = match template.name() {
            "v0" | "default" => tokenizer.token_to_id("[PAD]"),
            _ => tokenizer.unk_id,
        };
        Self {
            mm_use_im_start_end: true,
            model_max_length: 2048,
            pad_id,
            on_mismatch: OnMismatch::Error,
        }
    }
}

/// Grows a tokenizer as LLaVA's `train.py` does before training (spec M6.3), in its order:
/// `[PAD]` under `v0`/`default` when the tokenizer has none (other templates pad with `<unk>`),
/// then `<im_patch>` (`mm_use_im_patch_token`, default True) and, with `mm_use_im_start_end`,
/// `<im_start>`, `<im_end>`. Tokens already present keep their ids. (LLaVA adds the image
/// tokens only when it has a vision tower; they change nothing for text without them.)
pub fn add_training_tokens(
    tokenizer: &mut Tokenizer,
    template: &Template,
    mm_use_im_start_end: bool,
) {
    if matches!(template.name(), "v0" | "default") && tokenizer.token_to_id("[PAD]").is_none() {
        tokenizer.add_special_token("[PAD]");
    }
    tokenizer.add_special_token(IM_PATCH);
    if mm_use_im_start_end {
        tokenizer.add_special_token(IM_START);
        tokenizer.add_special_token(IM_END);
    }
}

/// One training sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The text that was tokenized.
    pub prompt: String,
    /// Token ids, [`IMAGE_TOKEN_INDEX`] where the image features go.
    pub input_ids: Vec<i64>,
    /// Same length; [`IGNORE_INDEX`] where no loss is taken, else the token id.
    pub labels: Vec<i64>,
    pub has_image: bool,
    /// LLaVA's mismatch rule masked everything ([`OnMismatch::MaskAll`] only).
    pub mismatch: bool,
}

impl Sample {
    /// How many positions take a loss.
    pub fn trained(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Turns records into samples with one tokenizer and template.
pub struct Preprocess<'t> {
    tokenizer: &'t Tokenizer,
    template: Template,
    opts: Options,
}

impl<'t> Preprocess<'t> {
    pub fn new(tokenizer: &'t Tokenizer, template: Template, opts: Options) -> Self {
        Self {
            tokenizer,
            template,
            opts,
        }
    }

    pub fn template(&self) -> &Template {
        &self.template
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }

    /// `tokenizer(text).input_ids`.
    fn tok(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self
            .tokenizer
            .encode_prompt(text)?
            .into_iter()
            .map(i64::from)
            .collect())
    }

    /// `tokenizer(text, max_length=model_max_length, truncation=True).input_ids`.
    fn tok_truncated(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = self.tok(text)?;
        ids.truncate(self.opts.model_max_length);
        Ok(ids)
    }

    /// `tokenizer_image_token(text)`: each chunk around `<image>` is its own tokenizer call; if
    /// the first chunk starts with BOS, BOS is kept once and the first token of *every* chunk
    /// dropped; one −200 between chunks.
    fn tok_image(&self, text: &str) -> Result<Vec<i64>> {
        let chunks = text
            .split(IMAGE_PLACEHOLDER)
            .map(|c| self.tok(c))
            .collect::<Result<Vec<_>>>()?;
        let bos = self.tokenizer.bos_id.map(i64::from);
        // `split` yields at least one chunk, and `chunks[0][0]` is read only when it exists.
        let offset = usize::from(chunks[0].first().is_some_and(|&t| Some(t) == bos));
        let mut out = Vec::new();
        if offset == 1 {
            out.push(chunks[0][0]);
        }
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                out.push(IMAGE_TOKEN_INDEX);
            }
            out.extend(c.iter().skip(offset));
        }
        Ok(out)
    }

    /// `tok_image` for image records, else the plain tokenizer call.
    fn tok_for(&self, text: &str, has_image: bool) -> Result<Vec<i64>> {
        if has_image {
            self.tok_image(text)
        } else {
            self.tok(text)
        }
    }

    /// `input_ids.ne(pad_token_id).sum()`.
    fn count_not_pad(&self, ids: &[i64]) -> usize {
        let pad = self.opts.pad_id.map(i64::from);
        ids.iter().filter(|&&t| Some(t) != pad).count()
    }

    /// The sample LLaVA trains on for `record`.
    pub fn sample(&self, record: &Record) -> Result<Sample> {
        let has_image = record.image.is_some();
        let turns = preprocess::turns_for(record, self.opts.mm_use_im_start_end);
        let prompt = preprocess::build(&self.template, &turns, record.id.as_deref())?;
        if has_image && self.opts.mm_use_im_start_end && prompt.text().contains(IM_START) {
            for t in [IM_START, IM_END] {
                if self.tokenizer.token_to_id(t).is_none() {
                    return Err(Error::Usage(format!(
                        "{}: the tokenizer has no {t} token; LLaVA adds <im_patch>, <im_start>, \
                         <im_end> before training with mm_use_im_start_end (add them, or turn \
                         mm_use_im_start_end off)",
                        self.tokenizer.path.display()
                    )));
                }
            }
        }
        let (input_ids, labels, mismatch) = match &prompt {
            Prompt::SpeakerSignal {
                conversation,
                header,
                turns,
                speakers,
            } => {
                let (ids, labels) =
                    self.speaker_signal(conversation, header, turns, speakers, has_image)?;
                (ids, labels, false)
            }
            Prompt::Rounds {
                conversation,
                sep,
                sep2,
            } => self.rounds(conversation, sep, sep2, has_image, record.id.as_deref())?,
            Prompt::Plain { conversation } => {
                let ids = self.tok_image(conversation)?;
                let mut labels = ids.clone();
                let n = self.tok_image(IMAGE_PLACEHOLDER)?.len();
                mask(&mut labels, 0, n);
                (ids, labels, false)
            }
        };
        Ok(Sample {
            prompt: prompt.text().to_string(),
            input_ids,
            labels,
            has_image,
            mismatch,
        })
    }

    /// v0: `_add_speaker_and_signal` + `_tokenize_fn` + `_mask_targets`.
    fn speaker_signal(
        &self,
        conversation: &str,
        header: &str,
        turns: &[String],
        speakers: &[String],
        has_image: bool,
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        let ids = if has_image {
            self.tok_image(conversation)?
        } else {
            self.tok_truncated(conversation)?
        };
        let len = |s: &str| -> Result<usize> {
            Ok(if has_image {
                self.tok_image(s)?.len()
            } else {
                self.count_not_pad(&self.tok_truncated(s)?)
            })
        };
        let mut labels = ids.clone();
        let mut cur = len(header)?;
        mask(&mut labels, 0, cur);
        for (turn, speaker) in turns.iter().zip(speakers) {
            let n = len(turn)?;
            if speaker == "human" {
                mask(&mut labels, cur + 2, cur + n);
            }
            cur += n;
        }
        Ok((ids, labels))
    }

    /// v1 / llama-2: `preprocess_v1` / `preprocess_llama_2`. Returns (ids, labels, mismatch).
    fn rounds(
        &self,
        conversation: &str,
        sep: &str,
        sep2: &str,
        has_image: bool,
        id: Option<&str>,
    ) -> Result<(Vec<i64>, Vec<i64>, bool)> {
        let ids = if has_image {
            self.tok_image(conversation)?
        } else {
            self.tok_truncated(conversation)?
        };
        let mut labels = ids.clone();
        let total = self.count_not_pad(&ids);
        let mut cur = 1;
        mask(&mut labels, 0, cur);
        // (start, text) of every round that was counted, and why counting stopped early.
        let mut counted: Vec<(usize, &str)> = Vec::new();
        let mut stopped_at: Option<(usize, usize)> = None; // (round number, parts)
        for (r, rou) in conversation.split(sep2).enumerate() {
            if rou.is_empty() {
                break;
            }
            let parts: Vec<&str> = rou.split(sep).collect();
            if parts.len() != 2 {
                stopped_at = Some((r, parts.len()));
                break;
            }
            let instruction = format!("{}{sep}", parts[0]);
            let round_len = self.tok_for(rou, has_image)?.len();
            // Python: target[cur : cur + tok(instruction) - 2]; never negative here since
            // cur >= 1 and tok() >= 1.
            let instruction_len = self.tok_for(&instruction, has_image)?.len() as i64 - 2;
            mask(
                &mut labels,
                cur,
                (cur as i64 + instruction_len).max(0) as usize,
            );
            counted.push((cur, rou));
            cur += round_len;
        }
        let end = labels.len();
        mask(&mut labels, cur, end);
        if cur < self.opts.model_max_length && cur != total {
            match self.opts.on_mismatch {
                OnMismatch::MaskAll => {
                    labels.iter_mut().for_each(|l| *l = IGNORE_INDEX);
                    return Ok((ids, labels, true));
                }
                OnMismatch::Error => {
                    let diff = self.diff(&ids, &counted, stopped_at, cur, sep, sep2, has_image)?;
                    return Err(Error::Mismatch {
                        id: id.map(str::to_string),
                        counted: cur,
                        total,
                        diff,
                    });
                }
            }
        }
        Ok((ids, labels, false))
    }

    /// Where the round-by-round count and the conversation's tokens part ways.
    #[allow(clippy::too_many_arguments)]
    fn diff(
        &self,
        ids: &[i64],
        counted: &[(usize, &str)],
        stopped_at: Option<(usize, usize)>,
        cur: usize,
        sep: &str,
        sep2: &str,
        has_image: bool,
    ) -> Result<String> {
        // A round's own tokens (minus its BOS, which stands for the sep2 token split off) must
        // sit in the conversation at the round's start.
        for (k, &(start, rou)) in counted.iter().enumerate() {
            let alone = self.tok_for(rou, has_image)?;
            let body = &alone[1.min(alone.len())..];
            let there = &ids[start.min(ids.len())..(start + body.len()).min(ids.len())];
            if let Some(p) = body
                .iter()
                .zip(there)
                .position(|(a, b)| a != b)
                .or((there.len() < body.len()).then_some(there.len()))
            {
                return Ok(format!(
                    "round {} (token {}): the conversation has {} where the round alone \
                     tokenizes as {}",
                    k + 1,
                    start + p,
                    self.show(&ids[(start + p).min(ids.len())..]),
                    self.show(&body[p..]),
                ));
            }
        }
        if let Some((r, parts)) = stopped_at {
            return Ok(format!(
                "round {} contains {:?} {} time(s) where LLaVA's split needs exactly once (does \
                 a message contain the template's own separator?), so counting stopped at token \
                 {cur}, before {}",
                r + 1,
                sep,
                parts.saturating_sub(1),
                self.show(&ids[cur.min(ids.len())..]),
            ));
        }
        Ok(format!(
            "the rounds (split on {sep2:?}) end at token {cur}, and the conversation goes on with {}",
            self.show(&ids[cur.min(ids.len())..])
        ))
    }

    /// Up to 6 tokens as their vocabulary strings.
    fn show(&self, ids: &[i64]) -> String {
        if ids.is_empty() {
            return "nothing (its end)".to_string();
        }
        let mut s: Vec<String> = ids.iter().take(6).map(|&t| self.token_name(t)).collect();
        if ids.len() > 6 {
            s.push("…".into());
        }
        format!("[{}]", s.join(", "))
    }

    /// A token id as its vocabulary string (`<image>` for −200).
    pub fn token_name(&self, id: i64) -> String {
        if id == IMAGE_TOKEN_INDEX {
            return IMAGE_PLACEHOLDER.to_string();
        }
        u32::try_from(id)
            .ok()
            .and_then(|t| self.tokenizer.id_to_token(t))
            .map_or_else(|| format!("#{id}"), |t| format!("{t:?}"))
    }
}

/// Python's `labels[start:end] = IGNORE_INDEX` for non-negative bounds (clipped, empty when
/// `start >= end`).
fn mask(labels: &mut [i64], start: usize, end: usize) {
    let end = end.min(labels.len());
    if start < end {
        labels[start..end].fill(IGNORE_INDEX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_clips_like_python_slices() {
        let mut l = vec![1, 2, 3, 4];
        mask(&mut l, 3, 10);
        mask(&mut l, 2, 1);
        assert_eq!(l, [1, 2, 3, IGNORE_INDEX]);
    }
}
