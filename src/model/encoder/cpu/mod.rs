//! An inference-only engine for the ResNet and EfficientNet-Lite encoders on the CPU, in f32.
//!
//! Why it exists: candle's CPU convolution (im2col copies, NCHW transposes, BatchNorm and ReLU
//! as separate passes, an allocation per op) is several times slower than the matrix product
//! underneath it. This engine runs the same function as the reference forward in inference
//! mode (BatchNorm from its running statistics) another way:
//! - BatchNorm is folded into each convolution's weights and a bias, once, when the engine is
//!   built;
//! - activations stay NHWC (a row per pixel) with a one-pixel zero border, so every
//!   convolution is an implicit GEMM over the buffer as it lies ([`kernel`]), with bias,
//!   residual add and ReLU (or ReLU6) applied in registers; EfficientNet's depthwise
//!   convolutions run a direct kernel over the same layout ([`depthwise`]), and its
//!   TensorFlow "same" padding is the border read from an offset ([`efficientnet`]);
//! - a block's buffers are reused from call to call.
//!
//! What it guarantees: the reference path's outputs up to float rounding (the tests hold it to
//! 1e-4 relative on basic and bottleneck networks and on EfficientNet-Lite0, several sizes and
//! batches). An engine is a
//! snapshot of the weights it was built from; [`super::Encoder`] decides when to rebuild it.
//!
//! GPU path: the engine is CPU-only by design. [`super::Encoder::forward_t`] selects it only
//! for f32 inference with the model and the images on the CPU; on CUDA (and in training) the
//! reference forward runs, candle's convolution, BatchNorm and pooling ops on the GPU.

pub mod depthwise;
mod efficientnet;
pub mod kernel;
pub mod ops;

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

use self::kernel::{Activation, ConvGemm, KernelKind, PackedWeights};
use self::ops::Grid;
use super::efficientnet::EfficientNetLite;
use super::layers::{BatchNorm, Conv};
use super::resnet::ResNet;

#[derive(Debug, thiserror::Error)]
pub enum CpuEngineError {
    #[error("CPU encoder: expected images of shape (N, 3, H, W) with N, H, W > 0, got {0:?}")]
    InputShape(Vec<usize>),
    #[error("CPU encoder: expected f32 images on the CPU, got {dtype:?} on {device:?}")]
    InputKind { dtype: DType, device: Device },
    #[error("CPU encoder: cannot read the tensors of {layer}: {source}")]
    Weights {
        layer: String,
        source: candle_core::Error,
    },
    #[error("CPU encoder: layer {layer} has a shape the engine does not support: {what}")]
    Unsupported { layer: String, what: String },
    #[error("CPU encoder: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, CpuEngineError>;

/// A convolution with its BatchNorm folded in.
#[derive(Debug, Clone)]
struct FoldedConv {
    weights: PackedWeights,
    kernel: usize,
    stride: usize,
    padding: usize,
    c_in: usize,
}

impl FoldedConv {
    /// `conv` followed by inference-mode `bn`: weights scaled per output channel, shift as bias.
    fn fold(conv: &Conv, bn: &BatchNorm, layer: &str) -> Result<Self> {
        Self::fold_weight(&conv.weight, conv.stride, conv.padding, bn, layer)
    }

    /// A bias-free convolution with `(C_out, C_in, k, k)` `weight` followed by `bn`.
    fn fold_weight(
        weight: &Tensor,
        stride: usize,
        padding: usize,
        bn: &BatchNorm,
        layer: &str,
    ) -> Result<Self> {
        let wrap = |source| CpuEngineError::Weights {
            layer: layer.to_string(),
            source,
        };
        let (c_out, c_in, kh, kw) = weight.dims4().map_err(wrap)?;
        if kh != kw {
            return Err(CpuEngineError::Unsupported {
                layer: layer.to_string(),
                what: format!("kernel {kh}x{kw} is not square"),
            });
        }
        let k = kh;
        let w = read_f32(weight).map_err(wrap)?;
        let (scale, shift) = folded_batch_norm(bn, c_out, layer)?;
        // Row (ky, kx, ci) of the GEMM: kernel row ky is one tap of k * c_in floats.
        let mut m = vec![0f32; k * k * c_in * c_out];
        for o in 0..c_out {
            for ci in 0..c_in {
                for ky in 0..k {
                    for kx in 0..k {
                        m[((ky * k + kx) * c_in + ci) * c_out + o] =
                            w[((o * c_in + ci) * k + ky) * k + kx] * scale[o];
                    }
                }
            }
        }
        Ok(FoldedConv {
            weights: PackedWeights::pack(&m, k, k * c_in, c_out, &shift),
            kernel: k,
            stride,
            padding,
            c_in,
        })
    }

