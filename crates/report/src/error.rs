//! What can go wrong reading runs and writing a report. Every message names the file (and line
//! or field where there is one) and what was expected.

use std::path::PathBuf;

/// A report error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A file's content is not what the reader expected.
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line, where the problem is on one line.
        line: Option<usize>,
        /// What was wrong and what was expected.
        msg: String,
    },
    /// One model has two different values for the same (task, metric).
    #[error("{0}")]
    Conflict(Box<Conflict>),
    /// The inputs or options do not make a report (no runs found, unknown baseline, ...).
    #[error("{0}")]
    Input(String),
    /// A plot could not be drawn.
    #[error("plot {name}: {msg}")]
    Plot {
        /// The plot's file stem.
        name: String,
        /// The drawing backend's message.
        msg: String,
    },
}

/// Two files of one model disagree on a (task, metric).
#[derive(Debug)]
pub struct Conflict {
    /// The model label.
    pub model: String,
    /// The task (with its corruption, if any).
    pub task: String,
    /// The metric.
    pub metric: String,
    /// The first value (± stderr).
    pub a: String,
    /// The file it came from.
    pub file_a: PathBuf,
    /// The second value (± stderr).
    pub b: String,
    /// The file it came from.
    pub file_b: PathBuf,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model {}: {} {} is {} in {} but {} in {}",
            self.model,
            self.task,
            self.metric,
            self.a,
            self.file_a.display(),
            self.b,
            self.file_b.display()
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(
        path: impl Into<PathBuf>,
        line: Option<usize>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Parse {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
}
