//! The convolution kernel of the CPU engine: an implicit GEMM over NHWC buffers.
//!
//! Every convolution of the network (1x1, 3x3, the 7x7 stem, any stride) is computed as
//! `out[pixel, :] = epilogue(sum over taps t, channels k of in[pixel_offset + tap_t + k] * W[t, k, :])`
//! where a *tap* is a contiguous run of input floats: in NHWC with a zero border, the `kw`
//! horizontally adjacent pixels of one kernel row are `kw * C` consecutive floats, so a 3x3
//! convolution has three taps of `3 * C` floats and a 1x1 convolution one tap of `C` floats.
//! No im2col copy is made: the micro-kernel reads input rows in place through per-pixel offsets
//! ([`PixelMap`]), so strides and borders cost nothing.
//!
//! Weights are packed once into 16-column panels, split into depth blocks that fit the L2 cache.
//! A 6x16 register tile accumulates over one depth block; the first block starts from the bias
//! plus the residual, the last applies the activation (ReLU or ReLU6), so bias, residual add
//! and activation need no extra pass over memory. Work is split over row chunks and panel groups with rayon.
//!
//! The micro-kernel has an AVX2+FMA version (chosen at run time when the CPU has both) and a
//! portable one; both compute the same sums in the same order up to fused rounding.

use rayon::prelude::*;

/// Output rows (pixels) per register tile.
pub const TILE_ROWS: usize = 6;
/// Output columns (channels) per register tile and weight panel.
pub const PANEL: usize = 16;
/// Depth (floats of one input pixel run) per weight block, chosen so a block of panels stays in
/// the L2 cache while row tiles stream past it.
const DEPTH_BLOCK: usize = 384;
/// Bytes of packed weights one task keeps hot.
const PANEL_GROUP_BYTES: usize = 192 * 1024;

/// Which micro-kernel runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 with FMA.
    Avx2Fma,
}

impl KernelKind {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return KernelKind::Avx2Fma;
            }
        }
        KernelKind::Portable
    }
}

/// The activation a convolution's epilogue applies after bias and residual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet and EfficientNet-Lite).
    Relu6,
}

impl Activation {
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }
}

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

/// Where the pixels of a grid live in an NHWC buffer: pixel `i` (images, then rows, then
/// columns) starts at `base + n * image_step + y * row_step + x * col_step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelMap {
    pub images: usize,
    pub height: usize,
    pub width: usize,
    pub base: usize,
    pub image_step: usize,
    pub row_step: usize,
    pub col_step: usize,
}

impl PixelMap {
    pub fn pixels(&self) -> usize {
        self.images * self.height * self.width
    }

    #[inline]
    pub fn offset(&self, i: usize) -> usize {
        let per_image = self.height * self.width;
        let (n, r) = (i / per_image, i % per_image);
        let (y, x) = (r / self.width, r % self.width);
        self.base + n * self.image_step + y * self.row_step + x * self.col_step
    }

    /// The offsets of pixels `range`, walking the grid instead of dividing for each.
    fn offsets(&self, range: std::ops::Range<usize>) -> Vec<usize> {
        let mut out = Vec::with_capacity(range.len());
        if range.is_empty() {
            return out;
        }
        let per_image = self.height * self.width;
        let (mut n, r) = (range.start / per_image, range.start % per_image);
        let (mut y, mut x) = (r / self.width, r % self.width);
        for _ in range {
            out.push(self.base + n * self.image_step + y * self.row_step + x * self.col_step);
            x += 1;
            if x == self.width {
                x = 0;
                y += 1;
                if y == self.height {
                    y = 0;
                    n += 1;
                }
            }
        }
        out
    }

    /// The largest offset of any pixel (offsets grow with the pixel index).
    fn last_offset(&self) -> usize {
        self.offset(self.pixels().saturating_sub(1))
    }
}

