//! Training checkpoints: a gaze model file that also carries the optimiser moments (as
//! `optim.*` tensors, which model loading ignores) and the loop's state (as metadata), so that
//! `--checkpoint` resumes exactly where the run stopped.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;

pub const STATE_KEY: &str = "training_state";

/// Where the loop stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// The epoch to run (0-based) and the first batch of it not yet trained.
    pub epoch: usize,
    pub batch: usize,
    pub epochs_since_improvement: usize,
    /// Best validation score so far (BLEU-4; CIDEr-D when `config.scst`) and the epoch
    /// (0-based) that reached it.
    pub best_score: f64,
    pub best_epoch: Option<usize>,
    pub decoder_lr: f64,
    pub encoder_lr: f64,
    pub decoder_steps: HashMap<String, u64>,
    pub encoder_steps: HashMap<String, u64>,
    /// Whether this run trained the encoder (a later stage may turn it on).
    pub fine_tune_encoder: bool,
    pub config: TrainConfig,
    pub data_name: String,
}

impl TrainingState {
    pub fn fresh(config: &TrainConfig, data_name: &str) -> Self {
        TrainingState {
            epoch: 0,
            batch: 0,
            epochs_since_improvement: 0,
            best_score: 0.0,
            best_epoch: None,
            decoder_lr: config.decoder_lr,
            encoder_lr: config.encoder_lr,
            decoder_steps: HashMap::new(),
            encoder_steps: HashMap::new(),
            fine_tune_encoder: config.fine_tune_encoder,
            config: config.clone(),
            data_name: data_name.to_string(),
        }
    }

    /// The state stored in a checkpoint's metadata, if any.
    pub fn from_metadata(
        meta: &HashMap<String, String>,
        path: &Path,
    ) -> Result<Option<Self>, String> {
        match meta.get(STATE_KEY) {
            None => Ok(None),
            Some(s) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| format!("{}: unreadable training state: {e}", path.display())),
        }
    }

    /// The best score as BLEU-4, for a cross-entropy run that has one.
    pub fn best_bleu4(&self) -> Option<f64> {
        (!self.config.scst && self.best_epoch.is_some()).then_some(self.best_score)
    }

    /// The best score as CIDEr-D, for a self-critical run that has one.
    pub fn best_cider_d(&self) -> Option<f64> {
        (self.config.scst && self.best_epoch.is_some()).then_some(self.best_score)
    }

    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert(
            STATE_KEY.to_string(),
            serde_json::to_string(self).expect("state serialises"),
        );
        m
    }
}

/// File names the tutorial uses, with gaze's extension.
pub fn checkpoint_name(data_name: &str) -> String {
    format!("checkpoint_{data_name}.safetensors")
}

pub fn best_checkpoint_name(data_name: &str) -> String {
    format!("BEST_checkpoint_{data_name}.safetensors")
}
