use std::path::PathBuf;

/// Errors from building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: bad model metadata: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("{path}: {} tensor problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Tensors {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{path}: cannot work out the architecture: {reason}")]
    Architecture { path: PathBuf, reason: String },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("{0}")]
    Config(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
