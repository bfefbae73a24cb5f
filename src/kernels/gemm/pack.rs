//! Convolution weights laid out for the GEMM micro-kernels, split into depth blocks that stay
//! in the L2 cache while row tiles stream past them, on 64-byte boundaries. Two formats: f32
//! in 16-column panels (a row of 16 floats per depth step) or 32-column ones for the AVX-512
//! tile, and bfloat16 in 32-column panels
//! whose depth steps are pairs (column `j`'s two weights side by side, as `vdpbf16ps` takes
//! them; an odd run's last pair ends in a zero).

use super::tile::{PANEL, PANEL_WIDE};
use super::tile_bf16::PANEL_BF16;
use crate::kernels::bf16;

/// Bytes of weights per depth step of a panel row that keeps a block in the L2 cache: 384
/// f32 depth steps of one 16-float panel row (and as many bytes in bf16).
const DEPTH_BLOCK_BYTES: usize = 384 * 4;

/// The number format and panel layout of packed weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32, `PANEL` columns per panel.
    F32,
    /// f32, `PANEL_WIDE` columns per panel (the AVX-512 tile).
    F32Wide,
    /// bfloat16 bits, `PANEL_BF16` columns per panel, depth in pairs.
    Bf16,
}

impl WeightFormat {
    /// Depth steps (input values) per block.
    fn depth_block(self) -> usize {
        match self {
            WeightFormat::F32 => DEPTH_BLOCK_BYTES / 4,
            // Twice the panel width: half the depth keeps a panel in the L1 cache.
            WeightFormat::F32Wide => DEPTH_BLOCK_BYTES / 8,
            WeightFormat::Bf16 => DEPTH_BLOCK_BYTES / 4,
        }
    }

    pub(super) fn panel(self) -> usize {
        match self {
            WeightFormat::F32 => PANEL,
            WeightFormat::F32Wide => PANEL_WIDE,
            WeightFormat::Bf16 => PANEL_BF16,
        }
    }
}

