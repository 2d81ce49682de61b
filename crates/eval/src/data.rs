//! Benchmark data shipped inside the binary (TruthfulQA, ETHICS test splits, POPE and Unicorn
//! sketchy-VQA questions, the bundled sketches: see
//! `data/*/SOURCES.md` for provenance and licences), or read from `--data-dir` with the same
//! layout.

use std::borrow::Cow;
use std::path::PathBuf;

use crate::error::{Error, Result};

macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../../../data/", $path)) as &[u8])),*]
    };
}

/// Every embedded file, by its path under `data/`.
static EMBEDDED: &[(&str, &[u8])] = embed![
    "truthfulqa/v0/mc_task.json",
    "truthfulqa/v0/TruthfulQA.csv",
    "truthfulqa/mc_task.json",
    "truthfulqa/TruthfulQA.csv",
    "ethics/commonsense/cm_test.csv",
    "ethics/deontology/deontology_test.csv",
    "ethics/justice/justice_test.csv",
    "ethics/utilitarianism/util_test.csv",
    "ethics/virtue/virtue_test.csv",
    "pope/coco_pope_random.json",
    "pope/coco_pope_popular.json",
    "pope/coco_pope_adversarial.json",
    "unicorn/sketchy-vqa/sketchy-vqa.json",
    "unicorn/sketchy-vqa/sketchy-challenging.json",
    "unicorn/oodcv-vqa/oodcv-vqa.json",
    "unicorn/oodcv-vqa/oodcv-counterfactual.json",
];

/// The bundled sketches (`data/unicorn/SOURCES.md`), so the sketchy-VQA tasks run offline from
/// any working directory; looked up by [`bundled_image`].
static EMBEDDED_IMAGES: &[(&str, &[u8])] = embed![
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/bed/1293.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/blimp/1909.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/book/1942.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/bulldozer/2609.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/bush/2749.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/camera/3350.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/church/4185.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/face/6246.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/hand/7883.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/head/8087.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/horse/8535.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/house/8811.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/key/9257.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/lightbulb/9692.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/megaphone/10168.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/present/12981.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/radio/13467.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/rollerblades/13815.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/ship/14931.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/streetlight/16543.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/sun/16778.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/table/17242.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/telephone/17666.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/tree/18625.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/tv/19013.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/wheelbarrow/19582.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/wineglass/19791.png",
];

/// Every bundled image: (path under `data/`, bytes).
pub fn bundled_images() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    EMBEDDED_IMAGES.iter().copied()
}

/// A bundled image by its path under `data/`.
pub fn bundled_image(rel: &str) -> Option<&'static [u8]> {
    EMBEDDED_IMAGES
        .iter()
        .find(|(name, _)| *name == rel)
        .map(|(_, bytes)| *bytes)
}

/// Which TruthfulQA release the tasks read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TruthfulQaVersion {
    /// The original release: what HF `truthful_qa` (and so lm-eval and the paper) serves.
    #[default]
    V0,
    /// The 2021-10-10 release with extra reference answers.
    Current,
}

impl TruthfulQaVersion {
    pub fn dir(self) -> &'static str {
        match self {
            TruthfulQaVersion::V0 => "truthfulqa/v0",
            TruthfulQaVersion::Current => "truthfulqa",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TruthfulQaVersion::V0 => "v0",
            TruthfulQaVersion::Current => "current",
        }
    }
}

/// Where task data comes from.
#[derive(Debug, Clone, Default)]
pub struct DataSource {
    /// A directory laid out like the repository's `data/`; `None` = the embedded copies.
    pub dir: Option<PathBuf>,
    pub truthfulqa: TruthfulQaVersion,
    /// `--image-root`: where image tasks find their images (overrides a task's bundled ones).
    pub image_root: Option<PathBuf>,
    /// How image tasks prompt and decode.
    pub protocol: crate::mm::Protocol,
    /// VQAv2's user-supplied `v2_OpenEnded_mscoco_val2014_questions.json`.
    pub vqav2_questions: Option<PathBuf>,
    /// VQAv2's user-supplied `v2_mscoco_val2014_annotations.json`.
    pub vqav2_annotations: Option<PathBuf>,
    /// The user's MME copy (`MME_Benchmark_release_version`, one folder per sub-task).
    pub mme_dir: Option<PathBuf>,
    /// SBT's COCO caption files (`mscoco_{train,test}.json`, `test_images/`).
    pub coco_caption_dir: Option<PathBuf>,
    /// SBT's Flickr30k caption files (`flickr30k_{train,test}.json`, `test_images/`).
    pub flickr30k_caption_dir: Option<PathBuf>,
}

impl DataSource {
    /// The bytes of `rel` (a path under `data/`).
    pub fn read(&self, rel: &str) -> Result<Cow<'static, [u8]>> {
        match &self.dir {
            Some(dir) => {
                let p = dir.join(rel);
                std::fs::read(&p)
                    .map(Cow::Owned)
                    .map_err(|e| Error::io(p, e))
            }
            None => EMBEDDED
                .iter()
                .find(|(name, _)| *name == rel)
                .map(|(_, bytes)| Cow::Borrowed(*bytes))
                .ok_or_else(|| Error::Config(format!("no embedded data file {rel}"))),
        }
    }

    /// How error messages name `rel`.
    pub fn describe(&self, rel: &str) -> String {
        match &self.dir {
            Some(dir) => dir.join(rel).display().to_string(),
            None => format!("<embedded>/data/{rel}"),
        }
    }

    /// Reads a UTF-8 text file, dropping a leading byte-order mark.
    pub fn read_text(&self, rel: &str) -> Result<String> {
        let bytes = self.read(rel)?;
        let text = String::from_utf8(bytes.into_owned())
            .map_err(|e| Error::data(&self.describe(rel), 0, format!("not UTF-8: {e}")))?;
        Ok(text
            .strip_prefix('\u{feff}')
            .map(str::to_string)
            .unwrap_or(text))
    }

    /// Reads a CSV file into rows of fields (RFC 4180, as Python's `csv` with `newline=""`).
    pub fn read_csv(&self, rel: &str, has_header: bool) -> Result<Vec<Vec<String>>> {
        let text = self.read_text(rel)?;
        let name = self.describe(rel);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(has_header)
            .flexible(true)
            .from_reader(text.as_bytes());
        reader
            .records()
            .enumerate()
            .map(|(i, r)| {
                r.map(|rec| rec.iter().map(str::to_string).collect())
                    .map_err(|e| Error::data(&name, i + 1, e.to_string()))
            })
            .collect()
    }
}
