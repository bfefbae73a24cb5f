//! The convolution kernel of the CPU encoder engine: an implicit GEMM over NHWC buffers.
//!
//! Every convolution of the network (1x1, 3x3, the 7x7 stem, any stride) is computed as
//! `out[pixel, :] = epilogue(sum over taps t, channels k of in[pixel_offset + tap_t + k] * W[t, k, :])`
//! where a *tap* is a contiguous run of input floats: in NHWC with a zero border, the `kw`
//! horizontally adjacent pixels of one kernel row are `kw * C` consecutive floats, so a 3x3
//! convolution has three taps of `3 * C` floats and a 1x1 convolution one tap of `C` floats.
//! No im2col copy is made: the micro-kernel reads input rows in place through per-pixel offsets
//! ([`PixelMap`]), so strides and borders cost nothing.
//!
//! Why it exists: candle's CPU convolution makes an im2col copy and NCHW transposes, and runs
//! bias, residual add and activation as separate passes; this kernel does none of that.
//!
//! Weights are packed once into 16-column panels, split into depth blocks that fit the L2 cache.
//! A 6x16 register tile accumulates over one depth block; the first block starts from the bias
//! plus the residual, the last applies the activation (ReLU or ReLU6), so bias, residual add
//! and activation need no extra pass over memory ([`pack`] lays the weights out, [`tile`] holds
//! the micro-kernels). Work is split over row chunks and panel groups with rayon.
//!
//! The f32 micro-kernel has an AVX2+FMA version on 16-column panels, an AVX-512 one (a 12x32
//! tile) on 32-column panels ([`WeightFormat::F32Wide`]), chosen at run time from what the CPU
//! has (see [`KernelKind`]), and portable ones; all compute the same sums in the same order up
//! to fused rounding. With bf16 weights ([`WeightFormat::Bf16`]) the input is a bf16 copy of the
//! map ([`GemmInput::Bf16`]) and an 8x32 tile multiplies pairs of values with AVX-512 BF16
//! ([`tile_bf16`]); tasks, blocks and the epilogue are the same.

mod pack;
mod tile;
mod tile_bf16;

use rayon::prelude::*;

pub use self::pack::{AlignedBuf, PackedWeights, WeightFormat};
use self::tile::{f32_tile, f32_wide_tile, run_edge_tile, Init, Tile, TileFn};
pub use self::tile::{PANEL, PANEL_WIDE, TILE_ROWS, TILE_ROWS_WIDE};
use self::tile_bf16::bf16_tile;
pub use self::tile_bf16::{PANEL_BF16, TILE_ROWS_BF16};
use super::activation::Activation;
use super::isa::KernelKind;
use super::layout::PixelMap;

/// Bytes of packed weights one task keeps hot.
const PANEL_GROUP_BYTES: usize = 192 * 1024;

/// The input map a GEMM reads: f32 for f32 weights, bf16 bits for bf16 weights.
#[derive(Clone, Copy)]
pub enum GemmInput<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl GemmInput<'_> {
    fn len(&self) -> usize {
        match self {
            GemmInput::F32(x) => x.len(),
            GemmInput::Bf16(x) => x.len(),
        }
    }
}

/// One convolution as an implicit GEMM (see the module docs).
pub struct ConvGemm<'a> {
    pub input: GemmInput<'a>,
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

impl<'a> ConvGemm<'a> {
    /// A plain matrix product: `rows` rows of `input` (each `weights.tap_len()` values, packed
    /// one after another) times the one-tap `weights`, into `rows` rows of
    /// `weights.out_channels()` values; no residual, no activation. A 1x1 convolution over a
    /// one-row image of `rows` pixels.
    pub fn matrix(input: GemmInput<'a>, rows: usize, weights: &'a PackedWeights) -> Self {
        let map = |step: usize| PixelMap {
            images: 1,
            height: 1,
            width: rows,
            base: 0,
            image_step: 0,
            row_step: 0,
            col_step: step,
        };
        ConvGemm {
            input,
            input_map: map(weights.tap_len()),
            tap_offsets: &[0],
            weights,
            residual: None,
            activation: Activation::Identity,
            output_map: map(weights.out_channels()),
        }
    }
}

