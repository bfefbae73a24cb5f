//! Small models and images that tests make themselves.
#![allow(dead_code)]

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::Device;
use gaze::data::WordMap;
use gaze::model::config::{BlockKind, EncoderConfig, ModelConfig};

/// A random model small enough to caption a 256x256 image in a few milliseconds: a one-block
/// ResNet 8 channels wide, a 4x4 attention grid, tiny decoder dims, a 10-word vocabulary.
pub fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    let words = [
        "a", "red", "blue", "dog", "cat", "ball", "on", "grass", "the", "sky",
    ];
    let word_map = WordMap::from_counts(words.iter().map(|w| (*w, 10)), 0);
    model_file(dir, &word_map, &format!("tiny-{seed}"), seed)
}

/// The tiny architecture with `word_map`'s words and weights drawn from `seed`, written to
/// `dir/name.safetensors`.
fn model_file(dir: &Path, word_map: &WordMap, name: &str, seed: u64) -> PathBuf {
    let cfg = ModelConfig {
        encoder: EncoderConfig::Resnet {
            block: BlockKind::Basic,
            layers: [1, 1, 1, 1],
            width: 8,
        },
        encoded_image_size: 4,
        attention_dim: 16,
        embed_dim: 16,
        decoder_dim: 24,
        vocab_size: word_map.len(),
        dropout: 0.5,
    };
    let tensors = gaze::model::init::random_tensors(&cfg, seed, &Device::Cpu).unwrap();
    let mut named: Vec<_> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let path = dir.join(format!("{name}.safetensors"));
    gaze::model::file::write_model_file(
        &path,
        &named,
        &cfg,
        word_map,
        &serde_json::json!({ "name": name }),
    )
    .unwrap();
    path
}

/// A small PNG whose pixels depend on `seed`, so every seed gives different bytes.
pub fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let v = seed.wrapping_mul(2654435761) ^ (x * 31 + y * 17);
        image::Rgb([(v & 255) as u8, ((v >> 8) & 255) as u8, (x * 8 + y) as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A tiny random model (as `tiny_model`) with the word map of prepared files.
pub fn tiny_model_for(dir: &Path, word_map: &WordMap, name: &str) -> PathBuf {
    model_file(dir, word_map, name, 11)
}

/// What the retraining tests start from.
pub struct RetrainData {
    pub synth: gaze::data::synth::SynthSummary,
    pub prepared: PathBuf,
    pub base: String,
    /// A random model with the prepared files' words.
    pub m0: PathBuf,
}

/// Tiny captioned data under `root`, prepared as the tutorial does, a random model with its
/// words, and `root/train.toml` with fast training settings.
pub fn retrain_data(root: &Path, seed: u64) -> RetrainData {
    use gaze::data::prepare::{prepare, NoProgress, PrepareConfig};
    use gaze::data::synth::{generate, SynthOptions};
    let synth = generate(&SynthOptions {
        out_dir: root.join("synth"),
        train: 24,
        val: 6,
        test: 6,
        size: 64,
        seed,
        jpeg_quality: 90,
    })
    .unwrap();
    let prepared = root.join("prepared");
    let mut pc = PrepareConfig::new("synth", &synth.json_path, &synth.image_dir, &prepared);
    pc.captions_per_image = 3;
    pc.min_word_freq = 1;
    pc.threads = 2;
    prepare(&pc, &NoProgress).unwrap();
    let base = pc.base_name();
    let word_map = WordMap::load(&prepared.join(format!("WORDMAP_{base}.json"))).unwrap();
    let m0 = tiny_model_for(root, &word_map, "m0");
    fs::write(
        root.join("train.toml"),
        "batch_size = 16\nworkers = 1\nval_images = 6\nval_beam_size = 1\n\
         feature_cache = \"memory\"\ndecoder_lr = 0.004\n",
    )
    .unwrap();
    RetrainData {
        synth,
        prepared,
        base,
        m0,
    }
}

pub fn retrain_config(
    root: &Path,
    name: &str,
    margin: f64,
    prepared: &Path,
    base: &str,
) -> PathBuf {
    let path = root.join(name);
    fs::write(
        &path,
        format!(
            "[retrain]\nenabled = true\nschedule = \"3s\"\nwork_dir = \"{}\"\nprepared = \"{}\"\n\
             data_name = \"{base}\"\ntrain_config = \"{}\"\nepochs = 1\nmax_minutes = 0\n\
             metric = \"cider_d\"\nmargin = {margin:.1}\nholdout_images = 6\nbeam_size = 1\n\
             threads = 1\nrecaption = \"all\"\n",
            root.join("runs").display(),
            prepared.display(),
            root.join("train.toml").display()
        ),
    )
    .unwrap();
    path
}