    fn c_out(&self) -> usize {
        self.weights.out_channels()
    }

    /// The output grid (border 1) for an input grid.
    fn output_grid(&self, input: Grid) -> Grid {
        let size = |x: usize| (x + 2 * self.padding - self.kernel) / self.stride + 1;
        Grid {
            n: input.n,
            h: size(input.h),
            w: size(input.w),
            c: self.c_out(),
            pad: 1,
        }
    }

    /// Runs into `output` (laid out as `out`, border re-zeroed). With `residual`, the output
    /// buffer's current interior is added before the activation.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        input: &[f32],
        in_grid: Grid,
        output: &mut [f32],
        out: Grid,
        residual: bool,
        activation: Activation,
        kernel: KernelKind,
    ) {
        debug_assert_eq!(in_grid.c, self.c_in);
        debug_assert_eq!(out, self.output_grid(in_grid));
        let taps = in_grid.kernel_rows(self.kernel);
        ConvGemm {
            input,
            input_map: in_grid.windows(out.h, out.w, self.stride, self.padding),
            tap_offsets: &taps,
            weights: &self.weights,
            residual: residual.then(|| out.interior()),
            activation,
            output_map: out.interior(),
        }
        .run(output, kernel);
        ops::zero_border(output, out);
    }
}

/// A tensor's values as f32 on the CPU.
fn read_f32(t: &Tensor) -> std::result::Result<Vec<f32>, candle_core::Error> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

/// Inference-mode `bn` as per-channel `(scale, shift)`, checked to have `channels` entries.
fn folded_batch_norm(bn: &BatchNorm, channels: usize, layer: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let wrap = |source| CpuEngineError::Weights {
        layer: layer.to_string(),
        source,
    };
    let (scale, shift) = bn.scale_shift().map_err(wrap)?;
    let scale = read_f32(&scale).map_err(wrap)?;
    let shift = read_f32(&shift).map_err(wrap)?;
    if scale.len() != channels || shift.len() != channels {
        return Err(CpuEngineError::Unsupported {
            layer: layer.to_string(),
            what: format!("{} BatchNorm channels for {channels} outputs", scale.len()),
        });
    }
    Ok((scale, shift))
}

#[derive(Debug, Clone)]
struct FoldedBlock {
    /// Two 3x3 convolutions (basic) or 1x1, 3x3, 1x1 (bottleneck).
    convs: Vec<FoldedConv>,
    downsample: Option<FoldedConv>,
}

impl FoldedBlock {
    /// The engine handles blocks of 2 or 3 convolutions whose shapes chain, and whose identity
    /// path matches the output unless a downsample convolution replaces it.
    fn check(&self, layer: &str) -> Result<()> {
        let fail = |what: String| {
            Err(CpuEngineError::Unsupported {
                layer: layer.to_string(),
                what,
            })
        };
        if !(2..=3).contains(&self.convs.len()) {
            return fail(format!("{} convolutions in a block", self.convs.len()));
        }
        // A probe grid large enough for any stride.
        let x = Grid {
            n: 1,
            h: 9,
            w: 9,
            c: self.convs[0].c_in,
            pad: 1,
        };
        let mut g = x;
        for conv in &self.convs {
            if conv.c_in != g.c || conv.padding > 1 {
                return fail(format!(
                    "convolution with {} inputs and padding {} after {} channels",
                    conv.c_in, conv.padding, g.c
                ));
            }
            g = conv.output_grid(g);
        }
        let identity = match &self.downsample {
            Some(ds) if ds.c_in == x.c && ds.padding == 0 => ds.output_grid(x),
            Some(_) => return fail("downsample does not match the block input".into()),
            None => x,
        };
        if identity != g {
            return fail(format!(
                "residual {identity:?} does not match the block output {g:?}"
            ));
        }
        Ok(())
    }
}

/// Reusable buffers for one forward call.
#[derive(Default)]
struct Workspace {
    input: Vec<f32>,
    x: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    d: Vec<f32>,
}

/// The folded layers of one of the networks the engine runs.
enum Network {
    ResNet {
        stem: FoldedConv,
        blocks: Vec<FoldedBlock>,
    },
    EfficientNet(efficientnet::FoldedEfficientNet),
}

/// The folded network (see the module docs).
pub struct CpuEncoder {
    network: Network,
    in_channels: usize,
    out_channels: usize,
    kernel: KernelKind,
    workspaces: Mutex<Vec<Workspace>>,
    parameters: usize,
    images_per_pass: usize,
}

impl std::fmt::Debug for CpuEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (network, blocks) = match &self.network {
            Network::ResNet { blocks, .. } => ("ResNet", blocks.len()),
            Network::EfficientNet(net) => ("EfficientNet", net.blocks()),
        };
        f.debug_struct("CpuEncoder")
            .field("network", &network)
            .field("blocks", &blocks)
            .field("out_channels", &self.out_channels)
            .field("kernel", &self.kernel)
            .field("parameters", &self.parameters)
            .finish()
    }
}

