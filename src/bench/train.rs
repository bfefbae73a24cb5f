//! Training throughput on synthetic in-memory data (`gaze bench train`), for the decoder stage
//! (frozen encoder, cached features) or fine-tuning (encoder layer2..layer4 trained too), on
//! any device.
//!
//! Needs no dataset. The data are noise images and random captions of COCO-like length (8 to
//! 14 words, padded to the tutorial's 52 slots) over a COCO-sized vocabulary; the model starts
//! from random weights at the tutorial's sizes. What the speed depends on (shapes, caption
//! lengths, batch size) is as in real training; the loss values mean nothing.
//!
//! The loop runs two epochs: the first warms up (kernel loading, allocator), the second is the
//! measurement. Each epoch's rate counts the training batches only (not feature caching,
//! validation or checkpoint writing), as the training log's `captions_per_second` does.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;

use super::BenchError;
use crate::data::{DataError, WordMap};
use crate::model::{init, EncoderConfig, ModelConfig};
use crate::rng::SplitMix64;
use crate::train::data::{ImageStore, SplitData, TrainData};
use crate::train::features::CacheMode;
use crate::train::{train, EpochRecord, SilentObserver, TrainConfig, TrainOptions};

/// The tutorial's captions: at most 50 words, plus `<start>` and `<end>`.
const CAPTION_SLOTS: usize = 52;
const CAPTIONS_PER_IMAGE: usize = 5;

/// What to measure.
#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    /// Encoder backbone name (`resnet101`, `efficientnet-lite0`, ...).
    pub encoder: String,
    /// Image side in pixels.
    pub image_size: usize,
    pub batch_size: usize,
    /// Training captions per epoch (five per image).
    pub captions: usize,
    pub vocab: usize,
    /// Train encoder layer2..layer4 too.
    pub fine_tune: bool,
    pub device: String,
}

impl TrainBenchOptions {
    /// The stage measured, in words.
    pub fn stage(&self) -> &'static str {
        if self.fine_tune {
            "fine-tuning (encoder layer2..layer4 + decoder)"
        } else {
            "decoder stage (frozen encoder, cached features)"
        }
    }

    /// Refuses sizes the synthetic data cannot be made at.
    pub fn check(&self) -> Result<(), BenchError> {
        if self.vocab < 8 || self.batch_size == 0 || self.captions == 0 {
            return Err(BenchError::Options(
                "--vocab must be at least 8, --batch-size and --captions at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Trains two epochs on synthetic data and returns their records: warm-up, then the timed one.
pub fn run(b: &TrainBenchOptions) -> Result<[EpochRecord; 2], BenchError> {
    b.check()?;
    let word_map = super::word_map(b.vocab);
    let train_images = b.captions.div_ceil(CAPTIONS_PER_IMAGE);
    let val_images = b.batch_size.min(8);
    let data = TrainData {
        train: synthetic_split(train_images, b.image_size, &word_map, 1),
        val: synthetic_split(val_images, b.image_size, &word_map, 2),
        word_map,
        data_name: "bench".into(),
    };
    let out = tempfile::tempdir().map_err(|source| BenchError::Io {
        what: "cannot make a temporary folder for checkpoints".into(),
        source,
    })?;
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
        encoder_weights: random_resnet_encoder(&b.encoder, out.path())?,
        ..Default::default()
    };
    let opts = TrainOptions {
        out_dir: out.path().to_path_buf(),
        checkpoint: None,
        stop: Arc::new(AtomicBool::new(false)),
    };
    // The timings come from the outcome; a log in a temporary folder would help nobody.
    let outcome = train(&cfg, &data, &opts, &mut SilentObserver)?;
    let epochs = outcome.history.len();
    outcome.history.try_into().map_err(|_| {
        BenchError::Options(format!(
            "training stopped after {epochs} epoch(s) ({:?}); expected 2",
            outcome.stop
        ))
    })
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

/// `images` noise images with five random captions each over `word_map`'s ordinary words.
pub fn synthetic_split(images: usize, side: usize, word_map: &WordMap, seed: u64) -> SplitData {
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
fn random_resnet_encoder(encoder: &str, dir: &Path) -> Result<Option<PathBuf>, BenchError> {
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
    candle_core::safetensors::save(&tensors, &path).map_err(|source| BenchError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_captions_fit_the_word_map() {
        let wm = super::super::word_map(24);
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
