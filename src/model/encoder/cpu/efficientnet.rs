//! EfficientNet-Lite on the CPU engine: the stem, MBConv blocks and head of
//! [`crate::model::encoder::efficientnet`] with BatchNorm folded, in NHWC.
//!
//! - Stem (3x3, stride 2), expansion, projection and head convolutions are implicit GEMMs
//!   ([`FoldedConv::run_same`]) with bias and ReLU6 (or nothing, for the projection) in the
//!   epilogue; a projection with an identity shortcut adds the block input in place.
//! - Depthwise convolutions run [`crate::kernels::depthwise::folded`].
//! - TensorFlow "same" padding puts more zeros after than before for stride 2 and some sizes;
//!   every buffer a padded convolution reads has a zero border as wide as the larger side
//!   (`k / 2`), and the windows start `before` pixels into it, so no padded copy is made.

use rayon::prelude::*;

use super::error::{CpuEngineError, Result};
use super::fold::{fold_conv, folded_batch_norm, read_f32, Formats};
use super::workspace::Workspace;
use crate::kernels::activation::Activation;
use crate::kernels::conv::{Conv3x3, FoldedConv};
use crate::kernels::depthwise::{depthwise, DepthwiseWeights};
use crate::kernels::gemm::WeightFormat;
use crate::kernels::isa::KernelKind;
use crate::kernels::layout::{ensure_len, pack_nchw, same_border, same_padding, Grid};
use crate::kernels::pool::{adaptive_avg_pool, adaptive_pool_matrix};
use crate::model::encoder::efficientnet::{ConvBn, EfficientNetLite, MbConv};

/// One MBConv block, folded.
#[derive(Debug, Clone)]
struct FoldedMbConv {
    expand: Option<FoldedConv>,
    depthwise: DepthwiseWeights,
    project: FoldedConv,
    skip: bool,
}

/// The folded trunk.
#[derive(Debug, Clone)]
pub struct FoldedEfficientNet {
    stem: FoldedConv,
    blocks: Vec<FoldedMbConv>,
    head: FoldedConv,
    /// Border of the block inputs and outputs: wide enough for a block without expansion,
    /// whose depthwise convolution reads its input directly.
    x_pad: usize,
}

/// A full convolution of the trunk (its "same" padding is applied when it runs).
fn fold_conv_bn(conv: &ConvBn, layer: &str, format: WeightFormat) -> Result<FoldedConv> {
    if conv.depthwise {
        return Err(CpuEngineError::Unsupported {
            layer: layer.to_string(),
            what: "a depthwise convolution where a full one belongs".into(),
        });
    }
    // No 3x3 stride-1 full convolution here (the 3x3s are depthwise or the stride-2 stem).
    fold_conv(
        format,
        Conv3x3::Direct,
        &conv.weight,
        conv.stride,
        0,
        &conv.bn,
        layer,
    )
}

fn fold_depthwise(conv: &ConvBn, layer: &str) -> Result<DepthwiseWeights> {
    let wrap = |source| CpuEngineError::Weights {
        layer: layer.to_string(),
        source,
    };
    let (c, one, kh, kw) = conv.weight.dims4().map_err(wrap)?;
    if !conv.depthwise || one != 1 || kh != kw || kh != conv.kernel || kh % 2 == 0 {
        return Err(CpuEngineError::Unsupported {
            layer: layer.to_string(),
            what: format!("depthwise weight of shape {:?}", conv.weight.dims()),
        });
    }
    let w = read_f32(&conv.weight).map_err(wrap)?;
    let (scale, shift) = folded_batch_norm(&conv.bn, c, layer)?;
    Ok(DepthwiseWeights::fold(&w, &scale, &shift, kh, conv.stride))
}

