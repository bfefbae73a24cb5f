//! The training loop.
//!
//! Faithful to the tutorial's `train.py`: teacher forcing over batches sorted by caption length,
//! cross-entropy over real steps plus doubly stochastic attention regularisation, gradients
//! clamped to ±`grad_clip`, Adam (decoder; encoder layer2..layer4 when fine-tuning), learning
//! rates ×0.8 after every 8 epochs without improvement, stop after 20, keep the best model by
//! validation BLEU-4. Different where the tutorial is wrong or slow: validation BLEU-4 comes
//! from generated captions (batched greedy or beam search), not teacher forcing; a frozen
//! encoder runs once per image (cached features); the attention's encoder projection is
//! computed once per batch; dropout and shuffling come from seeded streams so a resumed run
//! follows the uninterrupted one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::adam::Adam;
use super::checkpoint::{best_checkpoint_name, checkpoint_name, TrainingState};
use super::config::TrainConfig;
use super::data::{SplitData, TrainData};
use super::error::TrainError;
use super::features::{CacheMode, FeatureCache};
use super::loss::batch_loss;
use super::observer::{BatchProgress, TrainObserver};
use super::record::{EpochRecord, ScstStats, StopReason, Validation};
use super::schedule::{EpochStart, Schedule};
use super::scst::{baselines, scst_loss, ScstBaseline};
use super::validate::validate;
use crate::metrics::cider::CiderD;
use crate::model::beam::beam_search;
use crate::model::decoder::TeacherOptions;
use crate::model::file::{self, LoadOptions};
use crate::model::sample::{sample_captions, SampleOptions};
use crate::model::weights::Weights;
use crate::model::{init, BeamOptions, CaptionModel, EncoderConfig, ModelConfig};
use crate::rng::SplitMix64;

pub struct TrainOutcome {
    pub stop: StopReason,
    pub state: TrainingState,
    pub checkpoint: PathBuf,
    pub best: Option<PathBuf>,
    pub history: Vec<EpochRecord>,
}

/// Where a run starts from and where it writes.
pub struct TrainOptions {
    pub out_dir: PathBuf,
    /// Resume from a checkpoint (or start from a model file's weights).
    pub checkpoint: Option<PathBuf>,
    /// Set to stop: the loop writes a checkpoint and returns.
    pub stop: Arc<AtomicBool>,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = SplitMix64::new(
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

/// Encoder weights from a file: torchvision's ImageNet `.pth` (either PyTorch format), or
/// safetensors with torchvision or tutorial names.
pub fn load_encoder_weights(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Ok(crate::pth::torchvision_resnet_encoder(path, device)?);
    }
    let bytes = crate::files::read_file(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })?;
    let (tensors, _) = file::tensors_from_safetensors(&bytes, path, device)?;
    let mut out = HashMap::new();
    for (name, t) in tensors {
        let full = if name.starts_with("encoder.") {
            Some(name)
        } else {
            file::canonical_name(&format!("encoder.{name}"))
        };
        if let Some(full) = full.filter(|n| n.starts_with("encoder.resnet.")) {
            out.insert(full, t);
        }
    }
    if out.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no ResNet encoder tensors found (expected torchvision names such as conv1.weight, layer1.0.conv1.weight)",
            path.display()
        )));
    }
    Ok(out)
}

/// Where a training run's encoder weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderStart {
    /// The checkpoint or model file the run resumes or continues from.
    Checkpoint(PathBuf),
    /// `encoder_weights`.
    File(PathBuf),
    /// EfficientNet-Lite0's ImageNet weights, built into the binary.
    BuiltIn,
    /// Random weights, asked for with `random_encoder` (residual branches start at zero).
    Random,
}

