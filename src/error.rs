//! The library's error type: every failure a user can cause is a value with a message that says
//! what was wrong, where, and what to do.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The model file or checkpoint is malformed or unsupported.
    #[error("model format: {0}")]
    Format(String),
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// No usable GPU, or a device limit the model does not fit.
    #[error("GPU: {0}")]
    Gpu(String),
    /// A setting or input the user gave is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The dense cache is full.
    #[error("{0}")]
    CacheFull(String),
    #[error("{0}")]
    Io(String),
}

impl Error {
    pub fn format(msg: impl Into<String>) -> Error {
        Error::Format(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
    pub fn gpu(msg: impl Into<String>) -> Error {
        Error::Gpu(msg.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
