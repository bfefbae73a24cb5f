//! An inference-only engine for the ResNet and EfficientNet-Lite encoders on the CPU, in f32 or
//! with bfloat16 convolutions ([`Precision`]): the networks' wiring onto the kernels of
//! [`crate::kernels`].
//!
//! Why it exists: candle's CPU convolution (im2col copies, NCHW transposes, BatchNorm and ReLU
//! as separate passes, an allocation per op) is several times slower than the matrix product
//! underneath it. This engine runs the same function as the reference forward in inference
//! mode (BatchNorm from its running statistics) another way:
//! - BatchNorm is folded into each convolution's weights and a bias, once, when the engine is
//!   built ([`fold`]);
//! - activations stay NHWC (a row per pixel) with a one-pixel zero border, so every
//!   convolution is an implicit GEMM over the buffer as it lies ([`crate::kernels::gemm`]),
//!   with bias, residual add and ReLU (or ReLU6) applied in registers; EfficientNet's depthwise
//!   convolutions run a direct kernel over the same layout ([`crate::kernels::depthwise`]),
//!   and its TensorFlow "same" padding is the border read from an offset ([`efficientnet`]);
//! - in f32, ResNet's 3x3 stride-1 convolutions with 128 or more input channels also keep a
//!   Winograd F(4x4, 3x3) form and use it when the map has enough tiles
//!   ([`crate::kernels::winograd`]; `GAZE_CONV3X3=direct` turns it off and saves its memory);
//! - a block's buffers are reused from call to call ([`workspace`]).
//!
//! The kernels compute; this module owns which layer runs which kernel into which buffer
//! ([`resnet`], [`efficientnet`]), and reading the layers' tensors.
//!
//! What it guarantees: in f32, the reference path's outputs up to float rounding (the tests hold
//! it to 1e-4 relative on basic and bottleneck networks and on EfficientNet-Lite0, several sizes
//! and batches). In bf16 every convolution's inputs and weights are rounded to 8 significant
//! bits and summed in f32, so features differ from f32 by about 1% of their scale (the tests
//! bound it per network). An engine is a
//! snapshot of the weights it was built from; [`super::Encoder`] decides when to rebuild it.
//!
//! GPU path: the engine is CPU-only by design. [`super::Encoder::forward_t`] selects it only
//! for f32 inference with the model and the images on the CPU; on CUDA (and in training) the
//! reference forward runs, candle's convolution, BatchNorm and pooling ops on the GPU.

mod efficientnet;
mod error;
mod fold;
mod resnet;
mod workspace;

use std::sync::Mutex;

use candle_core::{Device, Storage, Tensor};
use rayon::prelude::*;

use self::efficientnet::FoldedEfficientNet;
pub use self::error::CpuEngineError;
use self::error::Result;
use self::fold::Formats;
use self::resnet::FoldedResNet;
use self::workspace::Workspace;
pub use crate::kernels::bf16::Precision;
pub use crate::kernels::conv::Conv3x3;
use crate::kernels::gemm::WeightFormat;
use crate::kernels::isa::KernelKind;
use crate::kernels::operands::{contiguous_f32, eligible};
use crate::model::encoder::efficientnet::EfficientNetLite;
use crate::model::encoder::resnet::ResNet;

/// The folded layers of one of the networks the engine runs.
enum Network {
    ResNet(FoldedResNet),
    EfficientNet(FoldedEfficientNet),
}

/// The folded network (see the module docs).
pub struct CpuEncoder {
    network: Network,
    in_channels: usize,
    out_channels: usize,
    kernel: KernelKind,
    precision: Precision,
    workspaces: Mutex<Vec<Workspace>>,
    parameters: usize,
    images_per_pass: usize,
}

impl std::fmt::Debug for CpuEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (network, blocks) = match &self.network {
            Network::ResNet(net) => ("ResNet", net.blocks()),
            Network::EfficientNet(net) => ("EfficientNet", net.blocks()),
        };
        f.debug_struct("CpuEncoder")
            .field("network", &network)
            .field("blocks", &blocks)
            .field("out_channels", &self.out_channels)
            .field("kernel", &self.kernel)
            .field("precision", &self.precision)
            .field("parameters", &self.parameters)
            .finish()
    }
}

impl CpuEncoder {
    /// Folds the current tensors of `net` in `precision`, with the fastest kernel this CPU runs.
    pub fn from_resnet(net: &ResNet, precision: Precision) -> Result<Self> {
        Self::from_resnet_with(net, KernelKind::detect(), precision)
    }

