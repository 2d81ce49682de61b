//! The one error type of `sightline-model`.
//!
//! Every variant that comes from user input names the file (and the tensor, record or field)
//! so that the CLI can print a single line a researcher can act on.

use std::path::PathBuf;

/// Errors from loading checkpoints and tokenizers, scoring and generation.
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
    /// A file was read but its contents are not what the format requires.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A checkpoint tensor is absent.
    #[error("{path}: tensor `{tensor}` is missing (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
    },
    /// A checkpoint tensor has a shape that the config does not allow.
    #[error("{path}: tensor `{tensor}` has shape {actual:?}, config.json implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A request cannot be scored or generated (e.g. an empty continuation).
    #[error("{0}")]
    Request(String),
    /// A Hub model id that cannot be resolved: the message names the repository, revision,
    /// missing file and cache directory.
    #[error("{0}")]
    Hub(String),
    /// Settings that cannot work (a LoRA rank of 0, training on non-f32 weights, ...).
    #[error("{0}")]
    Config(String),
    /// Something the model family or the build does not support.
    #[error("{0}")]
    Unsupported(String),
    /// An error inside candle (shape bugs, device errors).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
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