/// One block of the depth: taps `taps` and, within each, floats `k_start..k_start + k_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DepthBlock {
    tap_start: usize,
    tap_end: usize,
    k_start: usize,
    k_len: usize,
    /// Offset of this block's first panel in the packed data.
    offset: usize,
}

impl DepthBlock {
    fn depth(&self) -> usize {
        (self.tap_end - self.tap_start) * self.k_len
    }
}

/// Convolution weights `W[tap][k][n]` packed for the micro-kernel, with their bias.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    taps: usize,
    tap_len: usize,
    n: usize,
    panels: usize,
    blocks: Vec<DepthBlock>,
    data: AlignedBuf,
    /// Bias padded with zeros to `panels * PANEL`.
    bias: Vec<f32>,
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

    fn block_panel(&self, b: &DepthBlock, p: usize) -> *const f32 {
        self.data.as_slice()[b.offset + p * b.depth() * PANEL..].as_ptr()
    }
}

/// One convolution as an implicit GEMM (see the module docs).
pub struct ConvGemm<'a> {
    pub input: &'a [f32],
    /// Where each output pixel's first tap starts in `input`.
    pub input_map: PixelMap,
    /// Offset of each tap from the pixel's start (in floats).
    pub tap_offsets: &'a [usize],
    pub weights: &'a PackedWeights,
    /// Added before the activation, at `residual_map` (the same pixel grid as the output).
    pub residual: Option<PixelMap>,
    pub activation: Activation,
    pub output_map: PixelMap,
}

