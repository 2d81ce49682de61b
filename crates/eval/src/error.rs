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
    /// A shard of a sharded run that no merged folder holds.
    #[error("shard {index}/{count} missing: none of {searched} holds it")]
    ShardMissing {
        index: usize,
        count: usize,
        searched: String,
    },
    /// A shard that two files hold.
    #[error("shard {index}/{count} appears twice: {first} and {second}")]
    ShardTwice {
        index: usize,
        count: usize,
        first: PathBuf,
        second: PathBuf,
    },
    /// Shards that were not run with the same settings.
    #[error("the shards do not belong together: {0}")]
    ShardMismatch(Box<Mismatch>),
    #[error(transparent)]
    Model(#[from] sightline_model::Error),
}

/// Where two shards of what should be one run differ: the field and both values, with the
/// files that hold them.
#[derive(Debug)]
pub struct Mismatch {
    pub field: String,
    pub first_value: String,
    pub first: PathBuf,
    pub second_value: String,
    pub second: PathBuf,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {} in {} but {} in {}",
            self.field,
            self.first_value,
            self.first.display(),
            self.second_value,
            self.second.display()
        )
    }
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
