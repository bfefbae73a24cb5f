//! Convolution weights laid out for the GEMM micro-kernel: 16-column panels, split into depth
//! blocks that stay in the L2 cache while row tiles stream past them, on 64-byte boundaries.

use super::tile::PANEL;

/// Depth (floats of one input pixel run) per weight block, chosen so a block of panels stays in
/// the L2 cache while row tiles stream past it.
const DEPTH_BLOCK: usize = 384;

/// A `Vec<f32>` whose data starts on a 64-byte boundary (whole cache lines for the panels).
#[derive(Debug, Clone, Default)]
pub struct AlignedBuf {
    raw: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeros(len: usize) -> Self {
        let raw = vec![0f32; len + 16];
        let misalign = (raw.as_ptr() as usize / 4) % 16;
        let start = (16 - misalign) % 16;
        AlignedBuf { raw, start, len }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// One block of the depth: taps `taps` and, within each, floats `k_start..k_start + k_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DepthBlock {
    pub(super) tap_start: usize,
    pub(super) tap_end: usize,
    pub(super) k_start: usize,
    pub(super) k_len: usize,
    /// Offset of this block's first panel in the packed data.
    pub(super) offset: usize,
}

impl DepthBlock {
    pub(super) fn depth(&self) -> usize {
        (self.tap_end - self.tap_start) * self.k_len
    }
}

/// Convolution weights `W[tap][k][n]` packed for the micro-kernel, with their bias.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub(super) taps: usize,
    pub(super) tap_len: usize,
    pub(super) n: usize,
    pub(super) panels: usize,
    pub(super) blocks: Vec<DepthBlock>,
    data: AlignedBuf,
    /// Bias padded with zeros to `panels * PANEL`.
    pub(super) bias: Vec<f32>,
}

impl PackedWeights {
    /// Packs `w` given as `(taps * tap_len, n)` row-major (row `t * tap_len + k`), and `bias` (n).
    pub fn pack(w: &[f32], taps: usize, tap_len: usize, n: usize, bias: &[f32]) -> Self {
        assert_eq!(w.len(), taps * tap_len * n, "weight matrix size");
        assert_eq!(bias.len(), n, "bias size");
        let panels = n.div_ceil(PANEL);
        let mut blocks = Vec::new();
        let mut offset = 0;
        if tap_len >= DEPTH_BLOCK {
            // Split each tap into near-equal chunks.
            let chunks = tap_len.div_ceil(DEPTH_BLOCK);
            let chunk = tap_len.div_ceil(chunks);
            for t in 0..taps {
                let mut k = 0;
                while k < tap_len {
                    let k_len = chunk.min(tap_len - k);
                    blocks.push(DepthBlock {
                        tap_start: t,
                        tap_end: t + 1,
                        k_start: k,
                        k_len,
                        offset,
                    });
                    offset += k_len * PANEL * panels;
                    k += k_len;
                }
            }
        } else {
            // Group whole taps.
            let per_block = (DEPTH_BLOCK / tap_len).max(1);
            let mut t = 0;
            while t < taps {
                let tap_end = (t + per_block).min(taps);
                let b = DepthBlock {
                    tap_start: t,
                    tap_end,
                    k_start: 0,
                    k_len: tap_len,
                    offset,
                };
                offset += b.depth() * PANEL * panels;
                blocks.push(b);
                t = tap_end;
            }
        }
        let mut data = AlignedBuf::zeros(offset);
        let out = data.as_mut_slice();
        for b in &blocks {
            let depth = b.depth();
            for p in 0..panels {
                let panel = &mut out[b.offset + p * depth * PANEL..][..depth * PANEL];
                let mut d = 0;
                for t in b.tap_start..b.tap_end {
                    for k in b.k_start..b.k_start + b.k_len {
                        let row = &w[(t * tap_len + k) * n..][..n];
                        for j in 0..PANEL {
                            let col = p * PANEL + j;
                            if col < n {
                                panel[d * PANEL + j] = row[col];
                            }
                        }
                        d += 1;
                    }
                }
            }
        }
        let mut padded_bias = vec![0f32; panels * PANEL];
        padded_bias[..n].copy_from_slice(bias);
        PackedWeights {
            taps,
            tap_len,
            n,
            panels,
            blocks,
            data,
            bias: padded_bias,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.n
    }

    pub fn taps(&self) -> usize {
        self.taps
    }

    pub fn tap_len(&self) -> usize {
        self.tap_len
    }

    /// Floats held (weights and bias).
    pub fn len(&self) -> usize {
        self.data.len + self.bias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn block_panel(&self, b: &DepthBlock, p: usize) -> *const f32 {
        self.data.as_slice()[b.offset + p * b.depth() * PANEL..].as_ptr()
    }
}