impl CpuEncoder {
    /// Folds the current tensors of `net`, with the fastest kernel this CPU runs.
    pub fn from_resnet(net: &ResNet) -> Result<Self> {
        Self::from_resnet_with(net, KernelKind::detect())
    }

    /// Folds the current tensors of `net` for `kernel`.
    pub fn from_resnet_with(net: &ResNet, kernel: KernelKind) -> Result<Self> {
        // Every (conv, bn) with its name and place: None for the stem, else (block, part)
        // where part is the convolution's index, or None for the downsample.
        type Place = Option<(usize, Option<usize>)>;
        let mut jobs: Vec<(&Conv, &BatchNorm, String, Place)> =
            vec![(&net.conv1, &net.bn1, "conv1".to_string(), None)];
        let mut block_names = Vec::new();
        for (stage, stage_blocks) in net.layers.iter().enumerate() {
            for (i, block) in stage_blocks.iter().enumerate() {
                let b = block_names.len();
                block_names.push(format!("layer{}.{i}", stage + 1));
                let name = |part: &str| format!("layer{}.{i}.{part}", stage + 1);
                for (j, (conv, bn)) in block.convs.iter().enumerate() {
                    jobs.push((
                        conv,
                        bn,
                        name(&format!("conv{}", j + 1)),
                        Some((b, Some(j))),
                    ));
                }
                if let Some((conv, bn)) = &block.downsample {
                    jobs.push((conv, bn, name("downsample"), Some((b, None))));
                }
            }
        }
        // Folding reads every weight once: spread it over the threads.
        let folded = jobs
            .par_iter()
            .map(|(conv, bn, name, _)| FoldedConv::fold(conv, bn, name))
            .collect::<Result<Vec<_>>>()?;
        let mut stem = None;
        let mut blocks: Vec<FoldedBlock> = (0..block_names.len())
            .map(|_| FoldedBlock {
                convs: Vec::new(),
                downsample: None,
            })
            .collect();
        for ((.., place), conv) in jobs.into_iter().zip(folded) {
            match place {
                None => stem = Some(conv),
                Some((b, Some(_))) => blocks[b].convs.push(conv),
                Some((b, None)) => blocks[b].downsample = Some(conv),
            }
        }
        for (block, name) in blocks.iter().zip(&block_names) {
            block.check(name)?;
        }
        let stem = stem.expect("the stem is the first job");
        let parameters = std::iter::once(&stem)
            .chain(
                blocks
                    .iter()
                    .flat_map(|b| b.convs.iter().chain(&b.downsample)),
            )
            .map(|c| c.weights.len())
            .sum();
        Ok(CpuEncoder {
            in_channels: stem.c_in,
            network: Network::ResNet { stem, blocks },
            out_channels: net.out_channels(),
            kernel,
            workspaces: Mutex::new(Vec::new()),
            parameters,
            images_per_pass: 1,
        })
    }

    /// Folds the current tensors of an EfficientNet-Lite trunk, with the fastest kernel this CPU
    /// runs.
    pub fn from_efficientnet(net: &EfficientNetLite) -> Result<Self> {
        Self::from_efficientnet_with(net, KernelKind::detect())
    }

    /// Folds the current tensors of an EfficientNet-Lite trunk for `kernel`.
    pub fn from_efficientnet_with(net: &EfficientNetLite, kernel: KernelKind) -> Result<Self> {
        let folded = efficientnet::FoldedEfficientNet::fold(net)?;
        Ok(CpuEncoder {
            in_channels: folded.in_channels(),
            out_channels: folded.out_channels(),
            parameters: folded.parameters(),
            network: Network::EfficientNet(folded),
            kernel,
            workspaces: Mutex::new(Vec::new()),
            images_per_pass: 1,
        })
    }