    /// Folds the current tensors of `net` for `kernel` in `precision`.
    pub fn from_resnet_with(
        net: &ResNet,
        kernel: KernelKind,
        precision: Precision,
    ) -> Result<Self> {
        Self::from_resnet_using(net, kernel, precision, Conv3x3::from_env())
    }

    /// As [`CpuEncoder::from_resnet_with`], with 3x3 convolutions as `conv3x3` says instead of
    /// as the environment does.
    pub fn from_resnet_using(
        net: &ResNet,
        kernel: KernelKind,
        precision: Precision,
        conv3x3: Conv3x3,
    ) -> Result<Self> {
        let folded = FoldedResNet::fold(net, formats(precision, kernel, conv3x3))?;
        Ok(CpuEncoder {
            in_channels: folded.in_channels(),
            out_channels: net.out_channels(),
            parameters: folded.parameters(),
            network: Network::ResNet(folded),
            kernel,
            precision,
            workspaces: Mutex::new(Vec::new()),
            images_per_pass: 1,
        })
    }

    /// Folds the current tensors of an EfficientNet-Lite trunk in `precision`, with the fastest
    /// kernel this CPU runs.
    pub fn from_efficientnet(net: &EfficientNetLite, precision: Precision) -> Result<Self> {
        Self::from_efficientnet_with(net, KernelKind::detect(), precision)
    }

    /// Folds the current tensors of an EfficientNet-Lite trunk for `kernel` in `precision`.
    pub fn from_efficientnet_with(
        net: &EfficientNetLite,
        kernel: KernelKind,
        precision: Precision,
    ) -> Result<Self> {
        let folded = FoldedEfficientNet::fold(net, formats(precision, kernel, Conv3x3::Direct))?;
        Ok(CpuEncoder {
            in_channels: folded.in_channels(),
            out_channels: folded.out_channels(),
            parameters: folded.parameters(),
            network: Network::EfficientNet(folded),
            kernel,
            precision,
            workspaces: Mutex::new(Vec::new()),
            images_per_pass: 1,
        })
    }

    pub fn kernel(&self) -> KernelKind {
        self.kernel
    }

