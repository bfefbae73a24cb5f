//! What a training run reports: how it ended, and one record per epoch (a line of
//! `train_log.jsonl`, whose field order is the order below).

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Teacher-forced loss (cross-entropy + attention regularisation) per word.
    pub loss: f64,
    /// Teacher-forced top-5 accuracy, percent.
    pub top5: f64,
    /// NLTK corpus BLEU-4 of generated captions over word ids (`<unk>` kept), as the
    /// tutorial's `eval.py` computes it.
    pub bleu4: f64,
    /// CIDEr-D of the generated captions over word ids, document frequencies from the
    /// validated images' references (as `gaze eval` computes it).
    pub cider_d: f64,
    pub beam_size: usize,
    pub images: usize,
    pub seconds: f64,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All configured epochs ran.
    Epochs,
    /// `patience` epochs passed without improvement.
    Patience,
    /// The wall-clock budget ran out.
    TimeBudget,
    /// Interrupted (Ctrl-C); a checkpoint was written.
    Interrupted,
}

/// One line of the JSON-lines log.
#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// True when the epoch was cut short (time budget or interruption).
    pub partial: bool,
    pub train_loss: f64,
    pub train_top5: f64,
    pub captions_per_second: f64,
    pub train_seconds: f64,
    /// Self-critical training's figures (absent for cross-entropy epochs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scst: Option<ScstStats>,
    pub val: Validation,
    pub decoder_lr: f64,
    pub encoder_lr: f64,
    pub is_best: bool,
    /// The best validation score so far: BLEU-4 for cross-entropy training,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_bleu4: Option<f64>,
    /// and CIDEr-D for self-critical training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_cider_d: Option<f64>,
    pub epochs_since_improvement: usize,
}

/// One epoch of self-critical training, over every sampled caption.
#[derive(Debug, Clone, Serialize)]
pub struct ScstStats {
    /// Mean CIDEr-D of the samples.
    pub mean_reward: f64,
    /// Mean baseline they were compared with.
    pub mean_baseline: f64,
    /// Share of samples whose reward beat their baseline.
    pub beat_baseline: f64,
    /// Mean entropy per sampled word (nats).
    pub mean_entropy: f64,
    pub samples: usize,
}
