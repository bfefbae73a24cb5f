//! Scheduled retraining: train a candidate from the active model on the configured data,
//! score it against the active model on held-out images, and promote it when it wins by the
//! configured margin. Every run and every model is recorded in the registry
//! ([`crate::store::registry`]); a run that fails in any way leaves the active model as it was.
//!
//! - [`options`]: the typed settings, built from the config's `[retrain]` section.
//! - [`schedule`]: intervals and 5-field cron expressions.
//! - [`data`]: prepared sets, labelled-image folders prepared when they change, fingerprints.
//! - [`evaluate`]: held-out scoring for the promotion rule.
//! - [`cycle`]: one run, from data to decision.
//!
//! The daemon runs cycles on the schedule and swaps a promoted model in between batches;
//! `gaze retrain --now` runs one cycle by hand.

pub mod cycle;
pub mod data;
pub mod evaluate;
pub mod options;
pub mod schedule;

use std::path::PathBuf;

pub use cycle::{run_cycle, CycleOptions, CycleReport, Parent, RunStatus};
pub use options::RetrainOptions;
pub use schedule::{Cron, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Registry(#[from] crate::store::registry::RegistryError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: another process is retraining on this store now; one run at a time")]
    AnotherRunning { location: String },
}