    /// Floats the folded weights hold (Winograd planes included).
    pub fn parameters(&self) -> usize {
        self.parameters
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// `(N, 3, H, W)` f32 CPU images to `(N, s, s, C)` features: the trunk, then PyTorch's
    /// `AdaptiveAvgPool2d(s)`, channels last.
    pub fn forward(&self, images: &Tensor, s: usize) -> Result<Tensor> {
        if !eligible(&[images]) {
            return Err(CpuEngineError::InputKind {
                dtype: images.dtype(),
                device: images.device().clone(),
            });
        }
        let dims = images.dims().to_vec();
        let (n, c, h, w) = match dims[..] {
            [n, c, h, w] if n > 0 && h > 0 && w > 0 && c == self.in_channels && s > 0 => {
                (n, c, h, w)
            }
            _ => return Err(CpuEngineError::InputShape(dims)),
        };
        let images = images.contiguous()?;
        let per_image = s * s * self.out_channels;
        let mut out = vec![0f32; n * per_image];
        {
            let (storage, layout) = images.storage_and_layout();
            let Storage::Cpu(storage) = &*storage else {
                unreachable!("checked: on the CPU")
            };
            let data = contiguous_f32(storage, layout, "the CPU encoder")?;
            // Groups of images run through the whole network in parallel: a group's
            // activations stay in cache, and the threads rarely wait for each other. Inside a
            // group, each convolution is parallel too, which keeps idle threads busy at the end.
            let group = self.images_per_pass.min(n);
            out.par_chunks_mut(group * per_image)
                .zip(data.par_chunks(group * c * h * w))
                .for_each(|(out, images)| {
                    let mut ws = self.take_workspace();
                    let g = images.len() / (c * h * w);
                    self.run(images, (g, c, h, w), s, &mut ws, out);
                    self.return_workspace(ws);
                });
        }
        Ok(Tensor::from_vec(
            out,
            (n, s, s, self.out_channels),
            &Device::Cpu,
        )?)
    }

    /// Images that go through the network together (1 unless changed). One image at a time keeps
    /// its activations (a few MB at 256x256) in cache, which measured as fast as whole batches or
    /// faster, with less memory; the weights are re-read per image, at little cost.
    pub fn images_per_pass(&self) -> usize {
        self.images_per_pass
    }

    pub fn set_images_per_pass(&mut self, images: usize) {
        self.images_per_pass = images.max(1);
    }

    fn take_workspace(&self) -> Workspace {
        self.workspaces
            .lock()
            .map(|mut pool| pool.pop())
            .unwrap_or(None)
            .unwrap_or_default()
    }

    fn return_workspace(&self, ws: Workspace) {
        if let Ok(mut pool) = self.workspaces.lock() {
            pool.push(ws);
        }
    }

    fn run(
        &self,
        images: &[f32],
        shape: (usize, usize, usize, usize),
        s: usize,
        ws: &mut Workspace,
        out: &mut [f32],
    ) {
        match &self.network {
            Network::ResNet(net) => net.run(images, shape, s, ws, out, self.kernel),
            Network::EfficientNet(net) => net.run(images, shape, s, ws, out, self.kernel),
        }
    }
}

/// How convolution weights are packed for `precision` and `kernel` (see [`Formats`]).
fn formats(precision: Precision, kernel: KernelKind, conv3x3: Conv3x3) -> Formats {
    let f32 = match kernel {
        KernelKind::Avx512 => WeightFormat::F32Wide,
        _ => WeightFormat::F32,
    };
    match precision {
        Precision::F32 => Formats {
            stem: f32,
            body: f32,
            conv3x3,
        },
        Precision::Bf16 => Formats {
            stem: f32,
            body: WeightFormat::Bf16,
            conv3x3,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor, Var};

    use crate::kernels::isa::KernelKind;
    use crate::model::config::{BlockKind, EncoderConfig, ModelConfig};
    use crate::model::encoder::{Encoder, InferencePath};
    use crate::model::init::random_tensors;
    use crate::model::weights::Weights;
    use crate::rng::SplitMix64;

    fn config(block: BlockKind, layers: [usize; 4], width: usize, s: usize) -> ModelConfig {
        ModelConfig {
            encoder: EncoderConfig::Resnet {
                block,
                layers,
                width,
            },
            encoded_image_size: s,
            attention_dim: 1,
            embed_dim: 1,
            decoder_dim: 1,
            vocab_size: 1,
            dropout: 0.0,
        }
    }

    /// Random encoder tensors with non-trivial BatchNorm (so folding is exercised).
    fn tensors(cfg: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
        let mut t = random_tensors(cfg, seed, &Device::Cpu).unwrap();
        let mut rng = SplitMix64::new(seed);
        for (name, tensor) in t.iter_mut() {
            // He initialisation counts a depthwise filter's fan as k * k, not C * k * k.
            if name.contains("_depthwise_conv.") {
                let c = tensor.dim(0).unwrap() as f64;
                *tensor = (&*tensor * c.sqrt()).unwrap();
                continue;
            }
            let (lo, hi) = match name.rsplit('.').next().unwrap() {
                "running_mean" | "bias" => (-0.3, 0.3),
                "running_var" => (0.5, 2.0),
                "weight" if tensor.rank() == 1 => (0.5, 1.2),
                _ => continue,
            };
            let n = tensor.elem_count();
            let v: Vec<f32> = (0..n).map(|_| rng.uniform(lo, hi) as f32).collect();
            *tensor = Tensor::from_vec(v, n, &Device::Cpu).unwrap();
        }
        t
    }

    fn encoder(cfg: &ModelConfig, weights: &Weights) -> Encoder {
        let mut e = Encoder::load(&weights.pp("encoder"), cfg);
        weights.check(std::path::Path::new("test")).unwrap();
        e.set_inference_path(InferencePath::Auto);
        e
    }

    fn images(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let mut rng = SplitMix64::new(seed);
        let v: Vec<f32> = (0..n * 3 * h * w).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (n, 3, h, w), &Device::Cpu).unwrap()
    }

    /// Elementwise `|got - want| <= 1e-4 * |want| + 1e-5 * max|want|`; returns the largest
    /// difference relative to the largest value.
    fn assert_close(what: &str, got: &Tensor, want: &Tensor) -> f32 {
        assert_eq!(got.dims(), want.dims(), "{what}: shapes");
        let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{what}: all zeros");
        let mut worst = 0f32;
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let d = (a - b).abs();
            assert!(
                d <= 1e-4 * b.abs() + 1e-5 * scale,
                "{what}[{i}]: engine {a}, reference {b}"
            );
            worst = worst.max(d);
        }
        worst / scale
    }

