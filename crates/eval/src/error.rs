//! The one error type of `sightline-eval`.

use std::path::PathBuf;

/// Errors from task data, the evaluator and its request cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        // Not `#[source]`: the message already carries it, and anyhow's `{:#}` would print
        // it twice.
        err: std::io::Error,
    },
    /// A data file whose record does not have the expected shape.
    #[error("{file}: record {record}: {msg}")]
    Data {
        file: String,
        record: usize,
        msg: String,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] sightline_model::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn data(file: &str, record: usize, msg: impl Into<String>) -> Self {
        Error::Data {
            file: file.to_string(),
            record,
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}
