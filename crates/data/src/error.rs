//! The one error type of `sightline-data`.
//!
//! Every variant that comes from a data file names the file, the record (0-based index in the
//! file, and its `id` when it has one) and the field, so the CLI prints one line a user can act
//! on: `data.json: record 12 (id "000000033471"): conversations[1].from: expected "gpt", found "human"`.

use std::fmt;
use std::path::PathBuf;

/// What is wrong with one field of one record: the field as a JSON path
/// (`conversations[1].from`) and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// `(id "x")`, or `(no id)`, as records are named in messages.
pub(crate) fn id_label(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("(id {id:?})"),
        None => "(no id)".to_string(),
    }
}

fn mismatch_message(counted: usize, total: usize, diff: &str) -> String {
    format!(
        "tokenization mismatch: the template's rounds account for {counted} tokens but the \
         conversation has {total} (LLaVA would silently train on nothing here); {diff}"
    )
}

/// Errors from reading, checking, converting and tokenizing training data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        // Not `#[source]`: the message carries it, and anyhow's `{:#}` would print it twice.
        err: std::io::Error,
    },
    /// The file as a whole is not LLaVA-style JSON (not an array or JSON Lines, empty, UTF-16).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The JSON text breaks off or is malformed (or not UTF-8) inside record `index`.
    #[error("{path}: record {index}: {msg}")]
    Json {
        path: PathBuf,
        index: usize,
        msg: String,
    },
    /// One record does not have the structure a verb needs.
    #[error("{path}: record {index} {}: {problem}", id_label(id.as_deref()))]
    Record {
        path: PathBuf,
        index: usize,
        id: Option<String>,
        problem: Problem,
    },
    /// A record cannot go through LLaVA's preprocessing (the conditions LLaVA asserts on).
    /// Carries no file: callers that know it wrap it into [`Error::Record`] with [`Error::at`].
    #[error("{} {problem}", id_label(id.as_deref()))]
    Sample {
        id: Option<String>,
        problem: Problem,
    },
    /// LLaVA's round-by-round token count disagrees with the tokenized conversation. LLaVA
    /// prints a warning and masks the whole sample (it trains on nothing); sightline reports
    /// it, with where the tokenizations part ways.
    #[error("{} conversations: {}", id_label(id.as_deref()), mismatch_message(*counted, *total, diff))]
    Mismatch {
        id: Option<String>,
        counted: usize,
        total: usize,
        diff: String,
    },
    /// A template name that has no LLaVA preprocessor.
    #[error("{0}")]
    Usage(String),
    /// Errors from the tokenizer.
    #[error(transparent)]
    Model(#[from] sightline_model::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn record(
        path: impl Into<PathBuf>,
        index: usize,
        id: Option<&str>,
        problem: Problem,
    ) -> Self {
        Error::Record {
            path: path.into(),
            index,
            id: id.map(str::to_string),
            problem,
        }
    }

    /// Puts a file and record index on an error that lacks them ([`Error::Sample`],
    /// [`Error::Mismatch`], tokenizer errors); other errors pass through unchanged.
    pub fn at(self, path: impl Into<PathBuf>, index: usize) -> Self {
        match self {
            Error::Sample { id, problem } => Error::Record {
                path: path.into(),
                index,
                id,
                problem,
            },
            Error::Mismatch {
                id,
                counted,
                total,
                diff,
            } => Error::Record {
                path: path.into(),
                index,
                id,
                problem: Problem::new("conversations", mismatch_message(counted, total, &diff)),
            },
            Error::Model(e) => Error::Record {
                path: path.into(),
                index,
                id: None,
                problem: Problem::new("conversations", e.to_string()),
            },
            other => other,
        }
    }
}
