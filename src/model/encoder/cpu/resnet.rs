//! ResNet on the CPU engine: the stem, max pooling and residual blocks of
//! [`crate::model::encoder::resnet`] with BatchNorm folded, in NHWC.
//!
//! Every convolution is a [`FoldedConv`] (an implicit GEMM) with ReLU in its epilogue; a
//! block's last convolution adds the identity, or the downsampled input, in place before its
//! ReLU, so a residual add costs no pass of its own. The stem's 3x3/2 max pooling reads the
//! zero border as PyTorch's `-inf` padding (exact after a ReLU).

use rayon::prelude::*;

use super::error::{CpuEngineError, Result};
use super::fold::{fold_conv, Formats};
use super::workspace::Workspace;
use crate::kernels::activation::Activation;
use crate::kernels::conv::FoldedConv;
use crate::kernels::isa::KernelKind;
use crate::kernels::layout::{ensure_len, pack_nchw, zero_border, Grid};
use crate::kernels::pool::{adaptive_avg_pool, adaptive_pool_matrix, max_pool};
use crate::model::encoder::layers::{BatchNorm, Conv};
use crate::model::encoder::resnet::ResNet;

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
            c: self.convs[0].c_in(),
            pad: 1,
        };
        let mut g = x;
        for conv in &self.convs {
            if conv.c_in() != g.c || conv.padding() > 1 {
                return fail(format!(
                    "convolution with {} inputs and padding {} after {} channels",
                    conv.c_in(),
                    conv.padding(),
                    g.c
                ));
            }
            g = conv.output_grid(g);
        }
        let identity = match &self.downsample {
            Some(ds) if ds.c_in() == x.c && ds.padding() == 0 => ds.output_grid(x),
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

/// The folded network.
#[derive(Debug, Clone)]
pub struct FoldedResNet {
    stem: FoldedConv,
    blocks: Vec<FoldedBlock>,
}

impl FoldedResNet {
    /// Folds the current tensors of `net`, convolution weights packed in `formats`.
    pub fn fold(net: &ResNet, formats: Formats) -> Result<Self> {
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
            .map(|(conv, bn, name, place)| {
                let format = if place.is_none() {
                    formats.stem
                } else {
                    formats.body
                };
                fold_conv(
                    format,
                    formats.conv3x3,
                    &conv.weight,
                    conv.stride,
                    conv.padding,
                    bn,
                    name,
                )
            })
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
        Ok(FoldedResNet { stem, blocks })
    }

    pub fn in_channels(&self) -> usize {
        self.stem.c_in()
    }

    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Floats held by the folded weights.
    pub fn parameters(&self) -> usize {
        std::iter::once(&self.stem)
            .chain(
                self.blocks
                    .iter()
                    .flat_map(|b| b.convs.iter().chain(&b.downsample)),
            )
            .map(|c| c.len())
            .sum()
    }

    /// `images` (NCHW, `shape`) through the trunk, then adaptive average pooling to `s x s` into
    /// `out` (`(n, s, s, C)`).
    pub fn run(
        &self,
        images: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        s: usize,
        ws: &mut Workspace,
        out: &mut [f32],
        kernel: KernelKind,
    ) {
        let stem = &self.stem;
        // Stem: the input with a border as wide as the stem's padding.
        let in_grid = Grid {
            n,
            h,
            w,
            c,
            pad: stem.padding(),
        };
        ensure_len(&mut ws.input, in_grid.floats());
        pack_nchw(images, in_grid, &mut ws.input);
        let stem_grid = stem.output_grid(in_grid);
        ensure_len(&mut ws.t1, stem_grid.floats());
        stem.run(
            &ws.input,
            in_grid,
            &mut ws.t1,
            stem_grid,
            false,
            Activation::Relu,
            kernel,
            &mut ws.bf16,
        );
        // Max-pool 3x3/2, padding 1 (the stem output is >= 0 after its ReLU).
        let size = |x: usize| (x + 2 - 3) / 2 + 1;
        let mut x_grid = stem_grid.with(size(stem_grid.h), size(stem_grid.w), stem_grid.c);
        ensure_len(&mut ws.x, x_grid.floats());
        zero_border(&mut ws.x, x_grid);
        max_pool(&ws.t1, stem_grid, 3, 2, 1, &mut ws.x, x_grid);

        for block in &self.blocks {
            x_grid = Self::block(block, x_grid, ws, kernel);
        }

        let rows = adaptive_pool_matrix(x_grid.h, s);
        let cols = adaptive_pool_matrix(x_grid.w, s);
        adaptive_avg_pool(&ws.x, x_grid, s, &rows, &cols, out);
    }

    /// One residual block from `ws.x` (laid out as `x_grid`) back into `ws.x`; returns the new
    /// layout.
    fn block(block: &FoldedBlock, x_grid: Grid, ws: &mut Workspace, k: KernelKind) -> Grid {
        let Workspace {
            x, t1, t2, d, bf16, ..
        } = ws;
        // Every convolution but the last, each followed by ReLU: x -> t1 (-> t2).
        let (last, inner) = block.convs.split_last().expect("checked when built");
        let g1 = inner[0].output_grid(x_grid);
        ensure_len(t1, g1.floats());
        inner[0].run(x, x_grid, t1, g1, false, Activation::Relu, k, bf16);
        let (src, src_grid): (&[f32], Grid) = if let Some(second) = inner.get(1) {
            let g2 = second.output_grid(g1);
            ensure_len(t2, g2.floats());
            second.run(t1, g1, t2, g2, false, Activation::Relu, k, bf16);
            (t2, g2)
        } else {
            (t1, g1)
        };
        // The last convolution adds the identity (or the downsampled input), then ReLU.
        let out_grid = last.output_grid(src_grid);
        match &block.downsample {
            Some(ds) => {
                ensure_len(d, out_grid.floats());
                ds.run(x, x_grid, d, out_grid, false, Activation::Identity, k, bf16);
                last.run(src, src_grid, d, out_grid, true, Activation::Relu, k, bf16);
                std::mem::swap(x, d);
            }
            None => last.run(src, src_grid, x, out_grid, true, Activation::Relu, k, bf16),
        }
        out_grid
    }
}
