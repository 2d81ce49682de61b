//! A model's tokenizer: `tokenizer.json` (HF fast-tokenizer semantics, which is what
//! `AutoTokenizer` and therefore lm-evaluation-harness use) plus the special-token settings of
//! `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A loaded tokenizer with its BOS/EOS ids and the BOS policy for generation.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it came from, for error messages.
    pub path: PathBuf,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// The unknown token: `tokenizer_config.json`'s `unk_token` when the vocabulary holds it,
    /// else `<unk>` when it does (transformers' Llama default). LLaVA pads with it
    /// (`tokenizer.pad_token = tokenizer.unk_token`); SmolLM2 names `<|endoftext|>`.
    pub unk_id: Option<u32>,
    /// `add_bos_token` from `tokenizer_config.json`, when it says so explicitly.
    add_bos_token: Option<bool>,
    /// `clean_up_tokenization_spaces` from `tokenizer_config.json` (transformers 4.46 default:
    /// false), applied by [`Tokenizer::decode`] as transformers' `decode` does.
    clean_up_spaces: bool,
}

/// `bos_token` in `tokenizer_config.json` is either a string or an AddedToken object.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// What [`Tokenizer::from_bytes`] checks before handing `tokenizer.json` to the tokenizers
/// crate: the whole file is JSON and its `decoder` parses (the rest is skipped unread).
#[derive(serde::Deserialize)]
struct DecoderProbe {
    #[serde(default)]
    #[allow(dead_code)]
    decoder: Option<serde_json::Value>,
}

