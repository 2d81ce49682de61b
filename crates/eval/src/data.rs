//! Benchmark data shipped inside the binary (TruthfulQA, ETHICS test splits: see
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
];

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
