//! The study file (`STUDY.toml`): what the experiment is, declared once. Bases, the vision
//! tower, how each training set is built (the `sightline data` verbs), the variants to train
//! (each an existing `sightline train` run file plus overrides), the tasks every model is
//! evaluated on, and the report's baseline. Unknown keys are an error naming them.
//!
//! Paths are relative to the current directory, as in run files. Three kinds of names are
//! not paths: `builtin:NAME` (models compiled into the binary), `bundled:REL` (files compiled
//! into the binary, written to `DIR/inputs/files/REL` by the study's first step) and hub ids
//! (`org/name[@rev]`, resolved from the Hugging Face cache by the commands that load them).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A whole study.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    #[serde(default)]
    pub study: Meta,
    /// `[[base]]`: the LLMs every variant is trained from (and evaluated as baselines).
    #[serde(rename = "base")]
    pub bases: Vec<Base>,
    /// The CLIP tower of the multimodal variants: a directory, a hub id or `builtin:tiny-clip`.
    pub vision_tower: Option<String>,
    /// `[[data]]`: named training sets, given or built from other sets.
    #[serde(default)]
    pub data: Vec<DataSet>,
    /// `[[variant]]`: the training runs, each crossed with every base.
    #[serde(default, rename = "variant")]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub train: TrainDefaults,
    #[serde(default)]
    pub eval: EvalSpec,
    #[serde(default)]
    pub report: ReportSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Shown in the plan.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Label of the base in the report (and prefix of its variants' labels when a study has
    /// several bases).
    pub name: String,
    /// An HF directory, a hub id or `builtin:stories260k`.
    pub model: String,
    /// `builtin:` bases only: the context length the materialised copy declares (LLaVA's `v0`
    /// image prompt needs more than stories260k's 512 positions).
    pub max_position_embeddings: Option<usize>,
}

/// One training set; exactly one of `file`, `strip_images`, `convert`, `sample` (alone, with
/// `from`) or `groups` says where it comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSet {
    pub name: String,
    /// A LLaVA-format JSON/JSONL file that exists (or `bundled:...`).
    pub file: Option<String>,
    /// Where the records' `image` paths resolve (`file` and `groups` sets).
    pub image_folder: Option<String>,
    /// The named set without images (`sightline data strip-images`).
    pub strip_images: Option<String>,
    /// Another format converted to LLaVA conversations (`sightline data convert`), then
    /// sampled when `sample` is given too.
    pub convert: Option<Convert>,
    /// A seeded uniform sample (`sightline data sample`) of `sample.from`, or of `convert`'s
    /// output.
    pub sample: Option<Sample>,
    /// The conversation / detail / reasoning groups (`sightline data groups`), usable as
    /// `NAME.conversation`, `NAME.detail` and `NAME.reasoning`.
    pub groups: Option<Groups>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Convert {
    /// alpaca, orca, sharegpt or llava-qa.
    pub format: String,
    pub file: String,
    /// More `sightline data convert` flags.
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// The set to sample (absent when the set is built by `convert`).
    pub from: Option<String>,
    pub count: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    pub conversation: String,
    pub detail: String,
    pub reasoning: String,
    #[serde(default = "default_group_count")]
    pub count: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Remove the images (text-only group runs).
    #[serde(default)]
    pub text_only: bool,
}

fn default_seed() -> u64 {
    42
}

