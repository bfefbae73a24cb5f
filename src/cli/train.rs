//! `gaze train`: the tutorial's training on its prepared files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use gaze::train::features::CacheMode;
use gaze::train::{StandardObserver, StopReason, TrainConfig, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Folder with the prepared files (WORDMAP_*.json, *_IMAGES_*.hdf5, ...).
    #[arg(long)]
    pub data_folder: PathBuf,
    /// Base name of the prepared files, e.g. coco_5_cap_per_img_5_min_word_freq.
    #[arg(long)]
    pub data_name: String,
    /// A TOML file of hyperparameters (any key of the flags below, snake_case); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where checkpoints and the log go.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Resume from a checkpoint (or continue from a model file, e.g. BEST_checkpoint_*.safetensors, to fine-tune).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub hyper: HyperArgs,
}

/// Every hyperparameter as an optional flag (unset: the config file's value, else the default).
#[derive(Args, Debug, Default)]
pub struct HyperArgs {
    /// Encoder: resnet18/34/50/101/152 or efficientnet-lite0 [default: resnet101].
    #[arg(long)]
    pub encoder: Option<String>,
    /// ImageNet weights for the encoder (torchvision resnet*.pth or safetensors). Without
    /// them (and without --checkpoint) a ResNet would be random, which gaze train refuses
    /// unless --random-encoder is given.
    #[arg(long)]
    pub encoder_weights: Option<PathBuf>,
    /// Train a randomly initialised ResNet encoder on purpose (its residual branches start
    /// at zero, so its features fit the float16 feature cache).
    #[arg(long)]
    pub random_encoder: bool,
    /// Train layer2..layer4 of the encoder too.
    #[arg(long)]
    pub fine_tune_encoder: bool,
    /// Epochs to train at most [default: 120].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many minutes of wall-clock time (checkpoint and validation first).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Captions per batch [default: 32].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed for shuffling, dropout, initialisation and sampling [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Word embedding size [default: 512].
    #[arg(long)]
    pub emb_dim: Option<usize>,
    /// Attention network size [default: 512].
    #[arg(long)]
    pub attention_dim: Option<usize>,
    /// LSTM size [default: 512].
    #[arg(long)]
    pub decoder_dim: Option<usize>,
    /// Dropout before the word classifier [default: 0.5].
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Side of the attention grid the encoder output is pooled to [default: 14].
    #[arg(long)]
    pub encoded_image_size: Option<usize>,
    /// Threads reading and decoding images.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Encoder learning rate when fine-tuning [default: 1e-4].
    #[arg(long)]
    pub encoder_lr: Option<f64>,
    /// Decoder learning rate [default: 4e-4].
    #[arg(long)]
    pub decoder_lr: Option<f64>,
    /// Clamp gradients to ±this (0: off) [default: 5].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Weight of the doubly stochastic attention regularisation [default: 1].
    #[arg(long)]
    pub alpha_c: Option<f64>,
    /// GloVe-format word vectors for the embedding.
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// Keep the (pretrained) embedding fixed.
    #[arg(long)]
    pub freeze_embeddings: bool,
    /// Stop after this many epochs without improvement [default: 20].
    #[arg(long)]
    pub patience: Option<usize>,
    /// Multiply learning rates by --lr-decay-factor after this many epochs without improvement [default: 8].
    #[arg(long)]
    pub lr_decay_every: Option<usize>,
    /// [default: 0.8].
    #[arg(long)]
    pub lr_decay_factor: Option<f64>,
    /// Beam size for validation captions (1: greedy) [default: 1].
    #[arg(long)]
    pub val_beam_size: Option<usize>,
    /// Validate on at most this many images.
    #[arg(long)]
    pub val_images: Option<usize>,
    /// Scheduled sampling probability at the first epoch.
    #[arg(long)]
    pub sampling_start: Option<f32>,
    /// Scheduled sampling probability after --sampling-epochs.
    #[arg(long)]
    pub sampling_end: Option<f32>,
    /// Epochs over which the sampling probability moves from start to end [default: 0: always the end value].
    #[arg(long)]
    pub sampling_epochs: Option<usize>,
    /// Where frozen-encoder features live [default: auto: memory up to --cache-memory-gib, else disk].
    #[arg(long, value_enum)]
    pub feature_cache: Option<CacheMode>,
    /// Largest in-memory feature cache before it goes to disk [default: 4].
    #[arg(long)]
    pub cache_memory_gib: Option<f64>,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Self-critical training: optimise the CIDEr-D of sampled captions (REINFORCE with a
    /// baseline) instead of cross-entropy. Start it from a cross-entropy model with
    /// --checkpoint, usually with a lower --decoder-lr (e.g. 5e-5); the best model is chosen
    /// by validation CIDEr-D.
    #[arg(long)]
    pub scst: bool,
    /// Captions sampled per image for self-critical training [default: 5].
    #[arg(long)]
    pub scst_samples: Option<usize>,
    /// What a sample's reward is compared with: the mean reward of the image's other samples,
    /// or the reward of its greedy caption [default: mean].
    #[arg(long, value_enum)]
    pub scst_baseline: Option<gaze::train::scst::ScstBaseline>,
    /// Weight of an entropy bonus in self-critical training [default: 0: none].
    #[arg(long)]
    pub scst_entropy: Option<f64>,
    /// Tokens (words and <end>) a sampled caption may have [default: 16].
    #[arg(long)]
    pub scst_max_length: Option<usize>,
}

impl HyperArgs {
    /// Applies the flags that were given on top of `cfg`.
    pub fn apply(&self, cfg: &mut TrainConfig) {
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(v) = &self.$field { cfg.$field = v.clone(); } )*};
        }
        set!(
            encoder,
            epochs,
            batch_size,
            seed,
            emb_dim,
            attention_dim,
            decoder_dim,
            dropout,
            encoded_image_size,
            workers,
            encoder_lr,
            decoder_lr,
            grad_clip,
            alpha_c,
            patience,
            lr_decay_every,
            lr_decay_factor,
            val_beam_size,
            sampling_start,
            sampling_end,
            sampling_epochs,
            feature_cache,
            cache_memory_gib,
            device,
            scst_samples,
            scst_baseline,
            scst_entropy,
            scst_max_length
        );
        if self.scst {
            cfg.scst = true;
        }
        if self.encoder_weights.is_some() {
            cfg.encoder_weights = self.encoder_weights.clone();
        }
        if self.embeddings.is_some() {
            cfg.embeddings = self.embeddings.clone();
        }
        if self.max_minutes.is_some() {
            cfg.max_minutes = self.max_minutes;
        }
        if self.val_images.is_some() {
            cfg.val_images = self.val_images;
        }
        if self.fine_tune_encoder {
            cfg.fine_tune_encoder = true;
        }
        if self.random_encoder {
            cfg.random_encoder = true;
        }
        if self.freeze_embeddings {
            cfg.fine_tune_embeddings = false;
        }
    }
}

