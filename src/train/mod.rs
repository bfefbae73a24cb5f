//! Training: the tutorial's procedure (teacher forcing, doubly stochastic attention
//! regularisation, clipped Adam, learning-rate decay, early stopping) with validation on
//! generated captions, cached encoder features, exact resume and progress reporting.

pub mod adam;
pub mod glove;
pub mod loss;