fn default_group_count() -> usize {
    20_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// A `sightline train` run file; the study sets its model, data, tower, projector and
    /// output paths, so the file's own paths do not matter.
    pub run: String,
    /// The training set (a `[[data]]` name).
    pub data: String,
    /// The stage-1 variant whose projector this run starts from (`pretrain_mm_mlp_adapter`).
    pub stage1: Option<String>,
    /// `key=value` settings on top of `[train] overrides` and the run file.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Which evaluations the trained model gets: `text`, `image` (default: text for every
    /// variant but stage 1, image for every multimodal one).
    pub eval: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainDefaults {
    /// `key=value` settings applied to every variant.
    #[serde(default)]
    pub overrides: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Text tasks, run on every base and every variant (the decoder alone).
    pub text: Option<EvalSet>,
    /// Image tasks, run on the multimodal variants.
    pub image: Option<EvalSet>,
    /// Corruption sweeps of the image tasks.
    pub corrupt: Option<CorruptSpec>,
    /// Flags added to every `sightline eval` call (e.g. `--batch-size`).
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    /// Comma-separated tasks or groups, as `sightline eval --tasks`.
    pub tasks: String,
    pub limit: Option<usize>,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorruptSpec {
    /// ImageNet-C names (`sightline data corrupt --help` lists them).
    pub corruptions: Vec<String>,
    pub severities: Vec<u8>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// The label the others are compared with (default: the first base).
    pub baseline: Option<String>,
    /// A paragraph shown under the report's title (what the models are, caveats).
    pub note: Option<String>,
}

impl StudyFile {
    /// Parses a study file's text; `path` names it in errors.
    pub fn from_str(text: &str, path: &Path) -> Result<Self> {
        let s: StudyFile = toml::from_str(text)
            .map_err(|e| Error::config(path, sightline_train::config::toml_error_line(text, &e)))?;
        s.check(path)?;
        Ok(s)
    }

    /// Reads and checks a study file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_str(&text, path)
    }

    /// What serde cannot check: unique names, one source per data set, known references.
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::config(path, msg));
        if self.bases.is_empty() {
            return bad("no [[base]]: name at least one base model".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for n in self
            .bases
            .iter()
            .map(|b| &b.name)
            .chain(self.variants.iter().map(|v| &v.name))
        {
            if !valid_name(n) {
                return bad(format!(
                    "name `{n}`: use letters, digits, `-` and `_` only (it names folders)"
                ));
            }
            if !names.insert(n.clone()) {
                return bad(format!("name `{n}` is used twice (bases and variants)"));
            }
        }
        let mut sets = std::collections::BTreeSet::new();
        for d in &self.data {
            if !valid_name(&d.name) {
                return bad(format!(
                    "[[data]] name `{}`: use letters, digits, `-` and `_` only",
                    d.name
                ));
            }
            let sources = [
                d.file.is_some(),
                d.strip_images.is_some(),
                d.convert.is_some(),
                d.sample.as_ref().is_some_and(|s| s.from.is_some()),
                d.groups.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return bad(format!(
                    "[[data]] `{}`: give exactly one of file, strip_images, convert, \
                     sample.from, groups",
                    d.name
                ));
            }
            if d.sample.as_ref().is_some_and(|s| s.from.is_none()) && d.convert.is_none() {
                return bad(format!(
                    "[[data]] `{}`: sample needs `from` (or a convert to sample)",
                    d.name
                ));
            }
            if !sets.insert(d.name.clone()) {
                return bad(format!("[[data]] `{}` is defined twice", d.name));
            }
        }
        for v in &self.variants {
            if let Some(e) = &v.eval {
                if let Some(x) = e.iter().find(|x| !matches!(x.as_str(), "text" | "image")) {
                    return bad(format!(
                        "[[variant]] `{}`: eval `{x}` (expected \"text\" or \"image\")",
                        v.name
                    ));
                }
            }
            if let Some(s) = &v.stage1 {
                if !self.variants.iter().any(|o| &o.name == s) {
                    return bad(format!(
                        "[[variant]] `{}`: stage1 `{s}` is not a variant",
                        v.name
                    ));
                }
            }
        }
        if let Some(c) = &self.eval.corrupt {
            if c.severities.iter().any(|s| !(1..=5).contains(s)) {
                return bad("[eval.corrupt] severities must be 1 to 5".into());
            }
            // Each names a step folder (`eval-<label>-<corruption>-<severity>`), so `../..`
            // would put the step's files outside the study folder.
            if let Some(n) = c.corruptions.iter().find(|n| !valid_name(n)) {
                return bad(format!(
                    "[eval.corrupt] corruption `{n}`: use letters, digits, `-` and `_` only \
                     (it names folders; `sightline data corrupt --help` lists the names)"
                ));
            }
        }
        Ok(())
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_names_are_errors_naming_them() {
        let p = Path::new("s.toml");
        let e = StudyFile::from_str("[[base]]\nname='a'\nmodel='m'\nfoo=1\n", p).unwrap_err();
        assert!(e.to_string().contains("foo"), "{e}");
        let e = StudyFile::from_str("[[base]]\nname='a b'\nmodel='m'\n", p).unwrap_err();
        assert!(e.to_string().contains("a b"), "{e}");
        let e = StudyFile::from_str(
            "[[base]]\nname='a'\nmodel='m'\n[[data]]\nname='d'\nfile='x'\nstrip_images='y'\n",
            p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        // A corruption names a step folder: one that would climb out of the study is refused.
        let e = StudyFile::from_str(
            "[[base]]\nname='a'\nmodel='m'\n[eval.corrupt]\n\
             corruptions=['../../../tmp/x']\nseverities=[1]\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("s.toml") && e.contains("`../../../tmp/x`"),
            "{e}"
        );
    }
}