impl ConvGemm<'_> {
    /// Runs the convolution into `output`; when `residual` is set it is read from `output`
    /// itself (in place: each element is read before its own position is written, by the same
    /// task). Panics if any map reaches outside its buffer, or if the input's precision is not
    /// the weights'.
    pub fn run(&self, output: &mut [f32], kernel: KernelKind) {
        self.run_on(output, kernel, true)
    }

    /// As [`ConvGemm::run`], all of it on the calling thread: for callers that already spread
    /// many small GEMMs over the threads themselves (the Winograd convolution's 36 products).
    pub fn run_on_this_thread(&self, output: &mut [f32], kernel: KernelKind) {
        self.run_on(output, kernel, false)
    }

    fn run_on(&self, output: &mut [f32], kernel: KernelKind, parallel: bool) {
        let w = self.weights;
        assert_eq!(self.tap_offsets.len(), w.taps, "tap count");
        let m = self.output_map.pixels();
        assert_eq!(self.input_map.pixels(), m, "input and output grids differ");
        if m == 0 {
            return;
        }
        let max_tap = self.tap_offsets.iter().copied().max().unwrap_or(0);
        assert!(
            self.input_map.last_offset() + max_tap + w.tap_read_len() <= self.input.len(),
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
        match (self.input, w.format) {
            (GemmInput::F32(x), WeightFormat::F32) => self.run_with::<f32, TILE_ROWS, PANEL>(
                x,
                output,
                parallel,
                f32_tile(kernel),
                |b, p| w.block_panel_f32(b, p),
            ),
            (GemmInput::F32(x), WeightFormat::F32Wide) => self
                .run_with::<f32, TILE_ROWS_WIDE, PANEL_WIDE>(
                    x,
                    output,
                    parallel,
                    f32_wide_tile(kernel),
                    |b, p| w.block_panel_f32(b, p),
                ),
            (GemmInput::Bf16(x), WeightFormat::Bf16) => self
                .run_with::<u16, TILE_ROWS_BF16, PANEL_BF16>(
                    x,
                    output,
                    parallel,
                    bf16_tile(kernel),
                    |b, p| w.block_panel_bf16(b, p),
                ),
            (_, format) => panic!("the input's precision is not the weights' ({format:?})"),
        }
    }

    /// The tasks over `ROWS x P` tiles of element `E` with micro-kernel `tile`; `panel(b, p)`
    /// is panel `p` of depth block `b`.
    fn run_with<E: Copy + Sync, const ROWS: usize, const P: usize>(
        &self,
        input: &[E],
        output: &mut [f32],
        parallel: bool,
        tile: TileFn<E, ROWS>,
        panel: impl Fn(&pack::DepthBlock, usize) -> *const E + Sync,
    ) {
        let w = self.weights;
        let m = self.output_map.pixels();
        // Tasks: row chunks x panel groups, enough of them for load balance.
        let max_panel = w
            .blocks
            .iter()
            .map(|b| b.panel_len(w.format))
            .max()
            .unwrap_or(1);
        let group =
            (PANEL_GROUP_BYTES / (max_panel * std::mem::size_of::<E>()).max(1)).clamp(1, w.panels);
        let groups = w.panels.div_ceil(group);
        let threads = if parallel {
            rayon::current_num_threads().max(1)
        } else {
            1
        };
        let want_tasks = threads * 4;
        let tiles = m.div_ceil(ROWS);
        let row_chunks = want_tasks.div_ceil(groups).clamp(1, tiles);
        let tiles_per_chunk = tiles.div_ceil(row_chunks);
        let row_chunks = tiles.div_ceil(tiles_per_chunk);
        let input = SendPtr(input.as_ptr());
        let out = SendPtr(output.as_mut_ptr());
        let task = |t: usize| {
            let (chunk, g) = (t / groups, t % groups);
            let rows =
                chunk * tiles_per_chunk * ROWS..((chunk + 1) * tiles_per_chunk * ROWS).min(m);
            let panels = g * group..((g + 1) * group).min(w.panels);
            let (input, out) = (input, out);
            // SAFETY: bounds were checked in `run`; tasks write disjoint (rows, panels) regions.
            unsafe { self.task::<E, ROWS, P>(input.0, out.0, rows, panels, tile, &panel) };
        };
        let tasks = row_chunks * groups;
        if tasks == 1 || threads == 1 {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }

    unsafe fn task<E: Copy, const ROWS: usize, const P: usize>(
        &self,
        input: *const E,
        out: *mut f32,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        tile_fn: TileFn<E, ROWS>,
        panel: &impl Fn(&pack::DepthBlock, usize) -> *const E,
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
                let valid_rows = ROWS.min(rows.end - r);
                let mut a_rows = [input; ROWS];
                let mut d_rows = [out; ROWS];
                let mut res_rows = [out as *const f32; ROWS];
                for i in 0..ROWS {
                    let pix = r - rows.start + i.min(valid_rows - 1);
                    a_rows[i] = input.add(a_offsets[pix]);
                    d_rows[i] = out.add(d_offsets[pix]);
                    if let Some(ro) = &r_offsets {
                        res_rows[i] = out.add(ro[pix]);
                    }
                }
                for p in panels.clone() {
                    let col = p * P;
                    let valid_cols = P.min(w.n - col);
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
                        b: panel(b, p),
                        init,
                        activation: if bi == last_block {
                            self.activation
                        } else {
                            Activation::Identity
                        },
                    };
                    let mut d = [std::ptr::null_mut(); ROWS];
                    let mut res = [std::ptr::null(); ROWS];
                    for i in 0..ROWS {
                        d[i] = d_rows[i].add(col);
                        res[i] = res_rows[i].add(col);
                    }
                    if valid_rows == ROWS && valid_cols == P {
                        tile_fn(&tile, &d, &res);
                    } else {
                        run_edge_tile::<E, ROWS, P>(
                            tile_fn, &tile, &d, &res, valid_rows, valid_cols,
                        );
                    }
                }
                r += ROWS;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::lcg;

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

    /// Convolution through ConvGemm with the input copied into a zero border of `pad`, weights
    /// packed in `format` (and the input converted to bf16 for bf16 weights).
    #[allow(clippy::too_many_arguments)]
    fn gemm_conv(
        format: WeightFormat,
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
        let packed = PackedWeights::pack_as(format, &wm, k, k * c, co, &bias);
        // One value past the map: an odd run's last pair reads it (against a zero weight).
        let mut xb = vec![0u16; xp.len() + 1];
        crate::kernels::bf16::to_bf16(&xp, &mut xb);
        let input = match format {
            WeightFormat::F32 | WeightFormat::F32Wide => GemmInput::F32(&xp),
            WeightFormat::Bf16 => GemmInput::Bf16(&xb),
        };
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
            input,
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
            for (&kernel, format) in kernels
                .iter()
                .flat_map(|k| [(k, WeightFormat::F32), (k, WeightFormat::F32Wide)])
            {
                let res = Some(res.as_slice());
                for (residual, activation) in [
                    (None, Activation::Identity),
                    (res, Activation::Relu),
                    (None, Activation::Relu6),
                    (res, Activation::Relu6),
                ] {
                    let got = gemm_conv(
                        format,
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
                            "{kernel:?} {format:?} case {:?} [{i}]: {} vs {v}",
                            (n, h, w, c, co, k, stride, pad),
                            got[i]
                        );
                    }
                }
            }
        }
    }

    /// The bf16 GEMM on odd shapes (1, 7 and 13 channels, batch 1 and 3, odd runs, edge tiles
    /// in rows and columns): the AVX-512 tile against the portable emulation (the same sums up
    /// to summation order), and both against a direct convolution of the bf16-rounded values
    /// in f64 (only f32 summation error left) and of the unrounded ones (bf16's own error).
    #[test]
    fn bf16_gemm_matches_direct_convolution_of_rounded_values() {
        use crate::kernels::bf16::{round, widen};
        let mut seed = 11u64;
        let native = crate::kernels::bf16::native();
        eprintln!("AVX-512 BF16 tile checked: {native}");
        // (n, h, w, c, co, k, stride, pad)
        let cases = [
            (1, 5, 6, 1, 3, 3, 1, 1),
            (3, 7, 5, 7, 33, 3, 2, 1),
            (1, 9, 9, 13, 40, 1, 1, 0),
            (3, 4, 6, 13, 17, 3, 1, 1),
            (1, 11, 10, 3, 64, 7, 2, 3),
            (1, 6, 5, 1000, 31, 1, 2, 0),
            (1, 5, 5, 301, 70, 3, 1, 1),
        ];
        for &(n, h, w, c, co, k, stride, pad) in &cases {
            let shape = (n, h, w, c, co, k, stride, pad);
            let x: Vec<f32> = (0..n * h * w * c).map(|_| lcg(&mut seed)).collect();
            let wt: Vec<f32> = (0..co * c * k * k).map(|_| lcg(&mut seed)).collect();
            let xr: Vec<f32> = x.iter().map(|&v| widen(round(v))).collect();
            let wr: Vec<f32> = wt.iter().map(|&v| widen(round(v))).collect();
            let (exact, ho, wo) = naive_conv(&x, (n, h, w, c), &wt, co, k, stride, pad);
            let (rounded, ..) = naive_conv(&xr, (n, h, w, c), &wr, co, k, stride, pad);
            // |x| * |w| summed: the scale of each sum's rounding error.
            let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            let wa: Vec<f32> = wt.iter().map(|v| v.abs()).collect();
            let (magnitude, ..) = naive_conv(&xa, (n, h, w, c), &wa, co, k, stride, pad);
            let res: Vec<f32> = (0..n * ho * wo * co).map(|_| lcg(&mut seed)).collect();
            for (residual, activation) in [
                (None, Activation::Identity),
                (Some(&res[..]), Activation::Relu6),
            ] {
                let run = |kernel| {
                    gemm_conv(
                        WeightFormat::Bf16,
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
                    )
                };
                let portable = run(KernelKind::Portable);
                let fast = run(KernelKind::detect());
                for i in 0..exact.len() {
                    let epilogue = |v: f32| {
                        let v = v + (i % co) as f32 * 0.01 + residual.map_or(0.0, |r| r[i]);
                        activation.apply(v)
                    };
                    let scale = magnitude[i] + 1.0;
                    let want = epilogue(rounded[i]);
                    for (name, got) in [("portable", portable[i]), ("fast", fast[i])] {
                        assert!(
                            (got - want).abs() <= 1e-5 * scale,
                            "{name} {shape:?} [{i}]: {got} vs rounded {want}"
                        );
                    }
                    assert!(
                        (fast[i] - portable[i]).abs() <= 1e-5 * scale,
                        "{shape:?} [{i}]: fast {} vs portable {}",
                        fast[i],
                        portable[i]
                    );
                    // Each operand is within 2^-9 relative of its value.
                    let unrounded = epilogue(exact[i]);
                    assert!(
                        (fast[i] - unrounded).abs() <= 2.0 * 2f32.powi(-9) * scale,
                        "{shape:?} [{i}]: {} vs f32 {unrounded}",
                        fast[i]
                    );
                }
            }
        }
    }
}
