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
    pub val: Validation,
    pub decoder_lr: f64,
    pub encoder_lr: f64,
    pub is_best: bool,
    pub best_bleu4: f64,
    pub epochs_since_improvement: usize,
}