#[derive(Clone, Copy)]
struct SendPtr<T>(T);
// SAFETY: the pointers are only dereferenced inside `run`, where each task writes a disjoint
// set of (pixel, channel) positions and the buffers outlive the parallel loop.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl ConvGemm<'_> {
    /// Runs the convolution into `output`; when `residual` is set it is read from `output`
    /// itself (in place: each element is read before its own position is written, by the same
    /// task). Panics if any map reaches outside its buffer.
    pub fn run(&self, output: &mut [f32], kernel: KernelKind) {
        let w = self.weights;
        assert_eq!(self.tap_offsets.len(), w.taps, "tap count");
        let m = self.output_map.pixels();
        assert_eq!(self.input_map.pixels(), m, "input and output grids differ");
        if m == 0 {
            return;
        }
        let max_tap = self.tap_offsets.iter().copied().max().unwrap_or(0);
        assert!(
            self.input_map.last_offset() + max_tap + w.tap_len <= self.input.len(),
            "input map outside the buffer"
        );
        assert!(
            self.output_map.last_offset() + w.n <= output.len(),
            "output map outside the buffer"
        );
        if let Some(r) = &self.residual {
            assert_eq!(r.pixels(), m, "residual grid differs");
            assert!(
                r.last_offset() + w.n <= output.len(),
                "residual map outside the buffer"
            );
        }
        // Tasks: row chunks x panel groups, enough of them for load balance.
        let max_depth = w.blocks.iter().map(|b| b.depth()).max().unwrap_or(1);
        let group = (PANEL_GROUP_BYTES / (max_depth * PANEL * 4)).clamp(1, w.panels);
        let groups = w.panels.div_ceil(group);
        let threads = rayon::current_num_threads().max(1);
        let want_tasks = threads * 4;
        let tiles = m.div_ceil(TILE_ROWS);
        let row_chunks = want_tasks.div_ceil(groups).clamp(1, tiles);
        let tiles_per_chunk = tiles.div_ceil(row_chunks);
        let row_chunks = tiles.div_ceil(tiles_per_chunk);
        let input = SendPtr(self.input.as_ptr());
        let out = SendPtr(output.as_mut_ptr());
        let task = |t: usize| {
            let (chunk, g) = (t / groups, t % groups);
            let rows = chunk * tiles_per_chunk * TILE_ROWS
                ..((chunk + 1) * tiles_per_chunk * TILE_ROWS).min(m);
            let panels = g * group..((g + 1) * group).min(w.panels);
            let (input, out) = (input, out);
            // SAFETY: bounds were checked above; tasks write disjoint (rows, panels) regions.
            unsafe { self.task(input.0, out.0, rows, panels, kernel) };
        };
        let tasks = row_chunks * groups;
        if tasks == 1 || threads == 1 {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }

    unsafe fn task(
        &self,
        input: *const f32,
        out: *mut f32,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        kernel: KernelKind,
    ) {
        let w = self.weights;
        let last_block = w.blocks.len() - 1;
        let mut taps = [0usize; 16];
        let a_offsets = self.input_map.offsets(rows.clone());
        let d_offsets = self.output_map.offsets(rows.clone());
        let r_offsets = self.residual.map(|m| m.offsets(rows.clone()));
        for (bi, b) in w.blocks.iter().enumerate() {
            let n_taps = b.tap_end - b.tap_start;
            let mut block_taps: Vec<usize>;
            let block_taps: &[usize] = if n_taps <= taps.len() {
                for (i, t) in (b.tap_start..b.tap_end).enumerate() {
                    taps[i] = self.tap_offsets[t] + b.k_start;
                }
                &taps[..n_taps]
            } else {
                block_taps = Vec::with_capacity(n_taps);
                for t in b.tap_start..b.tap_end {
                    block_taps.push(self.tap_offsets[t] + b.k_start);
                }
                &block_taps
            };
            let mut r = rows.start;
            while r < rows.end {
                let valid_rows = TILE_ROWS.min(rows.end - r);
                let mut a_rows = [input; TILE_ROWS];
                let mut d_rows = [out; TILE_ROWS];
                let mut res_rows = [out as *const f32; TILE_ROWS];
                for i in 0..TILE_ROWS {
                    let pix = r - rows.start + i.min(valid_rows - 1);
                    a_rows[i] = input.add(a_offsets[pix]);
                    d_rows[i] = out.add(d_offsets[pix]);
                    if let Some(ro) = &r_offsets {
                        res_rows[i] = out.add(ro[pix]);
                    }
                }
                for p in panels.clone() {
                    let col = p * PANEL;
                    let valid_cols = PANEL.min(w.n - col);
                    let init = if bi == 0 {
                        Init::Bias {
                            bias: w.bias.as_ptr().add(col),
                            residual: self.residual.is_some(),
                        }
                    } else {
                        Init::Accumulate
                    };
                    let tile = Tile {
                        a_rows: &a_rows,
                        taps: block_taps,
                        k_len: b.k_len,
                        b: w.block_panel(b, p),
                        init,
                        activation: if bi == last_block {
                            self.activation
                        } else {
                            Activation::Identity
                        },
                    };
                    let mut d = [std::ptr::null_mut(); TILE_ROWS];
                    let mut res = [std::ptr::null(); TILE_ROWS];
                    for i in 0..TILE_ROWS {
                        d[i] = d_rows[i].add(col);
                        res[i] = res_rows[i].add(col);
                    }
                    if valid_rows == TILE_ROWS && valid_cols == PANEL {
                        run_tile(kernel, &tile, &d, &res);
                    } else {
                        run_edge_tile(kernel, &tile, &d, &res, valid_rows, valid_cols);
                    }
                }
                r += TILE_ROWS;
            }
        }
    }
}

/// How a tile's accumulators start.
#[derive(Clone, Copy)]
enum Init {
    /// From the bias (PANEL floats), plus the residual rows when `residual`.
    Bias { bias: *const f32, residual: bool },
    /// From the destination (a later depth block).
    Accumulate,
}

struct Tile<'a> {
    a_rows: &'a [*const f32; TILE_ROWS],
    /// Offsets (from each row's start) of the runs of `k_len` floats to multiply.
    taps: &'a [usize],
    k_len: usize,
    /// `taps.len() * k_len` rows of PANEL floats.
    b: *const f32,
    init: Init,
    activation: Activation,
}