/// Decides from the settings alone, before anything is read, where the encoder's weights
/// will come from, and refuses an encoder that would be random without `random_encoder`
/// ([`TrainError::RandomEncoder`], naming the choices) or settings that contradict each other.
///
/// `gaze train` calls this first, so a run that cannot give a useful encoder stops before it
/// reads or caches anything. [`train`] does not: library callers (tests, retraining, which
/// always continues from a model) train what they configure.
pub fn encoder_start(
    cfg: &TrainConfig,
    checkpoint: Option<&Path>,
) -> Result<EncoderStart, TrainError> {
    if let Some(path) = checkpoint {
        // The checkpoint holds the whole model, encoder included (its architecture is read
        // from the encoder's tensors), whatever encoder settings are given.
        return Ok(EncoderStart::Checkpoint(path.to_path_buf()));
    }
    let encoder = EncoderConfig::named(&cfg.encoder)
        .ok_or_else(|| TrainError::Invalid(format!("unknown encoder {:?}", cfg.encoder)))?;
    match (&cfg.encoder_weights, encoder, cfg.random_encoder) {
        (Some(path), _, true) => Err(TrainError::Invalid(format!(
            "random_encoder (--random-encoder) asks for a random encoder but encoder_weights \
             (--encoder-weights) gives {}: choose one",
            path.display()
        ))),
        (Some(path), _, false) => Ok(EncoderStart::File(path.clone())),
        (None, EncoderConfig::EfficientnetLite0, true) => Err(TrainError::Invalid(
            "efficientnet-lite0 always starts from its built-in ImageNet weights; \
             random_encoder (--random-encoder) applies to ResNet encoders"
                .into(),
        )),
        (None, EncoderConfig::EfficientnetLite0, false) => Ok(EncoderStart::BuiltIn),
        (None, _, true) => Ok(EncoderStart::Random),
        (None, _, false) => Err(TrainError::RandomEncoder {
            encoder: cfg.encoder.to_ascii_lowercase().replace(['-', '_'], ""),
        }),
    }
}

struct Setup {
    weights: Weights,
    config: ModelConfig,
    state: TrainingState,
    saved: HashMap<String, Tensor>,
    parent: Option<String>,
}

fn setup(
    cfg: &TrainConfig,
    data: &TrainData,
    opts: &TrainOptions,
    device: &Device,
) -> Result<Setup, TrainError> {
    let mut state = TrainingState::fresh(cfg, &data.data_name);
    let (mut tensors, config, parent) = match &opts.checkpoint {
        Some(path) => {
            let mf = file::read_model_file(path, &LoadOptions::default(), device)?;
            if mf.word_map.words() != data.word_map.words() {
                return Err(TrainError::Invalid(format!(
                    "{}: its word map ({} words) differs from the data's ({} words)",
                    path.display(),
                    mf.word_map.len(),
                    data.word_map.len()
                )));
            }
            let mut tensors = mf.tensors;
            match TrainingState::from_metadata(&mf.metadata, path).map_err(TrainError::Invalid)? {
                Some(saved) if saved.config.scst != cfg.scst => {
                    // A new stage with another objective (self-critical training from a
                    // cross-entropy model, or back): the weights carry on; the loop's position,
                    // best score, learning rates and optimiser moments start afresh.
                    tensors.retain(|k, _| !k.starts_with("optim."));
                    tracing::info!(
                        from_epoch = saved.epoch,
                        scst = cfg.scst,
                        "{}: a new training stage from this model (fresh optimiser and best score)",
                        path.display()
                    );
                }
                Some(saved) => {
                    // Resume: the loop's position and learning rates come from the checkpoint;
                    // this run's options (epochs, fine-tuning, budget...) from the command line.
                    state = TrainingState {
                        config: cfg.clone(),
                        fine_tune_encoder: cfg.fine_tune_encoder,
                        ..saved
                    };
                    if cfg.fine_tune_encoder && state.encoder_steps.is_empty() {
                        // The second stage starts fine-tuning: a fresh encoder optimiser.
                        state.encoder_lr = cfg.encoder_lr;
                    }
                }
                None => {}
            }
            let mut config = mf.config;
            config.dropout = cfg.dropout;
            (tensors, config, Some(path.display().to_string()))
        }
        None => {
            let encoder = EncoderConfig::named(&cfg.encoder)
                .ok_or_else(|| TrainError::Invalid(format!("unknown encoder {:?}", cfg.encoder)))?;
            let config = ModelConfig {
                encoder,
                encoded_image_size: cfg.encoded_image_size,
                attention_dim: cfg.attention_dim,
                embed_dim: cfg.emb_dim,
                decoder_dim: cfg.decoder_dim,
                vocab_size: data.word_map.len(),
                dropout: cfg.dropout,
            };
            let mut tensors = init::random_tensors(&config, cfg.seed, device)?;
            if let Some(path) = &cfg.encoder_weights {
                for (name, t) in load_encoder_weights(path, device)? {
                    tensors.insert(name, t);
                }
            } else if config.encoder == EncoderConfig::EfficientnetLite0 {
                tensors.extend(crate::model::encoder::efficientnet::pretrained_tensors(
                    device, false,
                )?);
            } else if cfg.random_encoder {
                // Random on purpose: each residual block starts as the identity, so the
                // features stay in the float16 cache's range (as `gaze bench train` does).
                init::zero_init_residual(&config, &mut tensors)?;
                tracing::info!("random_encoder: the encoder starts from random weights");
            } else {
                tracing::warn!("no --encoder-weights: the encoder starts from random weights");
            }
            if let Some(path) = &cfg.embeddings {
                let emb = &tensors["decoder.embedding.weight"];
                let (v, d) = emb.dims2()?;
                let mut values: Vec<f32> = emb.flatten_all()?.to_vec1()?;
                let found = super::glove::load_into(path, &data.word_map, &mut values, d)?;
                tracing::info!(
                    found,
                    words = data.word_map.len(),
                    "pretrained embeddings loaded"
                );
                tensors.insert(
                    "decoder.embedding.weight".into(),
                    Tensor::from_vec(values, (v, d), device)?,
                );
            }
            (tensors, config, None)
        }
    };
    if config.vocab_size != data.word_map.len() {
        return Err(TrainError::Invalid(format!(
            "the model's vocabulary has {} words but the word map has {}",
            config.vocab_size,
            data.word_map.len()
        )));
    }
    // Optimiser state travels as `optim.*` tensors; take them out of the model's tensors.
    let saved: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("optim."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tensors.retain(|k, _| !k.starts_with("optim."));
    Ok(Setup {
        weights: Weights::new(tensors, device),
        config,
        state,
        saved,
        parent,
    })
}

/// Everything one run works with once set up: the model and its optimisers, the cached
/// features, the files it writes.
struct Session<'a> {
    cfg: &'a TrainConfig,
    data: &'a TrainData,
    stop: &'a AtomicBool,
    device: Device,
    /// When the run started (the time budget counts from here).
    started: Instant,
    weights: Weights,
    model: CaptionModel,
    dec_opt: Adam,
    enc_opt: Option<Adam>,
    train_cache: Option<FeatureCache>,
    val_cache: Option<FeatureCache>,
    val_count: usize,
    batches_per_epoch: usize,
    parent: Option<String>,
    checkpoint_path: PathBuf,
    best_path: PathBuf,
    /// The best model file, once there is one (possibly from an earlier run).
    best_written: Option<PathBuf>,
    /// Self-critical training's reward, when it runs.
    reward: Option<Reward>,
}

