//! Small models and images that tests make themselves.
#![allow(dead_code)]

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
    let path = dir.join(format!("tiny-{seed}.safetensors"));
    gaze::model::file::write_model_file(
        &path,
        &named,
        &cfg,
        &word_map,
        &serde_json::json!({"name": format!("tiny-{seed}")}),
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