impl FoldedMbConv {
    fn fold(block: &MbConv, i: usize, format: WeightFormat) -> Result<Self> {
        let name = |part: &str| format!("_blocks.{i}.{part}");
        let folded = FoldedMbConv {
            expand: block
                .expand
                .as_ref()
                .map(|e| fold_conv_bn(e, &name("_expand_conv"), format))
                .transpose()?,
            depthwise: fold_depthwise(&block.depthwise, &name("_depthwise_conv"))?,
            project: fold_conv_bn(&block.project, &name("_project_conv"), format)?,
            skip: block.skip,
        };
        folded.check(&name(""))?;
        Ok(folded)
    }

    fn c_in(&self) -> usize {
        match &self.expand {
            Some(e) => e.c_in(),
            None => self.depthwise.channels(),
        }
    }

    /// 1x1 expansion and projection, channels that chain, a shortcut only where shapes match.
    fn check(&self, layer: &str) -> Result<()> {
        let fail = |what: String| {
            Err(CpuEngineError::Unsupported {
                layer: layer.trim_end_matches('.').to_string(),
                what,
            })
        };
        for conv in self.expand.iter().chain([&self.project]) {
            if conv.kernel() != 1 || conv.stride() != 1 {
                return fail(format!(
                    "{k}x{k} stride {s} pointwise convolution",
                    k = conv.kernel(),
                    s = conv.stride()
                ));
            }
        }
        let mid = self
            .expand
            .as_ref()
            .map(|e| e.c_out())
            .unwrap_or(self.c_in());
        if mid != self.depthwise.channels() || self.project.c_in() != mid {
            return fail(format!(
                "channels do not chain: {} expanded, {} depthwise, {} projected",
                mid,
                self.depthwise.channels(),
                self.project.c_in()
            ));
        }
        if self.skip && (self.depthwise.stride() != 1 || self.project.c_out() != self.c_in()) {
            return fail("a shortcut around a block that changes shape".into());
        }
        Ok(())
    }
}