/// CIDEr-D with the training split's document frequencies, and every training image's
/// references as word ids.
struct Reward {
    cider: CiderD,
    references: Vec<Vec<Vec<u32>>>,
}

/// What one epoch's training pass gives the loop.
struct EpochStats {
    loss_sum: f64,
    words: usize,
    top5: usize,
    captions_done: usize,
    seconds: f64,
    /// Why the pass stopped before the epoch's end, if it did.
    partial: Option<StopReason>,
    scst: Option<ScstStats>,
}

/// Runs training to the end (epochs, patience, budget or interruption), reporting to
/// `observer` (progress, the JSON-lines log: see [`super::observer`]).
pub fn train(
    cfg: &TrainConfig,
    data: &TrainData,
    opts: &TrainOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    let (mut run, mut state) = Session::prepare(cfg, data, opts, observer)?;
    observer.run_started(&opts.out_dir)?;
    let schedule = Schedule::from_config(cfg);
    let mut history = Vec::new();
    let mut stop = StopReason::Epochs;
    while state.epoch < cfg.epochs {
        if state.batch == 0 {
            match schedule.at_epoch_start(state.epochs_since_improvement) {
                EpochStart::Stop => {
                    stop = StopReason::Patience;
                    break;
                }
                EpochStart::DecayThenTrain => {
                    state.decoder_lr = schedule.decayed(state.decoder_lr);
                    if cfg.fine_tune_encoder {
                        state.encoder_lr = schedule.decayed(state.encoder_lr);
                    }
                    tracing::info!(
                        decoder_lr = state.decoder_lr,
                        encoder_lr = state.encoder_lr,
                        "learning rates decayed"
                    );
                }
                EpochStart::Train => {}
            }
        }
        run.dec_opt.lr = state.decoder_lr;
        if let Some(o) = run.enc_opt.as_mut() {
            o.lr = state.encoder_lr;
        }
        let stats = if cfg.scst {
            run.scst_epoch(&mut state, observer)?
        } else {
            run.train_epoch(&mut state, observer)?
        };
        if stats.partial == Some(StopReason::Interrupted) && state.batch < run.batches_per_epoch {
            // Ctrl-C: keep the position, skip validation, write the checkpoint, leave.
            run.save_checkpoint(&mut state, observer)?;
            stop = StopReason::Interrupted;
            break;
        }
        let record = run.end_epoch(&schedule, &stats, &mut state, observer)?;
        observer.epoch_finished(&record)?;
        history.push(record);
        if let Some(reason) = stats.partial {
            stop = reason;
            break;
        }
    }
    Ok(TrainOutcome {
        stop,
        state,
        checkpoint: run.checkpoint_path,
        best: run.best_written,
        history,
    })
}

