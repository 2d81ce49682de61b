//! COCO / Flickr30k caption metrics as Sight-Beyond-Text @47f96a32
//! `llava/eval/mmoverall/coco_metric.py` runs pycocoevalcap (salaniz/pycocoevalcap @ad63453,
//! PyPI 1.2): PTB-tokenise references and predictions ([`ptb_tokenize`]), then BLEU-1..4
//! ([`coco_bleu`]), ROUGE-L ([`coco_rouge`]) and CIDEr-D ([`cider`]). Spec:
//! `spec/multimodal-eval.md` E5.
//!
//! Scores are pycocoevalcap's raw values (BLEU and ROUGE-L in 0..1, CIDEr-D in 0..10); SBT
//! multiplies every metric by 100 when it reports. METEOR and SPICE need their Java jars and
//! are not computed here: [`CaptionScores::meteor`] and [`CaptionScores::spice`] are `None`.
//!
//! ```
//! use std::collections::HashMap;
//! use sightline_metrics::caption::score;
//! let refs = HashMap::from([
//!     ("1".to_string(), vec!["A dog runs on the grass.".to_string(), "A brown dog running.".into()]),
//!     ("2".to_string(), vec!["Two cats sleep on a bed.".to_string()]),
//! ]);
//! let cands = [("1".to_string(), "A dog running on grass".to_string()),
//!              ("2".to_string(), "Two cats on a bed".to_string())];
//! let s = score(&cands, &refs).unwrap();
//! assert!(s.bleu[0] > 0.5 && s.cider_d > 0.0 && s.meteor.is_none());
//! ```

pub mod cider;
pub mod coco_bleu;
pub mod coco_rouge;
pub mod ptb_tokenize;

use std::collections::{HashMap, HashSet};

use thiserror::Error;

/// Inputs pycocoevalcap would reject (with an assertion or a `KeyError`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaptionError {
    #[error("no candidate captions to score")]
    Empty,
    #[error("candidate {0:?} has no references")]
    MissingReferences(String),
    #[error("candidate {0:?} has an empty reference list")]
    EmptyReferences(String),
    #[error("candidate id {0:?} appears twice")]
    DuplicateId(String),
}

/// One image's scores, in the order of the candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScores {
    pub id: String,
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider_d: f64,
}

/// Corpus scores (pycocoevalcap scale) plus each image's.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionScores {
    /// BLEU-1..4 (corpus level, option `closest`).
    pub bleu: [f64; 4],
    /// Mean ROUGE-L over images.
    pub rouge_l: f64,
    /// Mean CIDEr-D over images.
    pub cider_d: f64,
    /// Always `None`: METEOR 1.5 is a Java jar with no faithful Rust port.
    pub meteor: Option<f64>,
    /// Always `None`: SPICE is a Java jar with no faithful Rust port.
    pub spice: Option<f64>,
    pub per_image: Vec<ImageScores>,
}

/// Scores one caption per image against that image's references, PTB-tokenising both.
///
/// `candidates` are `(image id, caption)` in evaluation order; every id must be unique and
/// have a non-empty list in `references` (extra references are ignored, as SBT ignores images
/// without predictions).
pub fn score(
    candidates: &[(String, String)],
    references: &HashMap<String, Vec<String>>,
) -> Result<CaptionScores, CaptionError> {
    let ptb = |c: &str| ptb_tokenize::tokenize(&c.replace('\n', " "));
    let (hyps, refs) = checked_pairs(candidates, references, ptb)?;
    Ok(score_tokenized(candidates, &hyps, &refs))
}

/// Checks that `candidates` is non-empty with unique ids that all have non-empty references,
/// and returns the candidates' and their references' text passed through `prepare`.
fn checked_pairs(
    candidates: &[(String, String)],
    references: &HashMap<String, Vec<String>>,
    prepare: impl Fn(&str) -> String,
) -> Result<(Vec<String>, Vec<Vec<String>>), CaptionError> {
    if candidates.is_empty() {
        return Err(CaptionError::Empty);
    }
    let mut seen = HashSet::new();
    let mut hyps = Vec::with_capacity(candidates.len());
    let mut refs = Vec::with_capacity(candidates.len());
    for (id, caption) in candidates {
        if !seen.insert(id.as_str()) {
            return Err(CaptionError::DuplicateId(id.clone()));
        }
        let r = references
            .get(id)
            .ok_or_else(|| CaptionError::MissingReferences(id.clone()))?;
        if r.is_empty() {
            return Err(CaptionError::EmptyReferences(id.clone()));
        }
        hyps.push(prepare(caption));
        refs.push(r.iter().map(|c| prepare(c)).collect());
    }
    Ok((hyps, refs))
}

/// The scorers on already-tokenised text (space-joined tokens), for callers that tokenise with
/// the real Java PTBTokenizer. `ids`, `hyps` and `refs` are parallel; every `refs[i]` non-empty.
fn score_tokenized(
    ids: &[(String, String)],
    hyps: &[String],
    refs: &[Vec<String>],
) -> CaptionScores {
    let pairs: Vec<(&str, &[String])> = hyps
        .iter()
        .zip(refs)
        .map(|(h, r)| (h.as_str(), r.as_slice()))
        .collect();
    let (bleu, bleu_per_image) = coco_bleu::bleu(&pairs);
    let rouge: Vec<f64> = pairs
        .iter()
        .map(|(h, r)| coco_rouge::rouge_l(h, r))
        .collect();
    let (cider_d, cider_per_image) = cider::cider_d(&pairs);
    let per_image = ids
        .iter()
        .zip(bleu_per_image)
        .zip(&rouge)
        .zip(cider_per_image)
        .map(|((((id, _), bleu), &rouge_l), cider_d)| ImageScores {
            id: id.clone(),
            bleu,
            rouge_l,
            cider_d,
        })
        .collect();
    CaptionScores {
        bleu,
        rouge_l: cider::numpy_mean(&rouge),
        cider_d,
        meteor: None,
        spice: None,
        per_image,
    }
}

/// Like [`score`] but on captions that are already PTB-tokenised (for example by the Java
/// tokenizer): `candidates` are `(id, tokenised caption)`.
pub fn score_pretokenized(
    candidates: &[(String, String)],
    references: &HashMap<String, Vec<String>>,
) -> Result<CaptionScores, CaptionError> {
    let (hyps, refs) = checked_pairs(candidates, references, str::to_string)?;
    Ok(score_tokenized(candidates, &hyps, &refs))
}
