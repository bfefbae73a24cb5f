//! What can stop a parity check from running (a check that runs and misses is a report row).

use std::path::PathBuf;

/// A fixture that cannot be read, or a computation that fails.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("tolerance scale must be a positive number, got {0}")]
    Scale(f64),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: no tensor {name}")]
    NoTensor { file: PathBuf, name: String },
    #[error("expected.json: no {0}")]
    NoValue(String),
    #[error("expected.json: {pointer}: {source}")]
    BadValue {
        pointer: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: shape {got:?}, expected {want:?}")]
    Shape {
        what: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    /// Something the computation should have produced and did not (a gradient, a buffer).
    #[error("{0}")]
    Missing(String),
    /// A group of checks that failed to run, with why.
    #[error("parity check \"{check}\" failed to run")]
    Check {
        check: &'static str,
        #[source]
        source: Box<ParityError>,
    },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ParityError> = std::result::Result<T, E>;