impl<'a> Session<'a> {
    /// Checks the data, builds the model and optimisers (from the checkpoint when resuming)
    /// and caches a frozen encoder's features.
    fn prepare(
        cfg: &'a TrainConfig,
        data: &'a TrainData,
        opts: &'a TrainOptions,
        observer: &mut dyn TrainObserver,
    ) -> Result<(Self, TrainingState), TrainError> {
        let device = crate::device::open_device(&cfg.device)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        data.train
            .validate(&data.word_map, "training split")
            .map_err(TrainError::Invalid)?;
        data.val
            .validate(&data.word_map, "validation split")
            .map_err(TrainError::Invalid)?;
        if data.train.captions.is_empty() || data.val.num_images() == 0 {
            return Err(TrainError::Invalid(
                "the training or validation split is empty".into(),
            ));
        }
        if cfg.scst {
            check_scst(cfg)?;
        }
        std::fs::create_dir_all(&opts.out_dir).map_err(|source| TrainError::Io {
            path: opts.out_dir.clone(),
            source,
        })?;
        let started = Instant::now();

        let Setup {
            mut weights,
            config,
            state,
            saved,
            parent,
        } = setup(cfg, data, opts, &device)?;
        let fine_tune = cfg.fine_tune_encoder;
        let trainable = weights.make_trainable(|n| {
            if n.starts_with("decoder.") {
                return cfg.fine_tune_embeddings || n != "decoder.embedding.weight";
            }
            fine_tune && config.encoder.fine_tunes(n)
        })?;
        let (enc_vars, dec_vars): (Vec<_>, Vec<_>) = trainable
            .into_iter()
            .partition(|(n, _)| n.starts_with("encoder."));
        let model = CaptionModel::build(
            &weights,
            config.clone(),
            data.word_map.clone(),
            serde_json::json!({}),
            Path::new("<training model>"),
        )?;
        let mut dec_opt = Adam::new(dec_vars, state.decoder_lr)?;
        dec_opt.load_state(&saved, &state.decoder_steps, "optim.decoder")?;
        let enc_opt = if fine_tune {
            let mut o = Adam::new(enc_vars, state.encoder_lr)?;
            o.load_state(&saved, &state.encoder_steps, "optim.encoder")?;
            Some(o)
        } else {
            None
        };

        let val_count = cfg
            .val_images
            .unwrap_or(usize::MAX)
            .min(data.val.num_images());
        let (train_cache, val_cache) = if fine_tune || cfg.feature_cache == CacheMode::Off {
            (None, None)
        } else {
            let (t, v) = cache_features(&model, data, val_count, cfg, opts, observer)?;
            (Some(t), Some(v))
        };
        let best_path = opts.out_dir.join(best_checkpoint_name(&data.data_name));
        let reward = cfg.scst.then(|| {
            let references: Vec<Vec<Vec<u32>>> = (0..data.train.num_images())
                .map(|i| data.train.references(i, &data.word_map))
                .collect();
            let cider = CiderD::new(&references, data.word_map.len());
            tracing::info!(
                images = references.len(),
                "self-critical training: CIDEr-D document frequencies from the training split"
            );
            Reward { cider, references }
        });
        let batches_per_epoch = if cfg.scst {
            data.train.num_images()
        } else {
            data.train.captions.len()
        }
        .div_ceil(cfg.batch_size.max(1));
        let run = Session {
            cfg,
            data,
            stop: &opts.stop,
            device,
            started,
            weights,
            model,
            dec_opt,
            enc_opt,
            train_cache,
            val_cache,
            val_count,
            batches_per_epoch,
            reward,
            parent,
            checkpoint_path: opts.out_dir.join(checkpoint_name(&data.data_name)),
            best_written: best_path.exists().then(|| best_path.clone()),
            best_path,
        };
        Ok((run, state))
    }

