//! The one error type of `sightline-study`: every variant names the file, the key or the step.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The study file is not valid (the message names the key).
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// A step's command failed; `command` is the line that reruns it alone.
    #[error("step {step} failed: {msg}\n  rerun it alone: {command}")]
    Step {
        step: String,
        command: String,
        msg: String,
    },
    /// A step cannot run because a step it needs has not (with `--only`).
    #[error("{0}")]
    Plan(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