pub fn config_from(config_file: Option<&PathBuf>, hyper: &HyperArgs) -> Result<TrainConfig> {
    let mut cfg = match config_file {
        Some(path) => {
            let text = gaze::files::read_text(path)
                .with_context(|| format!("reading {}", path.display()))?;
            TrainConfig::from_toml(&text)
                .with_context(|| format!("{}: bad training configuration", path.display()))?
        }
        None => TrainConfig::default(),
    };
    hyper.apply(&mut cfg);
    Ok(cfg)
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let cfg = config_from(args.config.as_ref(), &args.hyper)?;
    // Before any data is read or feature cached: an encoder nobody chose to make random
    // would only fail later (float16 cache overflow) or train on noise.
    gaze::train::encoder_start(&cfg, args.checkpoint.as_deref())?;
    let data = gaze::train::TrainData::from_prepared(&args.data_folder, &args.data_name)?;
    // Ctrl-C once: finish the batch, write a checkpoint, exit. Twice: exit now.
    let stop = super::signal::stop_flag(
        "\ninterrupted: writing a checkpoint (Ctrl-C again to quit at once)",
    )?;
    let opts = TrainOptions {
        out_dir: args.out.clone(),
        checkpoint: args.checkpoint.clone(),
        stop,
    };
    let mut observer = StandardObserver::new(!args.quiet);
    let outcome = gaze::train::train(&cfg, &data, &opts, &mut observer)?;
    let why = match outcome.stop {
        StopReason::Epochs => "all epochs done",
        StopReason::Patience => "no improvement for `patience` epochs",
        StopReason::TimeBudget => "time budget used",
        StopReason::Interrupted => "interrupted",
    };
    println!(
        "training stopped ({why}) at epoch {}; best validation {} {:.4} (epoch {})",
        outcome.state.epoch,
        if cfg.scst { "CIDEr-D" } else { "BLEU-4" },
        outcome.state.best_score,
        outcome
            .state
            .best_epoch
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("checkpoint: {}", outcome.checkpoint.display());
    if let Some(best) = &outcome.best {
        println!("best model: {}", best.display());
    }
    Ok(if outcome.stop == StopReason::Interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
