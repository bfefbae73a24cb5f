//! What can go wrong building or running the CPU encoder engine.

use candle_core::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum CpuEngineError {
    #[error("CPU encoder: expected images of shape (N, 3, H, W) with N, H, W > 0, got {0:?}")]
    InputShape(Vec<usize>),
    #[error("CPU encoder: expected f32 images on the CPU, got {dtype:?} on {device:?}")]
    InputKind { dtype: DType, device: Device },
    #[error("CPU encoder: cannot read the tensors of {layer}: {source}")]
    Weights {
        layer: String,
        source: candle_core::Error,
    },
    #[error("CPU encoder: layer {layer} has a shape the engine does not support: {what}")]
    Unsupported { layer: String, what: String },
    #[error("CPU encoder: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, CpuEngineError>;
