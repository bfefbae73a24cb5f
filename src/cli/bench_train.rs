//! `gaze bench train`: training throughput (captions/s) of the real training loop on synthetic
//! in-memory data, for the decoder stage (frozen encoder, cached features) or fine-tuning
//! (encoder layer2..layer4 trained too), on any device.
//!
//! Needs no dataset, so it runs from the binary alone (on a GPU machine without Rust, for
//! instance). The data are noise images and random captions of COCO-like length (8 to 14
//! words, padded to the tutorial's 52 slots) over a COCO-sized vocabulary; the model starts
//! from random weights at the tutorial's sizes. What the speed depends on (shapes, caption
//! lengths, batch size) is as in real training; the loss values mean nothing.
//!
//! The loop runs two epochs: the first warms up (kernel loading, allocator), the second is
//! the measurement. Each epoch's rate counts the training batches only (not feature caching,
//! validation or checkpoint writing), as the training log's `captions_per_second` does.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use gaze::data::{DataError, WordMap};
use gaze::model::{init, EncoderConfig, ModelConfig};
use gaze::rng::SplitMix64;
use gaze::train::data::{ImageStore, SplitData, TrainData};
use gaze::train::features::CacheMode;
use gaze::train::{train, SilentObserver, TrainConfig, TrainOptions};

/// The tutorial's captions: at most 50 words, plus `<start>` and `<end>`.
const CAPTION_SLOTS: usize = 52;
const CAPTIONS_PER_IMAGE: usize = 5;