/// A `Vec<T>` whose data starts on a 64-byte boundary (whole cache lines for the panels).
#[derive(Debug, Clone, Default)]
pub struct AlignedBuf<T = f32> {
    raw: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> AlignedBuf<T> {
    pub fn zeros(len: usize) -> Self {
        let per_line = 64 / std::mem::size_of::<T>();
        let raw = vec![T::default(); len + per_line];
        let misalign = (raw.as_ptr() as usize / std::mem::size_of::<T>()) % per_line;
        let start = (per_line - misalign) % per_line;
        AlignedBuf { raw, start, len }
    }

    pub fn as_slice(&self) -> &[T] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// The packed values in their format.
#[derive(Debug, Clone)]
enum PackedData {
    F32(AlignedBuf<f32>),
    Bf16(AlignedBuf<u16>),
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

    /// Values one panel of this block holds in `format` (bf16 rounds each run up to pairs).
    pub(super) fn panel_len(&self, format: WeightFormat) -> usize {
        match format {
            WeightFormat::F32 | WeightFormat::F32Wide => self.depth() * format.panel(),
            WeightFormat::Bf16 => {
                (self.tap_end - self.tap_start) * self.k_len.div_ceil(2) * 2 * PANEL_BF16
            }
        }
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
    pub(super) format: WeightFormat,
    data: PackedData,
    /// Bias padded with zeros to `panels` panels.
    pub(super) bias: Vec<f32>,
}

impl PackedWeights {
    /// Packs `w` given as `(taps * tap_len, n)` row-major (row `t * tap_len + k`), and `bias` (n),
    /// in f32.
    pub fn pack(w: &[f32], taps: usize, tap_len: usize, n: usize, bias: &[f32]) -> Self {
        Self::pack_as(WeightFormat::F32, w, taps, tap_len, n, bias)
    }

    /// As [`PackedWeights::pack`], in `format` (bf16 weights rounded to nearest even; the bias
    /// stays f32).
    pub fn pack_as(
        format: WeightFormat,
        w: &[f32],
        taps: usize,
        tap_len: usize,
        n: usize,
        bias: &[f32],
    ) -> Self {
        assert_eq!(w.len(), taps * tap_len * n, "weight matrix size");
        assert_eq!(bias.len(), n, "bias size");
        let panel_cols = format.panel();
        let depth_block = format.depth_block();
        let panels = n.div_ceil(panel_cols);
        let mut blocks = Vec::new();
        let mut offset = 0;
        if tap_len >= depth_block {
            // Split each tap into near-equal chunks (even ones for bf16: whole pairs).
            let chunks = tap_len.div_ceil(depth_block);
            let mut chunk = tap_len.div_ceil(chunks);
            if format == WeightFormat::Bf16 {
                chunk += chunk % 2;
            }
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
                    offset += blocks
                        .last()
                        .map_or(0, |b: &DepthBlock| b.panel_len(format))
                        * panels;
                    k += k_len;
                }
            }
        } else {
            // Group whole taps.
            let per_block = (depth_block / tap_len).max(1);
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
                offset += b.panel_len(format) * panels;
                blocks.push(b);
                t = tap_end;
            }
        }
        // Value of the weight at depth (t, k) and column `col`, zero outside the matrix.
        let at = |t: usize, k: usize, col: usize| {
            if col < n && k < tap_len {
                w[(t * tap_len + k) * n + col]
            } else {
                0.0
            }
        };
        let data = match format {
            WeightFormat::F32 | WeightFormat::F32Wide => {
                let cols = format.panel();
                let mut data = AlignedBuf::zeros(offset);
                let out = data.as_mut_slice();
                for b in &blocks {
                    for p in 0..panels {
                        let panel = &mut out[b.offset + p * b.panel_len(format)..];
                        let mut d = 0;
                        for t in b.tap_start..b.tap_end {
                            for k in b.k_start..b.k_start + b.k_len {
                                for j in 0..cols {
                                    panel[d * cols + j] = at(t, k, p * cols + j);
                                }
                                d += 1;
                            }
                        }
                    }
                }
                PackedData::F32(data)
            }
            WeightFormat::Bf16 => {
                let mut data = AlignedBuf::zeros(offset);
                let out = data.as_mut_slice();
                for b in &blocks {
                    let k_end = b.k_start + b.k_len;
                    for p in 0..panels {
                        let panel = &mut out[b.offset + p * b.panel_len(format)..];
                        let mut q = 0;
                        for t in b.tap_start..b.tap_end {
                            for k in (b.k_start..k_end).step_by(2) {
                                for j in 0..PANEL_BF16 {
                                    let col = p * PANEL_BF16 + j;
                                    let second = if k + 1 < k_end {
                                        at(t, k + 1, col)
                                    } else {
                                        0.0
                                    };
                                    panel[(q * PANEL_BF16 + j) * 2] = bf16::round(at(t, k, col));
                                    panel[(q * PANEL_BF16 + j) * 2 + 1] = bf16::round(second);
                                }
                                q += 1;
                            }
                        }
                    }
                }
                PackedData::Bf16(data)
            }
        };
        let mut padded_bias = vec![0f32; panels * panel_cols];
        padded_bias[..n].copy_from_slice(bias);
        PackedWeights {
            taps,
            tap_len,
            n,
            panels,
            blocks,
            format,
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

    /// The bias, one per output channel.
    pub fn bias(&self) -> &[f32] {
        &self.bias[..self.n]
    }

    pub fn tap_len(&self) -> usize {
        self.tap_len
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Values held (weights and bias).
    pub fn len(&self) -> usize {
        let weights = match &self.data {
            PackedData::F32(d) => d.len,
            PackedData::Bf16(d) => d.len,
        };
        weights + self.bias.len()
    }

    /// Input values a tap's run is read to: bf16 reads whole pairs, so an odd run is read one
    /// value further (multiplied by a zero weight).
    pub(super) fn tap_read_len(&self) -> usize {
        match self.format {
            WeightFormat::F32 | WeightFormat::F32Wide => self.tap_len,
            WeightFormat::Bf16 => self.tap_len + self.tap_len % 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Panel `p` of block `b`, f32 weights.
    pub(super) fn block_panel_f32(&self, b: &DepthBlock, p: usize) -> *const f32 {
        match &self.data {
            PackedData::F32(d) => d.as_slice()[b.offset + p * b.panel_len(self.format)..].as_ptr(),
            PackedData::Bf16(_) => panic!("bf16 weights read as f32"),
        }
    }

    /// Panel `p` of block `b`, bf16 weights.
    pub(super) fn block_panel_bf16(&self, b: &DepthBlock, p: usize) -> *const u16 {
        match &self.data {
            PackedData::Bf16(d) => d.as_slice()[b.offset + p * b.panel_len(self.format)..].as_ptr(),
            PackedData::F32(_) => panic!("f32 weights read as bf16"),
        }
    }
}
