//! What can go wrong while training.

use std::path::PathBuf;

use super::features::CacheError;
use super::glove::GloveError;
use crate::data::DataError;
use crate::model::error::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Glove(#[from] GloveError),
    #[error(transparent)]
    Pth(#[from] crate::pth::PthError),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{encoder} would start from random weights: no encoder_weights (--encoder-weights) and no \
         --checkpoint. A random ResNet's features say little about the images, and they can \
         overflow the float16 feature cache (ResNet-101's reach about 1e5). Choose one:\n  \
         --encoder-weights {encoder}.pth   torchvision's ImageNet weights, saved by\n      \
         python3 -c \"import torch, torchvision; torch.save(torchvision.models.{encoder}(weights='IMAGENET1K_V1').state_dict(), '{encoder}.pth')\"\n  \
         --encoder efficientnet-lite0   ImageNet weights built into gaze, no file needed\n  \
         --random-encoder   train a randomly initialised encoder on purpose (config key \
         random_encoder = true; its residual branches start at zero so its features fit the cache)"
    )]
    RandomEncoder { encoder: String },
    #[error(
        "interrupted while encoding the images, before the first epoch: nothing to checkpoint"
    )]
    Interrupted,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the loss became {value} at epoch {epoch}, batch {batch}: training stopped; the last good checkpoint is {checkpoint}"
    )]
    NonFiniteLoss {
        value: f32,
        epoch: usize,
        batch: usize,
        checkpoint: String,
    },
}
