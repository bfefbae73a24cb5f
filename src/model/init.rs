//! Fresh weights for a configuration, initialised as PyTorch and the tutorial do.
//!
//! - Convolutions: Kaiming normal, fan-out, ReLU gain (torchvision's ResNet init).
//! - BatchNorm: weight 1, bias 0, running mean 0, running variance 1.
//! - Linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias (PyTorch default).
//! - LSTMCell: U(-1/sqrt(hidden), 1/sqrt(hidden)) (PyTorch default).
//! - The tutorial's `init_weights`: embedding and `fc.weight` U(-0.1, 0.1), `fc.bias` 0.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::config::{BlockKind, EncoderConfig, ModelConfig};
use super::encoder::resnet::FIRST_LAYER_INDEX;
use super::error::Result;
use super::weights::Weights;
use super::{Decoder, Encoder};
use crate::rng::SplitMix64;

/// Every (name, shape) the model of `cfg` needs, sorted by name.
pub fn parameter_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let probe = Weights::new(HashMap::new(), &Device::Cpu);
    let _ = Encoder::load(&probe.pp("encoder"), cfg);
    let _ = Decoder::load(&probe.pp("decoder"), cfg);
    probe.requested()
}

/// Random weights for `cfg`, deterministic for `seed`.
pub fn random_tensors(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let shapes = parameter_shapes(cfg);
    let dims: HashMap<&str, &[usize]> = shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut out = HashMap::with_capacity(shapes.len());
    for (name, shape) in &shapes {
        // One stream per tensor, so adding a tensor does not change the others.
        let mut rng = SplitMix64::new(seed ^ fnv1a(name));
        let n: usize = shape.iter().product();
        let values = init_values(name, shape, &dims, n, &mut rng);
        out.insert(
            name.clone(),
            Tensor::from_vec(values, shape.as_slice(), device)?,
        );
    }
    Ok(out)
}

