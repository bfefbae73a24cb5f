//! gaze: "Show, Attend and Tell" image captioning in Rust.
//!
//! The library is organised by job:
//! - [`model`]: encoder backbones, soft attention, the LSTM decoder, beam search, model files.
//! - [`kernels`]: the custom CPU kernels (convolutions, pooling, fused attention) the model
//!   runs instead of candle's ops for f32 on the CPU.
//! - [`pth`]: reading PyTorch checkpoints (zip and legacy `torch.save` files) without Python.
//! - [`data`]: Karpathy split JSON, word maps, the tutorial's HDF5/JSON files, image preprocessing.
//! - [`metrics`]: BLEU, CIDEr-D, ROUGE-L and METEOR as the reference scorers compute them.
//! - [`eval`]: a model judged on a prepared split (beam search at several sizes, every metric).
//! - [`train`]: the training loop, optimiser state, schedules and checkpoints.
//! - [`store`]: the SQLite store (migrations, queries).
//! - [`daemon`]: the folder-watching captioning pipeline; [`config`]: its layered settings;
//!   [`telemetry`]: what its stages measure; [`http`]: the HTTP API, metrics and web page
//!   (`gaze serve`, `gaze watch --http`).
//! - [`retrain`]: scheduled retraining, promotion by held-out scores, the model registry.
//! - [`viz`]: attention pictures; [`files`]: opening user-named files safely (no FIFOs,
//!   devices or endless reads).
//! - [`bench`]: what `gaze bench` measures on (random models, synthetic training data);
//!   [`demo`]: the settings and file steps of `gaze demo`.
//! - [`parity`]: the PyTorch parity checks on any device, as a report (`gaze bench parity`
//!   prints it; the integration tests assert the same computations).

pub mod bench;
pub mod config;
pub mod daemon;
pub mod data;
pub mod demo;
pub mod device;
pub mod eval;
pub mod files;
pub mod http;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod parity;
pub mod progress;
pub mod pth;
pub mod retrain;
pub mod rng;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod viz;
