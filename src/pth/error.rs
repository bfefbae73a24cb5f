use std::path::PathBuf;

/// Errors from reading PyTorch checkpoint files. Each names the file and what is wrong there.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The I/O error is part of the message, not a `source`, so that a report printing the
    /// error chain does not repeat it.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a PyTorch checkpoint: {reason}")]
    NotACheckpoint { path: PathBuf, reason: String },
    #[error("{path}: unreadable zip archive (truncated or corrupt?): {reason}")]
    Zip { path: PathBuf, reason: String },
    /// A pickle could not be executed: where (part of the file, opcode, byte) and why.
    #[error("{path}: {part}: {location}: {reason}")]
    Pickle {
        path: PathBuf,
        part: String,
        location: String,
        reason: String,
    },
    #[error("{path}: storage {key}: {reason}")]
    Storage {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: tensor {name}: {reason}")]
    Tensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    /// The file is readable but does not hold what was asked for.
    #[error("{path}: {reason}")]
    Content { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = PthError> = std::result::Result<T, E>;