impl FoldedEfficientNet {
    /// Folds the current tensors of `net`, full convolutions packed in `formats` (the depthwise
    /// ones stay f32: they are a small share of the work and memory-bound).
    pub fn fold(net: &EfficientNetLite, formats: Formats) -> Result<Self> {
        let format = formats.body;
        let stem = fold_conv_bn(&net.stem, "_conv_stem", formats.stem)?;
        let head = fold_conv_bn(&net.head, "_conv_head", format)?;
        // Folding reads every weight once: spread it over the threads.
        let blocks = net
            .blocks
            .par_iter()
            .enumerate()
            .map(|(i, b)| FoldedMbConv::fold(b, i, format))
            .collect::<Result<Vec<_>>>()?;
        let mut c = stem.c_out();
        for (i, b) in blocks.iter().enumerate() {
            if b.c_in() != c {
                return Err(CpuEngineError::Unsupported {
                    layer: format!("_blocks.{i}"),
                    what: format!("{} input channels after {c}", b.c_in()),
                });
            }
            c = b.project.c_out();
        }
        if head.c_in() != c || head.kernel() != 1 || head.stride() != 1 {
            return Err(CpuEngineError::Unsupported {
                layer: "_conv_head".into(),
                what: format!(
                    "{k}x{k} stride {s} convolution of {} channels after {c}",
                    head.c_in(),
                    k = head.kernel(),
                    s = head.stride()
                ),
            });
        }
        let x_pad = blocks
            .iter()
            .filter(|b| b.expand.is_none())
            .map(|b| same_border(b.depthwise.kernel()))
            .max()
            .unwrap_or(0);
        Ok(FoldedEfficientNet {
            stem,
            blocks,
            head,
            x_pad,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.stem.c_in()
    }

    pub fn out_channels(&self) -> usize {
        self.head.c_out()
    }

    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Floats held by the folded weights.
    pub fn parameters(&self) -> usize {
        let convs: usize = [&self.stem, &self.head]
            .into_iter()
            .chain(
                self.blocks
                    .iter()
                    .flat_map(|b| b.expand.iter().chain([&b.project])),
            )
            .map(|c| c.len())
            .sum();
        convs + self.blocks.iter().map(|b| b.depthwise.len()).sum::<usize>()
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
        let in_grid = Grid {
            n,
            h,
            w,
            c,
            pad: same_border(self.stem.kernel()),
        };
        ensure_len(&mut ws.input, in_grid.floats());
        pack_nchw(images, in_grid, &mut ws.input);
        let stride = self.stem.stride();
        let mut x_grid = Grid {
            n,
            h: h.div_ceil(stride),
            w: w.div_ceil(stride),
            c: self.stem.c_out(),
            pad: self.x_pad,
        };
        ensure_len(&mut ws.x, x_grid.floats());
        self.stem.run_same(
            &ws.input,
            in_grid,
            &mut ws.x,
            x_grid,
            false,
            Activation::Relu6,
            kernel,
            &mut ws.bf16,
        );
        for block in &self.blocks {
            x_grid = self.block(block, x_grid, ws, kernel);
        }
        let head_grid = Grid {
            c: self.head.c_out(),
            pad: 0,
            ..x_grid
        };
        ensure_len(&mut ws.t2, head_grid.floats());
        self.head.run_same(
            &ws.x,
            x_grid,
            &mut ws.t2,
            head_grid,
            false,
            Activation::Relu6,
            kernel,
            &mut ws.bf16,
        );
        let rows = adaptive_pool_matrix(head_grid.h, s);
        let cols = adaptive_pool_matrix(head_grid.w, s);
        adaptive_avg_pool(&ws.t2, head_grid, s, &rows, &cols, out);
    }

    /// One MBConv block from `ws.x` (laid out as `x_grid`) back into `ws.x`; returns the new
    /// layout.
    fn block(
        &self,
        block: &FoldedMbConv,
        x_grid: Grid,
        ws: &mut Workspace,
        kernel: KernelKind,
    ) -> Grid {
        let Workspace {
            x, t1, t2, d, bf16, ..
        } = ws;
        let (k, stride) = (block.depthwise.kernel(), block.depthwise.stride());
        // Expansion (1x1, ReLU6) into a buffer bordered for the depthwise window.
        let (dw_in, dw_in_grid): (&[f32], Grid) = match &block.expand {
            Some(expand) => {
                let g = Grid {
                    c: expand.c_out(),
                    pad: same_border(k),
                    ..x_grid
                };
                ensure_len(t1, g.floats());
                expand.run_same(x, x_grid, t1, g, false, Activation::Relu6, kernel, bf16);
                (t1.as_slice(), g)
            }
            None => (x.as_slice(), x_grid),
        };
        let dw_grid = Grid {
            n: x_grid.n,
            h: x_grid.h.div_ceil(stride),
            w: x_grid.w.div_ceil(stride),
            c: block.depthwise.channels(),
            pad: 0,
        };
        ensure_len(t2, dw_grid.floats());
        let top = same_padding(x_grid.h, k, stride).0;
        let left = same_padding(x_grid.w, k, stride).0;
        depthwise(
            dw_in,
            dw_in_grid,
            (top, left),
            &block.depthwise,
            Activation::Relu6,
            t2,
            dw_grid,
            kernel,
        );
        // Projection (1x1, no activation), adding the block input in place for a shortcut.
        let out_grid = Grid {
            c: block.project.c_out(),
            pad: self.x_pad,
            ..dw_grid
        };
        if block.skip {
            debug_assert_eq!(out_grid, x_grid, "checked when folded");
            block.project.run_same(
                t2,
                dw_grid,
                x,
                out_grid,
                true,
                Activation::Identity,
                kernel,
                bf16,
            );
        } else {
            ensure_len(d, out_grid.floats());
            block.project.run_same(
                t2,
                dw_grid,
                d,
                out_grid,
                false,
                Activation::Identity,
                kernel,
                bf16,
            );
            std::mem::swap(x, d);
        }
        out_grid
    }
}