    fn engine_matches_reference(cfg: &ModelConfig, sizes: &[(usize, usize, usize)]) {
        let weights = Weights::new(tensors(cfg, 3), &Device::Cpu);
        let enc = encoder(cfg, &weights);
        assert!(enc.prepare_inference().unwrap());
        for (i, &(n, h, w)) in sizes.iter().enumerate() {
            let x = images(n, h, w, i as u64);
            let want = enc.forward_reference(&x).unwrap();
            let got = enc.forward(&x).unwrap();
            let s = cfg.encoded_image_size;
            assert_eq!(got.dims(), &[n, s, s, enc.out_channels()]);
            let r = assert_close(&format!("{:?} {n}x{h}x{w}", cfg.encoder), &got, &want);
            eprintln!(
                "{:?} {n}x3x{h}x{w}: max difference / max value {r:e}",
                cfg.encoder
            );
        }
    }

    #[test]
    fn basic_network_matches_reference() {
        let cfg = config(BlockKind::Basic, [2, 1, 2, 1], 8, 3);
        engine_matches_reference(&cfg, &[(1, 64, 64), (3, 37, 50), (2, 9, 7)]);
    }

    #[test]
    fn resnet50_shape_matches_reference() {
        // ResNet-50's blocks and widths, at small inputs.
        let cfg = config(BlockKind::Bottleneck, [3, 4, 6, 3], 64, 5);
        engine_matches_reference(&cfg, &[(1, 96, 96), (2, 100, 120), (3, 33, 47)]);
    }

    /// The bf16 engine's features against the f32 reference: the relative L2 error of the whole
    /// output, and the largest elementwise error relative to the largest value.
    fn bf16_error(cfg: &ModelConfig, n: usize, h: usize, w: usize) -> (f32, f32) {
        let weights = Weights::new(tensors(cfg, 3), &Device::Cpu);
        let mut enc = encoder(cfg, &weights);
        enc.set_precision(super::Precision::Bf16);
        assert!(enc.prepare_inference().unwrap());
        let x = images(n, h, w, 9);
        let want: Vec<f32> = enc
            .forward_reference(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got: Vec<f32> = enc
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let norm =
            |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let l2 =
            norm(&mut got.iter().zip(&want).map(|(a, b)| a - b)) / norm(&mut want.iter().copied());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{:?} {n}x3x{h}x{w} bf16: relative L2 {l2:.2e}, max / max {:.2e}",
            cfg.encoder,
            worst / scale
        );
        (l2 as f32, worst / scale)
    }

    /// bf16 rounds each convolution's operands to 8 significant bits (2^-9 relative): through
    /// ResNet-50's 53 convolutions the features stay within 1.5% (L2) and 2% (largest
    /// element) of f32's; measured 0.5% and 0.65%.
    #[test]
    fn bf16_resnet_stays_within_bound_of_f32() {
        let cfg = config(BlockKind::Bottleneck, [3, 4, 6, 3], 64, 5);
        for (n, h, w) in [(1, 96, 96), (3, 37, 50)] {
            let (l2, worst) = bf16_error(&cfg, n, h, w);
            assert!(l2 < 0.015 && worst < 0.02, "relative L2 {l2}, max {worst}");
        }
        let cfg = config(BlockKind::Basic, [2, 1, 2, 1], 8, 3);
        let (l2, worst) = bf16_error(&cfg, 2, 40, 33);
        assert!(l2 < 0.015 && worst < 0.02, "relative L2 {l2}, max {worst}");
    }

    #[test]
    fn bf16_efficientnet_stays_within_bound_of_f32() {
        let (l2, worst) = bf16_error(&efficientnet_config(4), 2, 64, 64);
        assert!(l2 < 0.015 && worst < 0.02, "relative L2 {l2}, max {worst}");
    }

    #[test]
    fn kernels_and_image_groups_agree() {
        let cfg = config(BlockKind::Bottleneck, [1, 2, 1, 1], 16, 2);
        let weights = Weights::new(tensors(&cfg, 5), &Device::Cpu);
        let enc = encoder(&cfg, &weights);
        let x = images(3, 45, 38, 9);
        let want = enc.forward_reference(&x).unwrap();
        let net = resnet(&cfg, &weights);
        for (kernel, group) in [
            (KernelKind::Portable, 1),
            (KernelKind::detect(), 1),
            (KernelKind::detect(), 2),
            (KernelKind::detect(), 3),
        ] {
            let mut engine =
                super::CpuEncoder::from_resnet_with(&net, kernel, super::Precision::F32).unwrap();
            assert_eq!(engine.kernel(), kernel);
            engine.set_images_per_pass(group);
            let got = engine.forward(&x, 2).unwrap();
            assert_close(&format!("{kernel:?}, {group} images per pass"), &got, &want);
        }
    }