/// A tile with fewer than TILE_ROWS rows or PANEL columns: run it on a scratch tile.
unsafe fn run_edge_tile(
    kernel: KernelKind,
    tile: &Tile,
    d: &[*mut f32; TILE_ROWS],
    res: &[*const f32; TILE_ROWS],
    valid_rows: usize,
    valid_cols: usize,
) {
    let mut dst = [[0f32; PANEL]; TILE_ROWS];
    let mut resid = [[0f32; PANEL]; TILE_ROWS];
    for i in 0..valid_rows {
        for j in 0..valid_cols {
            dst[i][j] = *d[i].add(j);
            resid[i][j] = *res[i].add(j);
        }
    }
    let mut dp = [std::ptr::null_mut(); TILE_ROWS];
    let mut rp = [std::ptr::null(); TILE_ROWS];
    for i in 0..TILE_ROWS {
        dp[i] = dst[i].as_mut_ptr();
        rp[i] = resid[i].as_ptr();
    }
    run_tile(kernel, tile, &dp, &rp);
    for i in 0..valid_rows {
        std::ptr::copy_nonoverlapping(dst[i].as_ptr(), d[i], valid_cols);
    }
}

#[inline]
unsafe fn run_tile(
    kernel: KernelKind,
    tile: &Tile,
    d: &[*mut f32; TILE_ROWS],
    res: &[*const f32; TILE_ROWS],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2Fma => avx2::tile(tile, d, res),
        _ => portable_tile(tile, d, res),
    }
}

