//! Training: the tutorial's procedure (teacher forcing, doubly stochastic attention
//! regularisation, clipped Adam, learning-rate decay, early stopping) with validation on
//! generated captions, cached encoder features, exact resume and progress reporting.

pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod features;
pub mod glove;
pub mod loss;
pub mod trainer;
pub mod validate;

pub use config::TrainConfig;
pub use data::{SplitData, TrainData};
pub use trainer::{
    encoder_start, train, EncoderStart, StopReason, TrainError, TrainOptions, TrainOutcome,
};