    /// Trains epoch `state.epoch` from batch `state.batch` to its end, or until a stop is
    /// requested or the time budget runs out (after the batch in progress); `state.batch`
    /// follows.
    fn train_epoch(
        &mut self,
        state: &mut TrainingState,
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochStats, TrainError> {
        let (cfg, data) = (self.cfg, self.data);
        let epoch = state.epoch;
        let n_captions = data.train.captions.len();
        // This epoch's order of captions.
        let mut order: Vec<usize> = (0..n_captions).collect();
        SplitMix64::new(mix(cfg.seed, 1, epoch as u64)).shuffle(&mut order);
        let sampling = cfg.sampling_prob(epoch);

        observer.epoch_started(epoch, self.batches_per_epoch, state.batch);
        let t0 = Instant::now();
        let (mut loss_sum, mut words, mut top5, mut captions_done) = (0f64, 0usize, 0usize, 0usize);
        let mut partial = None;
        for b in state.batch..self.batches_per_epoch {
            let ids = &order[b * cfg.batch_size..((b + 1) * cfg.batch_size).min(n_captions)];
            let images: Vec<usize> = ids
                .iter()
                .map(|&c| c / data.train.captions_per_image)
                .collect();
            let features = match &self.train_cache {
                Some(cache) => cache.gather(&images, &self.device)?,
                None => {
                    let x = data.train.image_batch(&images, &self.device)?;
                    self.model.encoder.forward_t(&x, cfg.fine_tune_encoder)?
                }
            };
            let (caps, lens) = data.train.caption_batch(ids, &self.device)?;
            let mut rng = SplitMix64::new(mix(cfg.seed, 2 + epoch as u64, b as u64));
            let mut topts = TeacherOptions {
                rng: Some(&mut rng),
                dropout: true,
                sampling_prob: sampling,
            };
            let loss = batch_loss(
                &self.model.decoder,
                &features,
                &caps,
                &lens,
                cfg.alpha_c,
                &mut topts,
            )?;
            let value = loss.value();
            if !value.is_finite() {
                return Err(self.non_finite(value, epoch, b));
            }
            let grads = loss.loss.backward()?;
            let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
            self.dec_opt.step(&grads, clip)?;
            if let Some(o) = self.enc_opt.as_mut() {
                o.step(&grads, clip)?;
            }
            loss_sum += value as f64 * loss.words as f64;
            words += loss.words;
            top5 += loss.top5_correct;
            captions_done += ids.len();
            state.batch = b + 1;
            observer.batch_done(&BatchProgress {
                batches_done: state.batch,
                loss: loss_sum / words as f64,
                top5: 100.0 * top5 as f64 / words as f64,
                captions_per_second: captions_done as f64 / t0.elapsed().as_secs_f64(),
                reward: None,
            });
            partial = self.stop_requested();
            if partial.is_some() {
                break;
            }
        }
        observer.batches_finished();
        Ok(EpochStats {
            loss_sum,
            words,
            top5,
            captions_done,
            seconds: t0.elapsed().as_secs_f64(),
            partial,
            scst: None,
        })
    }

    /// The error for a loss that is not a number, naming the checkpoint to go back to.
    fn non_finite(&self, value: f32, epoch: usize, batch: usize) -> TrainError {
        TrainError::NonFiniteLoss {
            value,
            epoch,
            batch,
            checkpoint: if self.checkpoint_path.exists() {
                self.checkpoint_path.display().to_string()
            } else {
                "none (no epoch finished)".into()
            },
        }
    }

    /// Why the epoch should stop after this batch: an interruption or the spent time budget.
    fn stop_requested(&self) -> Option<StopReason> {
        if self.stop.load(Ordering::SeqCst) {
            return Some(StopReason::Interrupted);
        }
        self.cfg
            .max_minutes
            .is_some_and(|m| self.started.elapsed().as_secs_f64() > m * 60.0)
            .then_some(StopReason::TimeBudget)
    }

    /// One epoch of self-critical training from batch `state.batch`: batches of
    /// `batch_size` images (each once per epoch, in a seeded order), `scst_samples` sampled
    /// captions each; stops as [`Self::train_epoch`] does.
    fn scst_epoch(
        &mut self,
        state: &mut TrainingState,
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochStats, TrainError> {
        let (cfg, data) = (self.cfg, self.data);
        let reward = self
            .reward
            .as_ref()
            .expect("set up for self-critical training");
        let epoch = state.epoch;
        let n_images = data.train.num_images();
        let mut order: Vec<usize> = (0..n_images).collect();
        SplitMix64::new(mix(cfg.seed, 1, epoch as u64)).shuffle(&mut order);
        let special = self.model.special_tokens();
        let n = cfg.scst_samples;
        let sampling = SampleOptions {
            samples: n,
            max_steps: cfg.scst_max_length.max(1) - 1,
            ..Default::default()
        };
        let greedy_search = BeamOptions {
            beam_size: 1,
            max_steps: sampling.max_steps,
            ..Default::default()
        };
        let words_of = |tokens: &[u32]| -> Vec<u32> {
            tokens
                .iter()
                .copied()
                .filter(|&t| !data.word_map.is_special(t))
                .collect()
        };

        observer.epoch_started(epoch, self.batches_per_epoch, state.batch);
        let t0 = Instant::now();
        let (mut loss_sum, mut words, mut captions_done) = (0f64, 0usize, 0usize);
        let (mut reward_sum, mut baseline_sum, mut beat, mut samples, mut entropy_sum) =
            (0f64, 0f64, 0usize, 0usize, 0f64);
        let mut partial = None;
        for b in state.batch..self.batches_per_epoch {
            let images = &order[b * cfg.batch_size..((b + 1) * cfg.batch_size).min(n_images)];
            let features = match &self.train_cache {
                Some(cache) => cache.gather(images, &self.device)?,
                None => {
                    let x = data.train.image_batch(images, &self.device)?;
                    self.model.encoder.forward_t(&x, cfg.fine_tune_encoder)?
                }
            };
            let e = *features.dims().last().expect("rank >= 3");
            let features = features.reshape((images.len(), (), e))?;
            let frozen = features.detach();
            let seeds: Vec<u64> = images
                .iter()
                .map(|&i| mix(cfg.seed, 1000 + epoch as u64, i as u64))
                .collect();
            let drawn = sample_captions(
                &self.model.decoder,
                &frozen,
                special,
                &sampling,
                &seeds,
                false,
            )?;
            let mut rewards = Vec::with_capacity(images.len() * n);
            let mut sequences = Vec::with_capacity(images.len() * n);
            for (k, per_image) in drawn.into_iter().enumerate() {
                let refs = &reward.references[images[k]];
                for s in per_image {
                    rewards.push(reward.cider.score(refs, &words_of(&s.tokens)));
                    sequences.push(s.tokens);
                }
            }
            let greedy: Option<Vec<f64>> = if cfg.scst_baseline == ScstBaseline::Greedy {
                let found = beam_search(&self.model.decoder, &frozen, special, &greedy_search)?;
                Some(
                    found
                        .iter()
                        .zip(images)
                        .map(|(r, &i)| {
                            reward
                                .cider
                                .score(&reward.references[i], &words_of(&r.tokens))
                        })
                        .collect(),
                )
            } else {
                None
            };
            let base = baselines(&rewards, n, cfg.scst_baseline, greedy.as_deref())
                .map_err(TrainError::Invalid)?;
            let advantages: Vec<f32> = rewards
                .iter()
                .zip(&base)
                .map(|(r, b)| (r - b) as f32)
                .collect();
            let rows: Vec<u32> = (0..images.len() as u32)
                .flat_map(|k| std::iter::repeat_n(k, n))
                .collect();
            let per_sample = features
                .index_select(&Tensor::from_vec(rows, images.len() * n, &self.device)?, 0)?;
            let loss = scst_loss(
                &self.model.decoder,
                &per_sample,
                &sequences,
                special.end,
                &advantages,
                cfg.scst_entropy,
            )?;
            if !loss.value.is_finite() {
                return Err(self.non_finite(loss.value, epoch, b));
            }
            let grads = loss.loss.backward()?;
            let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
            self.dec_opt.step(&grads, clip)?;
            if let Some(o) = self.enc_opt.as_mut() {
                o.step(&grads, clip)?;
            }
            loss_sum += loss.value as f64 * loss.words as f64;
            words += loss.words;
            entropy_sum += loss.entropy as f64 * loss.words as f64;
            reward_sum += rewards.iter().sum::<f64>();
            baseline_sum += base.iter().sum::<f64>();
            beat += rewards.iter().zip(&base).filter(|(r, b)| r > b).count();
            samples += rewards.len();
            captions_done += images.len();
            state.batch = b + 1;
            observer.batch_done(&BatchProgress {
                batches_done: state.batch,
                loss: loss_sum / words as f64,
                top5: f64::NAN,
                captions_per_second: captions_done as f64 / t0.elapsed().as_secs_f64(),
                reward: Some(reward_sum / samples as f64),
            });
            partial = self.stop_requested();
            if partial.is_some() {
                break;
            }
        }
        observer.batches_finished();
        let per_sample = |x: f64| {
            if samples > 0 {
                x / samples as f64
            } else {
                f64::NAN
            }
        };
        Ok(EpochStats {
            loss_sum,
            words,
            top5: 0,
            captions_done,
            seconds: t0.elapsed().as_secs_f64(),
            partial,
            scst: Some(ScstStats {
                mean_reward: per_sample(reward_sum),
                mean_baseline: per_sample(baseline_sum),
                beat_baseline: per_sample(beat as f64),
                mean_entropy: if words > 0 {
                    entropy_sum / words as f64
                } else {
                    f64::NAN
                },
                samples,
            }),
        })
    }

    /// After an epoch's training pass (whole or cut short): validates, updates the best score
    /// and, for a whole epoch, the schedule's count and the position; writes the checkpoint
    /// and, on improvement, the best model. Returns the epoch's record.
    fn end_epoch(
        &mut self,
        schedule: &Schedule,
        stats: &EpochStats,
        state: &mut TrainingState,
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochRecord, TrainError> {
        let epoch = state.epoch;
        let epoch_done = state.batch >= self.batches_per_epoch;
        let val = validate(
            &self.model,
            &self.data.val,
            self.val_count,
            self.val_cache.as_ref(),
            &self.data.word_map,
            self.cfg,
            observer,
        )?;
        // Self-critical training optimises CIDEr-D, so it keeps the model that scores best on it.
        let score = if self.cfg.scst {
            val.cider_d
        } else {
            val.bleu4
        };
        let improved = schedule.improves(score, state.best_epoch.map(|_| state.best_score));
        if improved {
            state.best_score = score;
            state.best_epoch = Some(epoch);
        }
        if epoch_done {
            state.epochs_since_improvement =
                schedule.after_epoch(improved, state.epochs_since_improvement);
            state.epoch += 1;
            state.batch = 0;
        }
        self.save_checkpoint(state, observer)?;
        if improved {
            self.write_model(&self.best_path, state, Some(&val))?;
            self.best_written = Some(self.best_path.clone());
            observer.checkpoint_saved(&self.best_path, true);
        }
        let (words, n) = (stats.words, stats.words as f64);
        Ok(EpochRecord {
            epoch,
            partial: !epoch_done,
            train_loss: if words > 0 {
                stats.loss_sum / n
            } else {
                f64::NAN
            },
            train_top5: if words > 0 && stats.scst.is_none() {
                100.0 * stats.top5 as f64 / n
            } else {
                f64::NAN
            },
            captions_per_second: stats.captions_done as f64 / stats.seconds.max(1e-9),
            train_seconds: stats.seconds,
            scst: stats.scst.clone(),
            val,
            decoder_lr: self.dec_opt.lr,
            encoder_lr: self.enc_opt.as_ref().map(|o| o.lr).unwrap_or(0.0),
            is_best: improved,
            best_bleu4: (!self.cfg.scst).then_some(state.best_score),
            best_cider_d: self.cfg.scst.then_some(state.best_score),
            epochs_since_improvement: state.epochs_since_improvement,
        })
    }

    /// Writes the resumable checkpoint, recording the optimisers' step counts in `state`.
    fn save_checkpoint(
        &self,
        state: &mut TrainingState,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        state.decoder_steps = self.dec_opt.steps();
        state.encoder_steps = self.enc_opt.as_ref().map(|o| o.steps()).unwrap_or_default();
        self.write_model(&self.checkpoint_path, state, None)?;
        observer.checkpoint_saved(&self.checkpoint_path, false);
        Ok(())
    }

    /// A model file with the optimiser state and the loop's state: the checkpoint, or with
    /// `val` the best model.
    fn write_model(
        &self,
        path: &Path,
        state: &TrainingState,
        val: Option<&Validation>,
    ) -> Result<(), TrainError> {
        let (dec, enc) = (&self.dec_opt, self.enc_opt.as_ref());
        let mut tensors = model_tensors(&self.weights, &self.model);
        tensors.extend(dec.state_tensors("optim.decoder"));
        if let Some(o) = enc {
            tensors.extend(o.state_tensors("optim.encoder"));
        }
        let mut state = state.clone();
        state.decoder_steps = dec.steps();
        state.encoder_steps = enc.map(|o| o.steps()).unwrap_or_default();
        let provenance = serde_json::json!({
            "data_name": state.data_name,
            "epoch": state.best_epoch,
            "bleu4": state.best_bleu4(),
            "cider_d": state.best_cider_d(),
            "validation": val,
            "fine_tuned_encoder": state.fine_tune_encoder,
            "parent": self.parent,
            "trained_by": format!("gaze {}", env!("CARGO_PKG_VERSION")),
        });
        file::write_model_file_with(
            path,
            &tensors,
            &self.model.config,
            &self.model.word_map,
            &provenance,
            state.to_metadata(),
        )?;
        Ok(())
    }
}

/// Refuses self-critical settings that cannot work, naming the setting.
fn check_scst(cfg: &TrainConfig) -> Result<(), TrainError> {
    if cfg.scst_samples == 0 {
        return Err(TrainError::Invalid(
            "scst_samples (--scst-samples) must be at least 1".into(),
        ));
    }
    if cfg.scst_baseline == ScstBaseline::Mean && cfg.scst_samples < 2 {
        return Err(TrainError::Invalid(
            "the mean baseline (--scst-baseline mean) compares each sample with the others: \
             scst_samples (--scst-samples) must be at least 2, or use --scst-baseline greedy"
                .into(),
        ));
    }
    if cfg.scst_max_length < 2 {
        return Err(TrainError::Invalid(
            "scst_max_length (--scst-max-length) must be at least 2 (a word and <end>)".into(),
        ));
    }
    if !cfg.scst_entropy.is_finite() {
        return Err(TrainError::Invalid(
            "scst_entropy (--scst-entropy) must be a finite number".into(),
        ));
    }
    Ok(())
}

/// Encodes the training images and the validated images once, for a frozen encoder.
fn cache_features(
    model: &CaptionModel,
    data: &TrainData,
    val_count: usize,
    cfg: &TrainConfig,
    opts: &TrainOptions,
    observer: &mut dyn TrainObserver,
) -> Result<(FeatureCache, FeatureCache), TrainError> {
    let p = model.config.num_pixels();
    let e = model.config.encoder_dim();
    let total = FeatureCache::bytes_needed(data.train.num_images() + val_count, p, e);
    let mode = match cfg.feature_cache {
        CacheMode::Auto if total as f64 > cfg.cache_memory_gib * (1u64 << 30) as f64 => {
            CacheMode::Disk
        }
        CacheMode::Auto => CacheMode::Memory,
        m => m,
    };
    tracing::info!(
        ?mode,
        megabytes = total / (1 << 20),
        "caching encoder features (the encoder is frozen)"
    );
    let mut encode = |split: &SplitData, count: usize, what: &str| {
        encode_all(model, split, count, mode, cfg, opts, observer, what)
    };
    let t = encode(
        &data.train,
        data.train.num_images(),
        "encoding training images",
    )?;
    let v = encode(&data.val, val_count, "encoding validation images")?;
    Ok((t, v))
}

#[allow(clippy::too_many_arguments)]
fn encode_all(
    model: &CaptionModel,
    split: &SplitData,
    count: usize,
    mode: CacheMode,
    cfg: &TrainConfig,
    opts: &TrainOptions,
    observer: &mut dyn TrainObserver,
    what: &str,
) -> Result<FeatureCache, TrainError> {
    let p = model.config.num_pixels();
    let e = model.config.encoder_dim();
    let mut cache = FeatureCache::new(mode, count, p, e, &opts.out_dir)?;
    observer.encoding_started(what, count);
    let chunk = cfg.batch_size.clamp(1, 32);
    // A stop requested while encoding (Ctrl-C) abandons the run: there is no epoch to
    // checkpoint yet. One already set when training starts still lets the first batch run.
    let stop_was_set = opts.stop.load(Ordering::SeqCst);
    for start in (0..count).step_by(chunk) {
        if !stop_was_set && opts.stop.load(Ordering::SeqCst) {
            return Err(TrainError::Interrupted);
        }
        let ids: Vec<usize> = (start..(start + chunk).min(count)).collect();
        let x = split.image_batch(&ids, &model.device)?;
        cache.put(start, &model.encoder.forward(&x)?)?;
        observer.encoded(ids.len());
    }
    observer.encoding_finished();
    Ok(cache)
}

/// Model tensors as they are now: parameters, current BatchNorm statistics.
fn model_tensors(weights: &Weights, model: &CaptionModel) -> Vec<(String, Tensor)> {
    let mut map: HashMap<String, Tensor> = weights
        .names()
        .map(|n| (n.clone(), weights.raw(n).expect("listed").clone()))
        .collect();
    for (name, t) in model.encoder.buffers() {
        map.insert(name, t);
    }
    let mut out: Vec<(String, Tensor)> = map.into_iter().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
