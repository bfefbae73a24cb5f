//! Training: the tutorial's procedure (teacher forcing, doubly stochastic attention
//! regularisation, clipped Adam, learning-rate decay, early stopping) with validation on
//! generated captions, cached encoder features, exact resume and progress reporting.

pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod features;
pub mod glove;
pub mod loss;
pub mod observer;
pub mod record;
pub mod schedule;
pub mod scst;
pub mod trainer;
pub mod validate;

pub use config::TrainConfig;
pub use data::{SplitData, TrainData};
pub use error::TrainError;
pub use observer::{SilentObserver, StandardObserver, TrainObserver};
pub use record::{EpochRecord, StopReason, Validation};
pub use trainer::{encoder_start, train, EncoderStart, TrainOptions, TrainOutcome};
