//! The one error type of `sightline-openai`.

/// Errors of the server's engine and of the API client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model failed on a request (shape, tokenizer or numeric errors).
    #[error(transparent)]
    Model(#[from] sightline_model::Error),
    /// A request the engine or the server refuses (bad ids, too long, wrong options).
    #[error("{0}")]
    Request(String),
    /// A request the model cannot take as sent (an image prompt whose `<image>` placeholders
    /// do not match its images, one too long for the model): the client's to fix (a 400).
    #[error("{0}")]
    Refused(String),
    /// The engine's worker is gone (it only stops when the server does).
    #[error("the model worker has stopped")]
    EngineStopped,
    /// The HTTP transport failed (connection refused, timeout) after all retries.
    #[error("{url}: {msg}")]
    Transport { url: String, msg: String },
    /// The server answered with an error status after all retries (or one not worth retrying).
    #[error("{url}: HTTP {status}: {msg}")]
    Status {
        url: String,
        status: u16,
        msg: String,
    },
    /// The server answered 2xx with a body that is not what the API says.
    #[error("{url}: unexpected response: {msg}")]
    Protocol { url: String, msg: String },
    /// Binding or serving the HTTP port failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