    fn resnet(cfg: &ModelConfig, weights: &Weights) -> super::super::resnet::ResNet {
        match &cfg.encoder {
            EncoderConfig::Resnet {
                block,
                layers,
                width,
            } => {
                super::super::resnet::ResNet::load(&weights.pp("encoder"), *block, *layers, *width)
            }
            EncoderConfig::EfficientnetLite0 => unreachable!("the test builds a ResNet"),
        }
    }

    /// 3x3 convolutions by Winograd (from the first tile on, so every eligible layer takes it:
    /// bottleneck 3x3s and basic blocks' residual ones) and by the implicit GEMM, both against
    /// the reference; the Winograd engine must hold the extra planes.
    #[test]
    fn winograd_and_direct_3x3_agree_with_reference() {
        for (cfg, (n, h, w)) in [
            (
                config(BlockKind::Bottleneck, [1, 1, 2, 1], 32, 3),
                (2, 70, 90),
            ),
            (config(BlockKind::Basic, [1, 1, 1, 1], 128, 2), (3, 45, 38)),
        ] {
            let weights = Weights::new(tensors(&cfg, 8), &Device::Cpu);
            let enc = encoder(&cfg, &weights);
            let x = images(n, h, w, 4);
            let want = enc.forward_reference(&x).unwrap();
            let net = resnet(&cfg, &weights);
            let mut parameters = Vec::new();
            for conv3x3 in [
                super::Conv3x3::Direct,
                super::Conv3x3::Winograd { min_tiles: 0 },
            ] {
                let engine = super::CpuEncoder::from_resnet_using(
                    &net,
                    KernelKind::detect(),
                    super::Precision::F32,
                    conv3x3,
                )
                .unwrap();
                let got = engine.forward(&x, cfg.encoded_image_size).unwrap();
                let r = assert_close(&format!("{:?} {conv3x3:?}", cfg.encoder), &got, &want);
                eprintln!(
                    "{:?} {conv3x3:?}: max difference / max value {r:e}",
                    cfg.encoder
                );
                parameters.push(engine.parameters());
            }
            assert!(
                parameters[1] > parameters[0],
                "no Winograd planes held: {parameters:?}"
            );
        }
    }

