//! The one error type of `sightline-train`.
//!
//! Variants that come from user input name the file, tensor or config field, so the CLI can
//! print one actionable line.

use std::path::PathBuf;

/// Errors from building a trainable model, running steps and writing checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        // Not `#[source]`: the message carries it, and anyhow's `{:#}` would print it twice.
        err: std::io::Error,
    },
    /// A training setting is invalid or contradicts another one.
    #[error("{0}")]
    Config(String),
    /// A batch does not fit the model (shapes, label lengths, image positions).
    #[error("{0}")]
    Batch(String),
    /// A training record or file is malformed (named with its record and field).
    #[error("{0}")]
    Data(String),
    /// Loading the base checkpoint failed.
    #[error(transparent)]
    Model(#[from] sightline_model::Error),
    /// Reading or tokenizing training data failed (the message names file, record and field).
    #[error(transparent)]
    Dataset(#[from] sightline_data::Error),
    /// The vision tower or an image failed to load.
    #[error(transparent)]
    Vision(#[from] sightline_vision::Error),
    /// Talking to the other ranks of a data-parallel run failed.
    #[error(transparent)]
    Collective(#[from] sightline_collective::Error),
    /// An error inside candle (shape bugs, device errors).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    /// The same error naming `to` where it named the temporary `from` or a file in it (users
    /// know the output's name, not the hidden one it was written under).
    pub(crate) fn renamed(self, from: &std::path::Path, to: &std::path::Path) -> Self {
        match self {
            Error::Io { path, err } => match path.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => Error::io(to, err),
                Ok(rest) => Error::io(to.join(rest), err),
                Err(_) => Error::Io { path, err },
            },
            other => other,
        }
    }
}
