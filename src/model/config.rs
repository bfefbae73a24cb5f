//! Architecture configuration, stored in model files as JSON.

use serde::{Deserialize, Serialize};

/// The tutorial's defaults: ResNet-101, 14x14 grid, 512-wide embedding, attention and LSTM.
pub const DEFAULT_ENCODED_IMAGE_SIZE: usize = 14;
pub const DEFAULT_DIM: usize = 512;
pub const DEFAULT_DROPOUT: f32 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34).
    Basic,
    /// 1x1, 3x3, 1x1 with expansion 4 (ResNet-50/101/152).
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Which backbone encodes the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EncoderConfig {
    /// A torchvision-style ResNet. `width` is the stem's channel count (64 in torchvision).
    Resnet {
        block: BlockKind,
        layers: [usize; 4],
        width: usize,
    },
}

impl EncoderConfig {
    /// A torchvision ResNet by name: resnet18, resnet34, resnet50, resnet101, resnet152.
    pub fn named(name: &str) -> Option<Self> {
        let (block, layers) = match name.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "resnet18" => (BlockKind::Basic, [2, 2, 2, 2]),
            "resnet34" => (BlockKind::Basic, [3, 4, 6, 3]),
            "resnet50" => (BlockKind::Bottleneck, [3, 4, 6, 3]),
            "resnet101" => (BlockKind::Bottleneck, [3, 4, 23, 3]),
            "resnet152" => (BlockKind::Bottleneck, [3, 8, 36, 3]),
            _ => return None,
        };
        Some(EncoderConfig::Resnet {
            block,
            layers,
            width: 64,
        })
    }

    /// Channels of the encoder's output (the decoder's `encoder_dim`).
    pub fn out_channels(&self) -> usize {
        match self {
            EncoderConfig::Resnet { block, width, .. } => width * 8 * block.expansion(),
        }
    }

    /// A short human name ("resnet101", or a description of a custom shape).
    pub fn display_name(&self) -> String {
        match self {
            EncoderConfig::Resnet {
                block,
                layers,
                width,
            } => {
                for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] {
                    if EncoderConfig::named(name).as_ref() == Some(self) {
                        return name.to_string();
                    }
                }
                format!("resnet({block:?}, layers {layers:?}, width {width})").to_lowercase()
            }
        }
    }
}

/// Everything needed to build the encoder and decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub encoder: EncoderConfig,
    /// Side of the attention grid after adaptive average pooling (14 in the tutorial).
    pub encoded_image_size: usize,
    pub attention_dim: usize,
    pub embed_dim: usize,
    pub decoder_dim: usize,
    pub vocab_size: usize,
    pub dropout: f32,
}

impl ModelConfig {
    /// The tutorial's model for a vocabulary of `vocab_size` words.
    pub fn tutorial(vocab_size: usize) -> Self {
        ModelConfig {
            encoder: EncoderConfig::named("resnet101").expect("known"),
            encoded_image_size: DEFAULT_ENCODED_IMAGE_SIZE,
            attention_dim: DEFAULT_DIM,
            embed_dim: DEFAULT_DIM,
            decoder_dim: DEFAULT_DIM,
            vocab_size,
            dropout: DEFAULT_DROPOUT,
        }
    }

    pub fn encoder_dim(&self) -> usize {
        self.encoder.out_channels()
    }

    pub fn num_pixels(&self) -> usize {
        self.encoded_image_size * self.encoded_image_size
    }
}
