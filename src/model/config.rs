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
    /// EfficientNet-Lite0 (ImageNet weights ship with gaze).
    EfficientnetLite0,
}

impl EncoderConfig {
    /// A torchvision ResNet by name: resnet18, resnet34, resnet50, resnet101, resnet152.
    pub fn named(name: &str) -> Option<Self> {
        let key = name.to_ascii_lowercase().replace(['-', '_'], "");
        if key == "efficientnetlite0" {
            return Some(EncoderConfig::EfficientnetLite0);
        }
        let (block, layers) = match key.as_str() {
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
            EncoderConfig::EfficientnetLite0 => super::encoder::efficientnet::OUT_CHANNELS,
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
            EncoderConfig::EfficientnetLite0 => "efficientnet-lite0".to_string(),
        }
    }

    /// Whether fine-tuning trains the encoder tensor `name` (a full name such as
    /// `encoder.resnet.5.0.conv1.weight`): ResNet's layer2..layer4 (the tutorial's
    /// `children()[5:]`), EfficientNet's blocks from the third stage on and its head.
    /// BatchNorm running statistics are never trained.
    pub fn fine_tunes(&self, name: &str) -> bool {
        if name.ends_with(".running_mean") || name.ends_with(".running_var") {
            return false;
        }
        match self {
            EncoderConfig::Resnet { .. } => [
                "encoder.resnet.5.",
                "encoder.resnet.6.",
                "encoder.resnet.7.",
            ]
            .iter()
            .any(|p| name.starts_with(p)),
            EncoderConfig::EfficientnetLite0 => {
                use super::encoder::efficientnet::{FIRST_FINE_TUNED_BLOCK, PREFIX};
                let Some(rest) = name
                    .strip_prefix("encoder.")
                    .and_then(|r| r.strip_prefix(PREFIX))
                else {
                    return false;
                };
                if rest.starts_with("._conv_head.") || rest.starts_with("._bn1.") {
                    return true;
                }
                rest.strip_prefix("._blocks.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i >= FIRST_FINE_TUNED_BLOCK)
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
