//! Training hyperparameters: the tutorial's, with its defaults, plus what gaze adds.
//! Every key can be set in a TOML file (`gaze train --config train.toml`) and as a flag.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::features::CacheMode;
use super::scst::ScstBaseline;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Word-embedding size (the tutorial's `emb_dim`).
    pub emb_dim: usize,
    pub attention_dim: usize,
    pub decoder_dim: usize,
    pub dropout: f32,
    /// Side of the attention grid.
    pub encoded_image_size: usize,
    /// Encoder backbone (resnet18/34/50/101/152).
    pub encoder: String,
    /// ImageNet weights for the encoder (torchvision `.pth` or safetensors).
    pub encoder_weights: Option<PathBuf>,
    /// Train a randomly initialised ResNet encoder on purpose (no `encoder_weights`, no
    /// checkpoint). Its residual branches then start at zero, so its features fit the float16
    /// feature cache. `gaze train` refuses a random encoder without it (the trainer's
    /// `encoder_start` check); library callers of the training loop are not checked, and
    /// without it get plain random weights, as before.
    pub random_encoder: bool,
    /// Epochs to run at most (the tutorial's 120).
    pub epochs: usize,
    pub batch_size: usize,
    /// Threads that read and decode images.
    pub workers: usize,
    pub encoder_lr: f64,
    pub decoder_lr: f64,
    /// Clamp each gradient element to [-grad_clip, grad_clip]; 0 turns clipping off.
    pub grad_clip: f64,
    /// Weight of the doubly stochastic attention regularisation.
    pub alpha_c: f64,
    /// Train layer2..layer4 of the encoder too.
    pub fine_tune_encoder: bool,
    /// A GloVe-format text file of word vectors for the embedding (rows for missing words stay random).
    pub embeddings: Option<PathBuf>,
    /// Train the embedding (the tutorial's default); off keeps pretrained vectors fixed.
    pub fine_tune_embeddings: bool,
    /// Stop after this many epochs without improvement (the tutorial's 20).
    pub patience: usize,
    /// Multiply learning rates by `lr_decay_factor` after every `lr_decay_every` epochs without improvement.
    pub lr_decay_every: usize,
    pub lr_decay_factor: f64,
    /// Beam size of the captions generated for validation (1: greedy).
    pub val_beam_size: usize,
    /// Validate on at most this many images (all when unset).
    pub val_images: Option<usize>,
    /// Scheduled sampling: probability of feeding the model's own previous word, rising
    /// linearly from `sampling_start` to `sampling_end` over `sampling_epochs` epochs.
    pub sampling_start: f32,
    pub sampling_end: f32,
    pub sampling_epochs: usize,
    /// Stop (after a checkpoint and a validation) once this much wall-clock time has passed.
    pub max_minutes: Option<f64>,
    /// Seed for initialisation, shuffling, dropout and sampling.
    pub seed: u64,
    /// Where to keep frozen-encoder features.
    pub feature_cache: CacheMode,
    /// `auto` keeps features in memory up to this many GiB.
    pub cache_memory_gib: f64,
    /// Compute device: cpu, cuda, cuda:N.
    pub device: String,
    /// Self-critical sequence training: optimise CIDEr-D of sampled captions instead of
    /// cross-entropy (normally continuing from a cross-entropy model, `--checkpoint`); the
    /// best model is then chosen by validation CIDEr-D.
    pub scst: bool,
    /// Captions sampled per image.
    pub scst_samples: usize,
    /// What each sample's reward is compared with.
    pub scst_baseline: ScstBaseline,
    /// Weight of the entropy bonus (0: none).
    pub scst_entropy: f64,
    /// A sampled caption ends after this many tokens (words and `<end>`).
    pub scst_max_length: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            emb_dim: 512,
            attention_dim: 512,
            decoder_dim: 512,
            dropout: 0.5,
            encoded_image_size: 14,
            encoder: "resnet101".into(),
            encoder_weights: None,
            random_encoder: false,
            epochs: 120,
            batch_size: 32,
            workers: 2,
            encoder_lr: 1e-4,
            decoder_lr: 4e-4,
            grad_clip: 5.0,
            alpha_c: 1.0,
            fine_tune_encoder: false,
            embeddings: None,
            fine_tune_embeddings: true,
            patience: 20,
            lr_decay_every: 8,
            lr_decay_factor: 0.8,
            val_beam_size: 1,
            val_images: None,
            sampling_start: 0.0,
            sampling_end: 0.0,
            sampling_epochs: 0,
            max_minutes: None,
            seed: 0,
            feature_cache: CacheMode::Auto,
            cache_memory_gib: 4.0,
            device: "cpu".into(),
            scst: false,
            scst_samples: 5,
            scst_baseline: ScstBaseline::Mean,
            scst_entropy: 0.0,
            scst_max_length: 16,
        }
    }
}

impl TrainConfig {
    /// Scheduled-sampling probability for a (0-based) epoch.
    pub fn sampling_prob(&self, epoch: usize) -> f32 {
        if self.sampling_epochs == 0 {
            return self.sampling_end;
        }
        let f = (epoch as f32 / self.sampling_epochs as f32).min(1.0);
        self.sampling_start + (self.sampling_end - self.sampling_start) * f
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_tutorials_and_toml_overrides_them() {
        let d = TrainConfig::default();
        assert_eq!(
            (
                d.batch_size,
                d.decoder_lr,
                d.encoder_lr,
                d.grad_clip,
                d.alpha_c
            ),
            (32, 4e-4, 1e-4, 5.0, 1.0)
        );
        let c = TrainConfig::from_toml("batch_size = 80\nfine_tune_encoder = true\n").unwrap();
        assert_eq!(c.batch_size, 80);
        assert!(c.fine_tune_encoder);
        assert!(TrainConfig::from_toml("batch_sise = 80").is_err());
        let s = TrainConfig {
            sampling_start: 0.0,
            sampling_end: 0.5,
            sampling_epochs: 10,
            ..d
        };
        assert_eq!(s.sampling_prob(0), 0.0);
        assert_eq!(s.sampling_prob(5), 0.25);
        assert_eq!(s.sampling_prob(20), 0.5);
    }
}