    #[test]
    fn reference_path_is_candle_ops() {
        let cfg = config(BlockKind::Basic, [1, 1, 1, 1], 4, 2);
        let weights = Weights::new(tensors(&cfg, 1), &Device::Cpu);
        let mut enc = encoder(&cfg, &weights);
        let x = images(1, 32, 32, 1);
        enc.set_inference_path(InferencePath::Reference);
        assert!(!enc.prepare_inference().unwrap());
        let a: Vec<f32> = enc
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = enc
            .forward_reference(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
    }

    /// The engine's output follows an optimiser step on `changed` (made trainable with the
    /// tensors `trainable` selects) and a training-mode forward (BatchNorm statistics).
    fn engine_follows_updates(cfg: &ModelConfig, trainable: fn(&str) -> bool, changed: &str) {
        let mut weights = Weights::new(tensors(cfg, 2), &Device::Cpu);
        let vars: Vec<(String, Var)> = weights.make_trainable(trainable).unwrap();
        let enc = encoder(cfg, &weights);
        let x = images(2, 40, 40, 4);
        let before = enc.forward(&x).unwrap();
        assert_close("before", &before, &enc.forward_reference(&x).unwrap());

        // An optimiser step changes a weight in place.
        let (name, var) = vars
            .iter()
            .find(|(n, _)| n.ends_with(changed))
            .expect("the changed tensor is trainable");
        let doubled = (var.as_tensor() * 2.0).unwrap();
        var.set(&doubled).unwrap();
        let after = enc.forward(&x).unwrap();
        let want = enc.forward_reference(&x).unwrap();
        assert_close(&format!("after changing {name}"), &after, &want);
        // A stale engine would have returned `before`: make sure that would fail the check.
        assert!(
            relative_change(&before, &after) > 1e-2,
            "the change must reach the output"
        );

        // A training-mode forward updates BatchNorm running statistics (plain tensors, not
        // trainable, but held in Vars by BatchNorm).
        enc.forward_t(&x, true).unwrap();
        let after_train = enc.forward(&x).unwrap();
        assert_close(
            "after a training step",
            &after_train,
            &enc.forward_reference(&x).unwrap(),
        );
        assert!(
            relative_change(&after, &after_train) > 1e-3,
            "the statistics update must reach the output"
        );
    }

    #[test]
    fn engine_follows_weight_and_statistics_updates() {
        // Fine-tuning makes layer2..layer4 trainable.
        engine_follows_updates(
            &config(BlockKind::Bottleneck, [1, 1, 1, 1], 8, 2),
            |n| n.starts_with("encoder.resnet.5.") || n.starts_with("encoder.resnet.7."),
            "resnet.7.0.conv2.weight",
        );
    }

    #[test]
    fn efficientnet_engine_follows_weight_and_statistics_updates() {
        engine_follows_updates(
            &efficientnet_config(2),
            |n| n.starts_with("encoder.efficientnet._blocks.5.") || n.contains("_conv_head"),
            "_blocks.5._project_conv.weight",
        );
    }

    fn efficientnet_config(s: usize) -> ModelConfig {
        ModelConfig {
            encoder: EncoderConfig::EfficientnetLite0,
            ..config(BlockKind::Basic, [1, 1, 1, 1], 1, s)
        }
    }

    #[test]
    fn efficientnet_matches_reference_on_random_weights() {
        // Batches of 1 and 3, odd sizes (asymmetric "same" padding), a map smaller than 1x1
        // before the head would be (9x7 -> 1x1).
        engine_matches_reference(
            &efficientnet_config(3),
            &[(1, 64, 64), (3, 45, 38), (1, 255, 257), (2, 9, 7)],
        );
    }

    #[test]
    fn efficientnet_matches_reference_on_pretrained_weights() {
        let cfg = efficientnet_config(14);
        let tensors =
            crate::model::encoder::efficientnet::pretrained_tensors(&Device::Cpu, false).unwrap();
        let weights = Weights::new(tensors, &Device::Cpu);
        let enc = encoder(&cfg, &weights);
        let net = crate::model::encoder::efficientnet::EfficientNetLite::load(
            &weights.pp("encoder").pp("efficientnet"),
            false,
        );
        for (i, &(n, h, w)) in [(1, 256, 256), (3, 45, 38), (1, 255, 257)]
            .iter()
            .enumerate()
        {
            let x = images(n, h, w, 10 + i as u64);
            let want = enc.forward_reference(&x).unwrap();
            let got = enc.forward(&x).unwrap();
            let r = assert_close(&format!("pretrained {n}x{h}x{w}"), &got, &want);
            eprintln!(
                "pretrained EfficientNet-Lite0 {n}x3x{h}x{w}: max difference / max value {r:e}"
            );
            if i == 1 {
                // The portable kernels and image groups give the same.
                let mut engine = super::CpuEncoder::from_efficientnet_with(
                    &net,
                    KernelKind::Portable,
                    super::Precision::F32,
                )
                .unwrap();
                engine.set_images_per_pass(2);
                let got = engine.forward(&x, 14).unwrap();
                assert_close("pretrained, portable kernels", &got, &want);
            }
        }
    }

    /// Largest difference relative to the largest value of `a`.
    fn relative_change(a: &Tensor, b: &Tensor) -> f32 {
        let max = |t: Tensor| -> f32 {
            t.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        max((a - b).unwrap()) / max(a.clone())
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = config(BlockKind::Basic, [1, 1, 1, 1], 4, 2);
        let weights = Weights::new(tensors(&cfg, 1), &Device::Cpu);
        let enc = encoder(&cfg, &weights);
        let four_channels = Tensor::zeros((1, 4, 16, 16), candle_core::DType::F32, &Device::Cpu);
        assert!(enc.forward(&four_channels.unwrap()).is_err());
        let three_dims = Tensor::zeros((3, 16, 16), candle_core::DType::F32, &Device::Cpu);
        assert!(enc.forward(&three_dims.unwrap()).is_err());
        let empty = Tensor::zeros((0, 3, 16, 16), candle_core::DType::F32, &Device::Cpu);
        let e = enc.forward(&empty.unwrap());
        assert!(e.is_err());
    }
}