fn init_values(
    name: &str,
    shape: &[usize],
    dims: &HashMap<&str, &[usize]>,
    n: usize,
    rng: &mut SplitMix64,
) -> Vec<f32> {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let uniform = |rng: &mut SplitMix64, bound: f64| {
        (0..n)
            .map(|_| rng.uniform(-bound, bound) as f32)
            .collect::<Vec<_>>()
    };
    if name.starts_with("encoder.") {
        return match (leaf, shape.len()) {
            ("weight", 4) => {
                let std = (2.0 / (shape[0] * shape[2] * shape[3]) as f64).sqrt();
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
            ("weight", _) | ("running_var", _) => vec![1.0; n],
            _ => vec![0.0; n],
        };
    }
    if name == "decoder.embedding.weight" || name == "decoder.fc.weight" {
        return uniform(rng, 0.1);
    }
    if name == "decoder.fc.bias" {
        return vec![0.0; n];
    }
    if name.starts_with("decoder.decode_step.") {
        let hidden = dims["decoder.decode_step.weight_hh"][1];
        return uniform(rng, 1.0 / (hidden as f64).sqrt());
    }
    // A linear layer: fan_in from its weight.
    let weight_name = format!("{}.weight", &name[..name.len() - leaf.len() - 1]);
    let fan_in = dims.get(weight_name.as_str()).map(|s| s[1]).unwrap_or(1);
    uniform(rng, 1.0 / (fan_in as f64).sqrt())
}

/// Zeroes the scale of the last BatchNorm in every residual branch of a ResNet encoder, as
/// torchvision's `zero_init_residual=True` does: each block then starts as the identity on its
/// shortcut. Without it a randomly initialised deep ResNet's outputs grow block by block
/// (ResNet-101's reach about 1e5, beyond the float16 feature cache's range). Other encoders are
/// left as they are.
pub fn zero_init_residual(cfg: &ModelConfig, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    let EncoderConfig::Resnet { block, layers, .. } = cfg.encoder else {
        return Ok(());
    };
    let last = match block {
        BlockKind::Basic => 2,
        BlockKind::Bottleneck => 3,
    };
    for (stage, &blocks) in layers.iter().enumerate() {
        for i in 0..blocks {
            let name = format!(
                "encoder.resnet.{}.{i}.bn{last}.weight",
                FIRST_LAYER_INDEX + stage
            );
            if let Some(t) = tensors.get(&name) {
                let zeros = t.zeros_like()?;
                tensors.insert(name, zeros);
            }
        }
    }
    Ok(())
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A model with fresh random weights (for tests, benchmarks and training from scratch).
pub fn random_model(
    cfg: &ModelConfig,
    word_map: crate::data::WordMap,
    seed: u64,
    device: &Device,
) -> Result<super::CaptionModel> {
    let tensors = random_tensors(cfg, seed, device)?;
    super::CaptionModel::from_parts(
        tensors,
        cfg.clone(),
        word_map,
        serde_json::json!({"init": "random", "seed": seed}),
        device,
        Path::new("<random weights>"),
    )
}

/// Tiny random decoders for unit tests of the search, the sampler and the losses.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::model::config::{BlockKind, EncoderConfig};
    use crate::model::{weights::Weights, Decoder};

    /// A decoder of `vocab` words over a width-`width` ResNet's features on a 2x2 grid; the
    /// output weights are multiplied by `fc_scale` (large values give peaked distributions).
    /// Returns the trainable variables `trainable` selects, the decoder and its config.
    pub(crate) fn tiny_decoder(
        width: usize,
        dims: (usize, usize, usize),
        vocab: usize,
        seed: u64,
        fc_scale: f64,
        trainable: impl Fn(&str) -> bool,
    ) -> (Vec<(String, candle_core::Var)>, Decoder, ModelConfig) {
        let (attention_dim, embed_dim, decoder_dim) = dims;
        let cfg = ModelConfig {
            encoder: EncoderConfig::Resnet {
                block: BlockKind::Basic,
                layers: [1, 1, 1, 1],
                width,
            },
            encoded_image_size: 2,
            attention_dim,
            embed_dim,
            decoder_dim,
            vocab_size: vocab,
            dropout: 0.0,
        };
        let mut tensors = random_tensors(&cfg, seed, &Device::Cpu).unwrap();
        let fc = (&tensors["decoder.fc.weight"] * fc_scale).unwrap();
        tensors.insert("decoder.fc.weight".into(), fc);
        let mut weights = Weights::new(tensors, &Device::Cpu);
        let vars = weights.make_trainable(trainable).unwrap();
        let decoder = Decoder::load(&weights.pp("decoder"), &cfg);
        (vars, decoder, cfg)
    }

    /// `rows` random encoder outputs `(rows, 4, E)` for `cfg`, uniform in [0, 1).
    pub(crate) fn features(rows: usize, cfg: &ModelConfig, seed: u64) -> Tensor {
        let e = cfg.encoder_dim();
        let mut rng = crate::rng::SplitMix64::new(seed);
        let v: Vec<f32> = (0..rows * 4 * e).map(|_| rng.next_f64() as f32).collect();
        Tensor::from_vec(v, (rows, 4, e), &Device::Cpu).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelConfig {
        ModelConfig {
            encoder: EncoderConfig::Resnet {
                block: BlockKind::Basic,
                layers: [1, 1, 1, 1],
                width: 4,
            },
            encoded_image_size: 2,
            attention_dim: 6,
            embed_dim: 5,
            decoder_dim: 7,
            vocab_size: 9,
            dropout: 0.5,
        }
    }

    #[test]
    fn shapes_cover_the_model_and_values_follow_the_rules() {
        let cfg = small();
        let t = random_tensors(&cfg, 1, &Device::Cpu).unwrap();
        assert_eq!(t["decoder.decode_step.weight_ih"].dims(), &[28, 5 + 32]);
        let fc_bias: Vec<f32> = t["decoder.fc.bias"].to_vec1().unwrap();
        assert!(fc_bias.iter().all(|&v| v == 0.0));
        let emb: Vec<Vec<f32>> = t["decoder.embedding.weight"].to_vec2().unwrap();
        assert!(emb.iter().flatten().all(|v| v.abs() <= 0.1));
        let var: Vec<f32> = t["encoder.resnet.1.running_var"].to_vec1().unwrap();
        assert!(var.iter().all(|&v| v == 1.0));
        let again = random_tensors(&cfg, 1, &Device::Cpu).unwrap();
        let a: Vec<f32> = t["decoder.init_h.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = again["decoder.init_h.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.abs() <= 1.0 / 32f32.sqrt()));
    }

    #[test]
    fn zero_init_residual_zeroes_only_the_last_norm_of_each_branch() {
        for (block, last) in [(BlockKind::Basic, 2), (BlockKind::Bottleneck, 3)] {
            let mut cfg = small();
            cfg.encoder = EncoderConfig::Resnet {
                block,
                layers: [2, 1, 1, 1],
                width: 4,
            };
            let before = random_tensors(&cfg, 3, &Device::Cpu).unwrap();
            let mut after = before.clone();
            zero_init_residual(&cfg, &mut after).unwrap();
            let mut zeroed = Vec::new();
            for (name, t) in &after {
                let sum: f32 = t.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                let same = (t - &before[name])
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    == 0.0;
                if sum == 0.0 && !same {
                    zeroed.push(name.clone());
                } else {
                    assert!(same, "{name} changed");
                }
            }
            zeroed.sort();
            let expected: Vec<String> = [(4, 0), (4, 1), (5, 0), (6, 0), (7, 0)]
                .iter()
                .map(|(s, i)| format!("encoder.resnet.{s}.{i}.bn{last}.weight"))
                .collect();
            assert_eq!(zeroed, expected);
        }
    }
}
