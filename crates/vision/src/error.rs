//! The one error type of `sightline-vision`.
//!
//! Every variant that comes from user input names the file (and the field or tensor) so the CLI
//! prints one line a researcher can act on.

use std::path::PathBuf;

/// Errors from images, vision towers, projectors and LLaVA checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read at all.
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        // Not `#[source]`: the message already carries it, and anyhow's `{:#}` would print
        // it twice.
        err: std::io::Error,
    },
    /// A file was read but is not what the format requires (bad image, bad config field).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A prompt or request that cannot be run (wrong number of `<image>` placeholders, ...).
    #[error("{0}")]
    Request(String),
    /// Errors from the decoder side (weights, tokenizer, LLaMA).
    #[error(transparent)]
    Model(#[from] sightline_model::Error),
    /// An error inside candle (shape bugs, device errors).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}