unsafe fn portable_tile(tile: &Tile, d: &[*mut f32; TILE_ROWS], res: &[*const f32; TILE_ROWS]) {
    let mut acc = [[0f32; PANEL]; TILE_ROWS];
    match tile.init {
        Init::Bias { bias, residual } => {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = *bias.add(j) + if residual { *res[i].add(j) } else { 0.0 };
                }
            }
        }
        Init::Accumulate => {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = *d[i].add(j);
                }
            }
        }
    }
    let mut b = tile.b;
    for &t in tile.taps {
        for k in 0..tile.k_len {
            let bk = &*(b as *const [f32; PANEL]);
            for (i, row) in acc.iter_mut().enumerate() {
                let a = *tile.a_rows[i].add(t + k);
                for (v, &bv) in row.iter_mut().zip(bk) {
                    *v += a * bv;
                }
            }
            b = b.add(PANEL);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            *d[i].add(j) = tile.activation.apply(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Activation, Init, Tile, PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    /// The 6x16 tile: twelve 8-float accumulators, two weight vectors, one broadcast.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        tile: &Tile,
        d: &[*mut f32; TILE_ROWS],
        res: &[*const f32; TILE_ROWS],
    ) {
        let mut c = [_mm256_setzero_ps(); 2 * TILE_ROWS];
        match tile.init {
            Init::Bias { bias, residual } => {
                let b0 = _mm256_loadu_ps(bias);
                let b1 = _mm256_loadu_ps(bias.add(8));
                for i in 0..TILE_ROWS {
                    if residual {
                        c[2 * i] = _mm256_add_ps(b0, _mm256_loadu_ps(res[i]));
                        c[2 * i + 1] = _mm256_add_ps(b1, _mm256_loadu_ps(res[i].add(8)));
                    } else {
                        c[2 * i] = b0;
                        c[2 * i + 1] = b1;
                    }
                }
            }
            Init::Accumulate => {
                for i in 0..TILE_ROWS {
                    c[2 * i] = _mm256_loadu_ps(d[i]);
                    c[2 * i + 1] = _mm256_loadu_ps(d[i].add(8));
                }
            }
        }
        let [mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31, mut c40, mut c41, mut c50, mut c51] =
            c;
        let mut b = tile.b;
        for &t in tile.taps {
            let a0 = tile.a_rows[0].add(t);
            let a1 = tile.a_rows[1].add(t);
            let a2 = tile.a_rows[2].add(t);
            let a3 = tile.a_rows[3].add(t);
            let a4 = tile.a_rows[4].add(t);
            let a5 = tile.a_rows[5].add(t);
            for k in 0..tile.k_len {
                let w0 = _mm256_load_ps(b);
                let w1 = _mm256_load_ps(b.add(8));
                let x = _mm256_broadcast_ss(&*a0.add(k));
                c00 = _mm256_fmadd_ps(x, w0, c00);
                c01 = _mm256_fmadd_ps(x, w1, c01);
                let x = _mm256_broadcast_ss(&*a1.add(k));
                c10 = _mm256_fmadd_ps(x, w0, c10);
                c11 = _mm256_fmadd_ps(x, w1, c11);
                let x = _mm256_broadcast_ss(&*a2.add(k));
                c20 = _mm256_fmadd_ps(x, w0, c20);
                c21 = _mm256_fmadd_ps(x, w1, c21);
                let x = _mm256_broadcast_ss(&*a3.add(k));
                c30 = _mm256_fmadd_ps(x, w0, c30);
                c31 = _mm256_fmadd_ps(x, w1, c31);
                let x = _mm256_broadcast_ss(&*a4.add(k));
                c40 = _mm256_fmadd_ps(x, w0, c40);
                c41 = _mm256_fmadd_ps(x, w1, c41);
                let x = _mm256_broadcast_ss(&*a5.add(k));
                c50 = _mm256_fmadd_ps(x, w0, c50);
                c51 = _mm256_fmadd_ps(x, w1, c51);
                b = b.add(PANEL);
            }
        }
        let mut c = [c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51];
        match tile.activation {
            Activation::Identity => {}
            Activation::Relu => {
                let zero = _mm256_setzero_ps();
                for v in c.iter_mut() {
                    *v = _mm256_max_ps(*v, zero);
                }
            }
            Activation::Relu6 => {
                let zero = _mm256_setzero_ps();
                let six = _mm256_set1_ps(6.0);
                for v in c.iter_mut() {
                    *v = _mm256_min_ps(_mm256_max_ps(*v, zero), six);
                }
            }
        }
        for i in 0..TILE_ROWS {
            _mm256_storeu_ps(d[i], c[2 * i]);
            _mm256_storeu_ps(d[i].add(8), c[2 * i + 1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution over an NCHW-free description: input (n, h, w, c) unpadded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn naive_conv(
        x: &[f32],
        (n, h, w, c): (usize, usize, usize, usize),
        wt: &[f32], // (co, ci, k, k)
        co: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> (Vec<f32>, usize, usize) {
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        let mut out = vec![0f32; n * ho * wo * co];
        for b in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for o in 0..co {
                        let mut s = 0f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                for ci in 0..c {
                                    let xv = x[((b * h + iy as usize) * w + ix as usize) * c + ci];
                                    let wv = wt[((o * c + ci) * k + ky) * k + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((b * ho + oy) * wo + ox) * co + o] = s as f32;
                    }
                }
            }
        }
        (out, ho, wo)
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Convolution through ConvGemm with the input copied into a zero border of `pad`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_conv(
        x: &[f32],
        (n, h, w, c): (usize, usize, usize, usize),
        wt: &[f32],
        co: usize,
        k: usize,
        stride: usize,
        pad: usize,
        kernel: KernelKind,
        residual: Option<&[f32]>,
        activation: Activation,
    ) -> Vec<f32> {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let mut xp = vec![0f32; n * hp * wp * c];
        for b in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    let src = &x[((b * h + y) * w + xx) * c..][..c];
                    xp[((b * hp + y + pad) * wp + xx + pad) * c..][..c].copy_from_slice(src);
                }
            }
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        // W[t = ky][kx * c + ci][o]
        let mut wm = vec![0f32; k * k * c * co];
        for o in 0..co {
            for ci in 0..c {
                for ky in 0..k {
                    for kx in 0..k {
                        wm[((ky * k + kx) * c + ci) * co + o] =
                            wt[((o * c + ci) * k + ky) * k + kx];
                    }
                }
            }
        }
        let bias: Vec<f32> = (0..co).map(|o| o as f32 * 0.01).collect();
        let packed = PackedWeights::pack(&wm, k, k * c, co, &bias);
        let taps: Vec<usize> = (0..k).map(|ky| ky * wp * c).collect();
        let input_map = PixelMap {
            images: n,
            height: ho,
            width: wo,
            base: 0,
            image_step: hp * wp * c,
            row_step: stride * wp * c,
            col_step: stride * c,
        };
        // Output with a border of 1 and odd padding to check the maps.
        let (oh, ow) = (ho + 2, wo + 2);
        let output_map = PixelMap {
            images: n,
            height: ho,
            width: wo,
            base: (ow + 1) * co,
            image_step: oh * ow * co,
            row_step: ow * co,
            col_step: co,
        };
        let mut out = vec![f32::NAN; n * oh * ow * co];
        if let Some(r) = residual {
            for i in 0..n * ho * wo {
                out[output_map.offset(i)..][..co].copy_from_slice(&r[i * co..][..co]);
            }
        }
        ConvGemm {
            input: &xp,
            input_map,
            tap_offsets: &taps,
            weights: &packed,
            residual: residual.map(|_| output_map),
            activation,
            output_map,
        }
        .run(&mut out, kernel);
        let mut dense = vec![0f32; n * ho * wo * co];
        for i in 0..n * ho * wo {
            dense[i * co..][..co].copy_from_slice(&out[output_map.offset(i)..][..co]);
        }
        dense
    }

    #[test]
    fn implicit_gemm_matches_direct_convolution() {
        let mut seed = 7u64;
        let kernels = if KernelKind::detect() == KernelKind::Portable {
            vec![KernelKind::Portable]
        } else {
            vec![KernelKind::Portable, KernelKind::detect()]
        };
        // (n, h, w, c, co, k, stride, pad)
        let cases = [
            (2, 7, 5, 3, 5, 3, 1, 1),
            (1, 9, 8, 20, 33, 3, 2, 1),
            (2, 6, 6, 16, 16, 1, 1, 0),
            (1, 5, 7, 300, 17, 1, 2, 0),
            (1, 11, 10, 3, 8, 7, 2, 3),
            (1, 4, 4, 130, 40, 3, 1, 1),
        ];
        for &(n, h, w, c, co, k, stride, pad) in &cases {
            let x: Vec<f32> = (0..n * h * w * c).map(|_| lcg(&mut seed)).collect();
            let wt: Vec<f32> = (0..co * c * k * k).map(|_| lcg(&mut seed)).collect();
            let (want, ho, wo) = naive_conv(&x, (n, h, w, c), &wt, co, k, stride, pad);
            let res: Vec<f32> = (0..n * ho * wo * co).map(|_| lcg(&mut seed)).collect();
            for &kernel in &kernels {
                let res = Some(res.as_slice());
                for (residual, activation) in [
                    (None, Activation::Identity),
                    (res, Activation::Relu),
                    (None, Activation::Relu6),
                    (res, Activation::Relu6),
                ] {
                    let got = gemm_conv(
                        &x,
                        (n, h, w, c),
                        &wt,
                        co,
                        k,
                        stride,
                        pad,
                        kernel,
                        residual,
                        activation,
                    );
                    for i in 0..want.len() {
                        let mut v = want[i] + (i % co) as f32 * 0.01;
                        if let Some(r) = residual {
                            v += r[i];
                        }
                        v = activation.apply(v);
                        assert!(
                            (got[i] - v).abs() <= 1e-4 * (1.0 + v.abs()),
                            "{kernel:?} case {:?} [{i}]: {} vs {v}",
                            (n, h, w, c, co, k, stride, pad),
                            got[i]
                        );
                    }
                }
            }
        }
    }
}