    pub fn kernel(&self) -> KernelKind {
        self.kernel
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// `(N, 3, H, W)` f32 CPU images to `(N, s, s, C)` features: the trunk, then PyTorch's
    /// `AdaptiveAvgPool2d(s)`, channels last.
    pub fn forward(&self, images: &Tensor, s: usize) -> Result<Tensor> {
        if images.dtype() != DType::F32 || !images.device().is_cpu() {
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
            let data = match &*storage {
                Storage::Cpu(CpuStorage::F32(v)) => v.as_slice(),
                _ => unreachable!("checked: f32 on the CPU"),
            };
            let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
            let data = &data[start..end];
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
            Network::ResNet { stem, blocks } => {
                self.run_resnet(stem, blocks, images, shape, s, ws, out)
            }
            Network::EfficientNet(net) => net.run(images, shape, s, ws, out, self.kernel),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_resnet(
        &self,
        stem: &FoldedConv,
        blocks: &[FoldedBlock],
        images: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        s: usize,
        ws: &mut Workspace,
        out: &mut [f32],
    ) {
        let k = self.kernel;
        // Stem: the input with a border as wide as the stem's padding.
        let in_grid = Grid {
            n,
            h,
            w,
            c,
            pad: stem.padding,
        };
        ops::ensure_len(&mut ws.input, in_grid.floats());
        ops::pack_nchw(images, in_grid, &mut ws.input);
        let stem_grid = stem.output_grid(in_grid);
        ops::ensure_len(&mut ws.t1, stem_grid.floats());
        stem.run(
            &ws.input,
            in_grid,
            &mut ws.t1,
            stem_grid,
            false,
            Activation::Relu,
            k,
        );
        // Max-pool 3x3/2, padding 1 (the stem output is >= 0 after its ReLU).
        let size = |x: usize| (x + 2 - 3) / 2 + 1;
        let mut x_grid = stem_grid.with(size(stem_grid.h), size(stem_grid.w), stem_grid.c);
        ops::ensure_len(&mut ws.x, x_grid.floats());
        ops::zero_border(&mut ws.x, x_grid);
        ops::max_pool(&ws.t1, stem_grid, 3, 2, 1, &mut ws.x, x_grid);

        for block in blocks {
            x_grid = self.block(block, x_grid, ws);
        }

        let rows = super::adaptive_pool_matrix(x_grid.h, s);
        let cols = super::adaptive_pool_matrix(x_grid.w, s);
        ops::adaptive_avg_pool(&ws.x, x_grid, s, &rows, &cols, out);
    }

    /// One residual block from `ws.x` (laid out as `x_grid`) back into `ws.x`; returns the new
    /// layout.
    fn block(&self, block: &FoldedBlock, x_grid: Grid, ws: &mut Workspace) -> Grid {
        let k = self.kernel;
        let Workspace { x, t1, t2, d, .. } = ws;
        // Every convolution but the last, each followed by ReLU: x -> t1 (-> t2).
        let (last, inner) = block.convs.split_last().expect("checked when built");
        let g1 = inner[0].output_grid(x_grid);
        ops::ensure_len(t1, g1.floats());
        inner[0].run(x, x_grid, t1, g1, false, Activation::Relu, k);
        let (src, src_grid): (&[f32], Grid) = if let Some(second) = inner.get(1) {
            let g2 = second.output_grid(g1);
            ops::ensure_len(t2, g2.floats());
            second.run(t1, g1, t2, g2, false, Activation::Relu, k);
            (t2, g2)
        } else {
            (t1, g1)
        };
        // The last convolution adds the identity (or the downsampled input), then ReLU.
        let out_grid = last.output_grid(src_grid);
        match &block.downsample {
            Some(ds) => {
                ops::ensure_len(d, out_grid.floats());
                ds.run(x, x_grid, d, out_grid, false, Activation::Identity, k);
                last.run(src, src_grid, d, out_grid, true, Activation::Relu, k);
                std::mem::swap(x, d);
            }
            None => last.run(src, src_grid, x, out_grid, true, Activation::Relu, k),
        }
        out_grid
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor, Var};

    use super::kernel::KernelKind;
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

    #[test]
    fn kernels_and_image_groups_agree() {
        let cfg = config(BlockKind::Bottleneck, [1, 2, 1, 1], 16, 2);
        let weights = Weights::new(tensors(&cfg, 5), &Device::Cpu);
        let enc = encoder(&cfg, &weights);
        let x = images(3, 45, 38, 9);
        let want = enc.forward_reference(&x).unwrap();
        for (kernel, group) in [
            (KernelKind::Portable, 1),
            (KernelKind::detect(), 1),
            (KernelKind::detect(), 2),
            (KernelKind::detect(), 3),
        ] {
            let resnet = match &cfg.encoder {
                EncoderConfig::Resnet {
                    block,
                    layers,
                    width,
                } => super::super::resnet::ResNet::load(
                    &weights.pp("encoder"),
                    *block,
                    *layers,
                    *width,
                ),
                EncoderConfig::EfficientnetLite0 => unreachable!("the test builds a ResNet"),
            };
            let mut engine = super::CpuEncoder::from_resnet_with(&resnet, kernel).unwrap();
            assert_eq!(engine.kernel(), kernel);
            engine.set_images_per_pass(group);
            let got = engine.forward(&x, 2).unwrap();
            assert_close(&format!("{kernel:?}, {group} images per pass"), &got, &want);
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
                let mut engine =
                    super::CpuEncoder::from_efficientnet_with(&net, KernelKind::Portable).unwrap();
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