/// Refuses a vocabulary whose largest id is far beyond its number of tokens. The tokenizers
/// crate walks every id up to the largest when it saves a tokenizer (and prints each missing
/// one), and a grown embedding gets a row per id: one token with id 65,555,554 in a 20 KB file
/// made saving take minutes (found by fuzzing; fuzz/regressions/tokenizer/). Ids are
/// contiguous in every tokenizer transformers writes; up to twice the token count is allowed.
fn check_ids(inner: &tokenizers::Tokenizer, path: &Path) -> Result<()> {
    let vocab = inner.get_vocab(true);
    let count = vocab.len() as u64;
    let Some(max) = vocab.values().max().map(|&m| u64::from(m)) else {
        return Ok(());
    };
    if max >= 2 * count.max(1) {
        return Err(Error::format(
            path,
            format!(
                "token id {max} is far beyond the vocabulary's {count} tokens (ids must run \
                 0, 1, 2, ... with few gaps; saving the tokenizer or growing the embedding \
                 would walk every missing id)"
            ),
        ));
    }
    Ok(())
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and, if present, `dir/tokenizer_config.json`.
    /// `fallback_bos`/`fallback_eos` come from `config.json` for tokenizers that name none.
    pub fn from_dir(
        dir: &Path,
        fallback_bos: Option<u32>,
        fallback_eos: Option<u32>,
    ) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::format(
                dir,
                "no tokenizer.json (sightline needs the HF fast-tokenizer file; convert a \
                 SentencePiece tokenizer.model with transformers' LlamaTokenizerFast first)",
            ));
        }
        // Size-capped before parsing: a ten-million-entry vocabulary would take gigabytes.
        let read = |p: &Path| {
            sightline_guard::read_capped(p, &sightline_guard::limits::TOKENIZER_BYTES)
                .map_err(|e| Error::Config(e.to_string()))
        };
        let json = read(&path)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.is_file() {
            Some(read(&cfg_path)?)
        } else {
            None
        };
        Self::from_bytes(&json, cfg.as_deref(), path, fallback_bos, fallback_eos)
    }

    /// Builds a tokenizer from the bytes of `tokenizer.json` and `tokenizer_config.json`.
    pub fn from_bytes(
        json: &[u8],
        config: Option<&[u8]>,
        path: PathBuf,
        fallback_bos: Option<u32>,
        fallback_eos: Option<u32>,
    ) -> Result<Self> {
        // The JSON, and the `decoder` as plain JSON, first: tokenizers 0.22 panics
        // (`expect("Helper")`) instead of returning an error when the `decoder` breaks off or
        // holds text serde_json refuses, such as a lone surrogate escape (found by fuzzing;
        // the inputs are in fuzz/regressions/tokenizer/). A decoder that parses as JSON gets
        // past that `expect`.
        serde_json::from_slice::<DecoderProbe>(json)
            .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| Error::format(&path, format!("not a valid tokenizer.json: {e}")))?;
        check_ids(&inner, &path)?;
        let cfg_path = path.with_file_name("tokenizer_config.json");
        let cfg: serde_json::Value = match config {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| Error::format(&cfg_path, format!("invalid JSON: {e}")))?,
            None => serde_json::Value::Null,
        };
        let lookup = |key: &str| -> Result<Option<u32>> {
            match token_string(cfg.get(key)) {
                Some(tok) => inner.token_to_id(&tok).map(Some).ok_or_else(|| {
                    Error::format(
                        &cfg_path,
                        format!("{key} `{tok}` is not in the vocabulary of tokenizer.json"),
                    )
                }),
                None => Ok(None),
            }
        };
        let bos_id = lookup("bos_token")?.or(fallback_bos);
        let eos_id = lookup("eos_token")?.or(fallback_eos);
        let unk_id = token_string(cfg.get("unk_token"))
            .and_then(|t| inner.token_to_id(&t))
            .or_else(|| inner.token_to_id("<unk>"));
        let add_bos_token = cfg.get("add_bos_token").and_then(|v| v.as_bool());
        let clean_up_spaces = cfg
            .get("clean_up_tokenization_spaces")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Self {
            inner,
            path,
            bos_id,
            eos_id,
            unk_id,
            add_bos_token,
            clean_up_spaces,
        })
    }

    /// Encodes `text` with no special tokens, as the harness does (`add_special_tokens=False`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| {
            Error::Request(format!(
                "{}: cannot encode {text:?}: {e}",
                self.path.display()
            ))
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes a generation prompt the way `tokenizer(text)` does in transformers: BOS as
    /// `add_bos_token` in `tokenizer_config.json` says, else as the tokenizer's post-processor
    /// says.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        match self.add_bos_token {
            Some(add) => {
                let mut ids = Vec::new();
                if add {
                    ids.extend(self.bos_id);
                }
                ids.extend(self.encode(text)?);
                Ok(ids)
            }
            None => {
                let enc = self.inner.encode(text, true).map_err(|e| {
                    Error::Request(format!(
                        "{}: cannot encode {text:?}: {e}",
                        self.path.display()
                    ))
                })?;
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// Decodes ids, optionally skipping special tokens (BOS/EOS/added specials).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Request(format!("{}: cannot decode: {e}", self.path.display())))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// One past the largest id the tokenizer can produce (added tokens included).
    pub fn id_bound(&self) -> usize {
        let max = self.inner.get_vocab(true).into_values().max();
        max.map_or(0, |m| m as usize + 1)
    }

    /// The id of a token string (added tokens included), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Adds a special token at the end of the vocabulary unless it is already there, as
    /// `tokenizer.add_tokens([token], special_tokens=True)` does (LLaVA grows its tokenizer
    /// with `<im_patch>`, `<im_start>`, `<im_end>` this way). Returns its id.
    pub fn add_special_token(&mut self, token: &str) -> u32 {
        if let Some(id) = self.inner.token_to_id(token) {
            return id;
        }
        let t = tokenizers::AddedToken::from(token.to_string(), true).normalized(false);
        self.inner.add_special_tokens(&[t]);
        self.inner.token_to_id(token).unwrap_or(u32::MAX)
    }

    /// The tokenizer as `tokenizer.json` text (with any tokens added since loading), for
    /// saving next to trained weights.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::format(&self.path, format!("cannot serialise the tokenizer: {e}")))
    }

    /// The string of one token id, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// transformers' `PreTrainedTokenizerBase.clean_up_tokenization` (v4.46): drops the space
/// before punctuation and English contractions.
///
/// ```
/// assert_eq!(sightline_model::tokenizer::clean_up_tokenization("I do n't , really ."), "I don't, really.");
/// ```
pub fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    RULES
        .iter()
        .fold(text.to_string(), |s, (from, to)| s.replace(from, to))
}