#[derive(Args, Debug)]
pub struct TrainBench {
    /// Encoder backbone: resnet18, resnet34, resnet50, resnet101, resnet152, efficientnet-lite0.
    #[arg(long, default_value = "resnet101")]
    pub encoder: String,
    /// Image side in pixels (the tutorial's prepared images are 256).
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Training captions per epoch (five per image).
    #[arg(long, default_value_t = 320)]
    pub captions: usize,
    /// Vocabulary size (COCO's tutorial word map has 9490 entries).
    #[arg(long, default_value_t = 9490)]
    pub vocab: usize,
    /// Fine-tune the encoder (layer2..layer4) too: the tutorial's second stage.
    #[arg(long)]
    pub fine_tune: bool,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Deterministic noise images, made on demand (nothing held in memory).
struct NoiseImages {
    count: usize,
    side: usize,
    seed: u64,
}

impl ImageStore for NoiseImages {
    fn len(&self) -> usize {
        self.count
    }
    fn side(&self) -> usize {
        self.side
    }
    fn read_chw(&self, index: usize, out: &mut [u8]) -> Result<(), DataError> {
        let mut rng = SplitMix64::new(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9));
        for chunk in out.chunks_mut(8) {
            let bytes = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

fn synthetic_split(images: usize, side: usize, word_map: &WordMap, seed: u64) -> SplitData {
    let mut rng = SplitMix64::new(seed);
    let words = word_map.len() as u64 - 4; // ids 1..=words are ordinary words
    let mut captions = Vec::with_capacity(images * CAPTIONS_PER_IMAGE);
    let mut lengths = Vec::with_capacity(images * CAPTIONS_PER_IMAGE);
    for _ in 0..images * CAPTIONS_PER_IMAGE {
        let n = 8 + rng.below(7) as usize;
        let mut cap = Vec::with_capacity(CAPTION_SLOTS);
        cap.push(word_map.start);
        cap.extend((0..n).map(|_| 1 + rng.below(words) as u32));
        cap.push(word_map.end);
        lengths.push(cap.len());
        cap.resize(CAPTION_SLOTS, word_map.pad);
        captions.push(cap);
    }
    SplitData {
        images: Arc::new(NoiseImages {
            count: images,
            side,
            seed,
        }),
        captions,
        lengths,
        captions_per_image: CAPTIONS_PER_IMAGE,
    }
}

/// Random ImageNet-style weights for a ResNet encoder, written to `dir`, with each residual
/// branch's last BatchNorm scale at zero (torchvision's `zero_init_residual`). Plain random
/// weights would do for speed, but a random ResNet-101's outputs reach about 1e5, beyond the
/// float16 feature cache's range, and training would refuse them. `None` for other encoders.
fn random_resnet_encoder(encoder: &str, dir: &std::path::Path) -> Result<Option<PathBuf>> {
    let Some(config @ EncoderConfig::Resnet { .. }) = EncoderConfig::named(encoder) else {
        return Ok(None);
    };
    let cfg = ModelConfig {
        encoder: config,
        ..ModelConfig::tutorial(8)
    };
    let mut tensors = init::random_tensors(&cfg, 0, &Device::Cpu)?;
    init::zero_init_residual(&cfg, &mut tensors)?;
    tensors.retain(|name, _| name.starts_with("encoder."));
    let path = dir.join("random_encoder.safetensors");
    candle_core::safetensors::save(&tensors, &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}

pub fn run(b: TrainBench) -> Result<ExitCode> {
    if b.vocab < 8 || b.batch_size == 0 || b.captions == 0 {
        bail!("--vocab must be at least 8, --batch-size and --captions at least 1");
    }
    let names: Vec<String> = (0..b.vocab - 4).map(|i| format!("w{i}")).collect();
    let word_map = WordMap::from_counts(names.iter().map(|w| (w.as_str(), 10)), 5);
    let train_images = b.captions.div_ceil(CAPTIONS_PER_IMAGE);
    let val_images = b.batch_size.min(8);
    let data = TrainData {
        train: synthetic_split(train_images, b.image_size, &word_map, 1),
        val: synthetic_split(val_images, b.image_size, &word_map, 2),
        word_map,
        data_name: "bench".into(),
    };
    let cfg = TrainConfig {
        encoder: b.encoder.clone(),
        batch_size: b.batch_size,
        epochs: 2,
        fine_tune_encoder: b.fine_tune,
        feature_cache: if b.fine_tune {
            CacheMode::Off
        } else {
            CacheMode::Memory
        },
        val_images: Some(val_images),
        device: b.device.clone(),
        ..Default::default()
    };
    let out = tempfile::tempdir().context("cannot make a temporary folder for checkpoints")?;
    let cfg = TrainConfig {
        encoder_weights: random_resnet_encoder(&b.encoder, out.path())?,
        ..cfg
    };
    let opts = TrainOptions {
        out_dir: out.path().to_path_buf(),
        checkpoint: None,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let stage = if b.fine_tune {
        "fine-tuning (encoder layer2..layer4 + decoder)"
    } else {
        "decoder stage (frozen encoder, cached features)"
    };
    println!(
        "train: {stage}; {} at {}x{}, vocabulary {}, batch {}, {} captions per epoch, {}",
        b.encoder, b.image_size, b.image_size, b.vocab, b.batch_size, b.captions, b.device
    );
    // The timings come from the outcome; a log in a temporary folder would help nobody.
    let outcome = train(&cfg, &data, &opts, &mut SilentObserver)?;
    let [warm, timed] = outcome.history.as_slice() else {
        bail!(
            "training stopped after {} epoch(s) ({:?}); expected 2",
            outcome.history.len(),
            outcome.stop
        );
    };
    println!(
        "{:>8} {:>12} {:>10} {:>10}",
        "epoch", "captions/s", "s/batch", "seconds"
    );
    for (label, rec) in [("warm-up", warm), ("timed", timed)] {
        let cps = rec.captions_per_second;
        println!(
            "{label:>8} {cps:>12.1} {:>10.3} {:>10.2}",
            b.batch_size as f64 / cps,
            rec.train_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_captions_fit_the_word_map() {
        let names: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        let wm = WordMap::from_counts(names.iter().map(|w| (w.as_str(), 10)), 5);
        let split = synthetic_split(3, 16, &wm, 9);
        assert_eq!(split.captions.len(), 15);
        split.validate(&wm, "bench").unwrap();
        for (cap, &len) in split.captions.iter().zip(&split.lengths) {
            assert!((10..=16).contains(&len));
            assert_eq!(cap[0], wm.start);
            assert_eq!(cap[len - 1], wm.end);
            assert!(cap[1..len - 1].iter().all(|&t| !wm.is_special(t)));
        }
        let mut a = vec![0u8; 3 * 16 * 16];
        let mut b = a.clone();
        split.images.read_chw(2, &mut a).unwrap();
        split.images.read_chw(2, &mut b).unwrap();
        assert_eq!(a, b, "images are deterministic");
        split.images.read_chw(1, &mut b).unwrap();
        assert_ne!(a, b);
    }
}
