//! A 3x3 stride-1 convolution (padding 1) by Winograd's minimal filtering F(4x4, 3x3): every
//! 4x4 block of output pixels comes from the 6x6 input window around it through 36
//! elementwise products in a transformed space, instead of 144 (16 pixels x 9 taps), so the
//! multiplications drop by a factor of 4.
//!
//! Why it exists: ResNet's bottleneck blocks spend about half the encoder's work in their 3x3
//! convolutions, and the implicit GEMM already runs near the machine's FMA rate, so doing less
//! work is the way left to go faster. The products themselves are 36 ordinary GEMMs (tiles x
//! input channels, times input channels x output channels), run by [`super::gemm`]'s packed
//! micro-kernels one per thread; the transforms around them are a small fraction of the work.
//!
//! The transforms are Lavin and Gray's (interpolation points 0, 1, -1, 2, -2):
//! `Y = A^T [(G g G^T) * (B^T d B)] A`. The filter transform `G g G^T` is done once, when the
//! convolution is built, on the BatchNorm-folded weights. The results equal the direct
//! convolution's up to float rounding: the tests hold them to a direct convolution in f64
//! within `1e-5` of the sum of absolute products, a few times the direct GEMM's own error.
//!
//! The planes cost 4x the direct weights' memory (36 values per input/output channel pair
//! against 9), and reading them is all the work when few tiles share them: the engine keeps
//! the direct weights too and takes this path only from [`WinogradConv::MIN_TILES`] tiles on,
//! and only for [`WinogradConv::MIN_CHANNELS`] input channels or more (below that the
//! transforms cost about what the products save).

use std::cell::RefCell;

use rayon::prelude::*;

use super::activation::Activation;
use super::gemm::{ConvGemm, GemmInput, PackedWeights, WeightFormat, TILE_ROWS_WIDE};
use super::isa::KernelKind;
use super::layout::Grid;

/// Output pixels per tile side, and the input window's side.
const M: usize = 4;
const WINDOW: usize = 6;
/// Points of the transformed tile: one GEMM each.
const POINTS: usize = WINDOW * WINDOW;
/// Channels the transforms handle at once (one AVX-512 vector).
const LANES: usize = 16;
/// Transformed input and products one chunk of tiles keeps in memory (both together), at
/// least: each chunk reads all 36 planes of weights (4x the direct weights, mostly from memory
/// in a whole network), so a chunk may grow to twice the planes' size, which keeps the weight
/// traffic below the maps' (ResNet's 256-channel layer: one chunk up to batch 16).
const CHUNK_BYTES: usize = 6 << 20;

/// `G`, the filter transform (in f64: done once, at build time).
const G: [[f64; 3]; WINDOW] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

thread_local! {
    /// The transformed inputs and the products of one chunk, kept from call to call.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A 3x3, stride 1, padding 1 convolution in Winograd form: 36 packed `(c_in, c_out)` planes
/// and the bias the output transform adds.
#[derive(Debug, Clone)]
pub struct WinogradConv {
    planes: Vec<PackedWeights>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

#[derive(Clone, Copy)]
struct SendPtr<T>(T);
// SAFETY: each parallel task writes a disjoint region (its tiles, or its plane) of a buffer
// that outlives the loop.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T: Copy> SendPtr<T> {
    /// The pointer (a method, so that closures capture the wrapper and not its field).
    fn get(self) -> T {
        self.0
    }
}

impl WinogradConv {
    /// Below this many tiles (one 16x16 map's worth) the direct GEMM is faster: the planes'
    /// 4x larger weights are read for too few products (measured on ResNet's 512-channel
    /// layer at 8x8, 4 tiles an image).
    pub const MIN_TILES: usize = 16;

    /// Below this many input channels the transforms cost about what the products save
    /// (measured on ResNet's 64-channel layer).
    pub const MIN_CHANNELS: usize = 128;

    /// From `(c_out, c_in, 3, 3)` weights (already scaled, as the direct convolution's) and the
    /// bias, the planes packed in `format` (f32 only). Panics when the sizes disagree or the
    /// format is bf16.
    pub fn fold(
        format: WeightFormat,
        weight: &[f32],
        (c_out, c_in): (usize, usize),
        bias: &[f32],
    ) -> Self {
        assert_ne!(format, WeightFormat::Bf16, "Winograd planes are f32");
        assert_eq!(weight.len(), c_out * c_in * 9, "weight size");
        assert_eq!(bias.len(), c_out, "bias size");
        // The filters as rows of input channels ([ci][o][9]), so that each plane's rows read
        // contiguous filters; then each plane p = (i, j) of G g G^T is one 9-term sum per
        // filter, with coefficients G[i][a] G[j][b] (products in f64), planes built and packed
        // in parallel (this is most of a model's load time otherwise).
        let mut by_input = vec![0f32; weight.len()];
        for (o, filters) in weight.chunks_exact(c_in * 9).enumerate() {
            for (ci, filter) in filters.chunks_exact(9).enumerate() {
                by_input[(ci * c_out + o) * 9..][..9].copy_from_slice(filter);
            }
        }
        let zeros = vec![0f32; c_out];
        let planes = (0..POINTS)
            .into_par_iter()
            .map(|p| {
                let (i, j) = (p / WINDOW, p % WINDOW);
                let coef: [f32; 9] = std::array::from_fn(|ab| (G[i][ab / 3] * G[j][ab % 3]) as f32);
                let mut plane = vec![0f32; c_in * c_out];
                for (v, g) in plane.iter_mut().zip(by_input.chunks_exact(9)) {
                    *v = g.iter().zip(&coef).map(|(g, c)| g * c).sum();
                }
                PackedWeights::pack_as(format, &plane, 1, c_in, c_out, &zeros)
            })
            .collect();
        WinogradConv {
            planes,
            bias: bias.to_vec(),
            c_in,
            c_out,
        }
    }

    pub fn c_in(&self) -> usize {
        self.c_in
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Floats held by the planes and the bias.
    pub fn len(&self) -> usize {
        self.planes.iter().map(|p| p.len()).sum::<usize>() + self.bias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 4x4 output tiles covering `out`.
    pub fn tiles(out: Grid) -> usize {
        out.n * out.h.div_ceil(M) * out.w.div_ceil(M)
    }

    /// The convolution of `input` (laid out as `in_grid`, zero border at least 1) into the
    /// interior of `output` (laid out as `out`, the same size with `c_out` channels; its border
    /// is left as it is). With `residual`, the output's current interior is added before the
    /// activation. Panics when the grids disagree.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        input: &[f32],
        in_grid: Grid,
        output: &mut [f32],
        out: Grid,
        residual: bool,
        activation: Activation,
        kernel: KernelKind,
    ) {
        assert_eq!(in_grid.c, self.c_in, "input channels");
        assert!(in_grid.pad >= 1, "input border narrower than the padding");
        assert_eq!(
            (out.n, out.h, out.w, out.c),
            (in_grid.n, in_grid.h, in_grid.w, self.c_out),
            "output grid"
        );
        assert!(input.len() >= in_grid.floats(), "input buffer");
        assert!(output.len() >= out.floats(), "output buffer");
        let tiles = Self::tiles(out);
        if tiles == 0 {
            return;
        }
        // Chunks of whole register tiles (see CHUNK_BYTES for the size).
        let per_tile = POINTS * (self.c_in + self.c_out) * 4;
        let plane_bytes = POINTS * self.c_in * self.c_out * 4;
        let chunk = (CHUNK_BYTES.max(2 * plane_bytes) / per_tile / TILE_ROWS_WIDE * TILE_ROWS_WIDE)
            .max(2 * TILE_ROWS_WIDE);
        let need = POINTS * chunk.min(tiles) * (self.c_in + self.c_out);
        let mut run_chunks = |scratch: &mut Vec<f32>| {
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            let mut start = 0;
            while start < tiles {
                let count = chunk.min(tiles - start);
                let (v, m) = scratch.split_at_mut(POINTS * count * self.c_in);
                let tiles = start..start + count;
                self.transform_input(input, in_grid, tiles.clone(), v, kernel);
                self.multiply(v, m, count, kernel);
                self.transform_output(m, count, tiles, output, out, residual, activation, kernel);
                start += count;
            }
        };
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => run_chunks(&mut scratch),
            // Re-entered on this thread (a caller that runs encoders inside rayon tasks): a
            // buffer of its own.
            Err(_) => run_chunks(&mut Vec::new()),
        });
    }

    /// `(image, tile row, tile column)` of tile `t` of an `h x w` output.
    fn tile_at(t: usize, (h, w): (usize, usize)) -> (usize, usize, usize) {
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        (t / (th * tw), (t / tw) % th, t % tw)
    }

    /// `B^T d B` of every tile in `tiles` (windows of `input`, laid out as `g`), into `v` as 36
    /// planes of `tiles.len() x c_in`.
    fn transform_input(
        &self,
        input: &[f32],
        g: Grid,
        tiles: std::ops::Range<usize>,
        v: &mut [f32],
        kernel: KernelKind,
    ) {
        let (first, plane) = (tiles.start, tiles.len() * self.c_in);
        let c = self.c_in;
        let v_ptr = SendPtr(v.as_mut_ptr());
        tiles.into_par_iter().with_min_len(4).for_each(|t| {
            let (b, ty, tx) = Self::tile_at(t, (g.h, g.w));
            // The window's top-left pixel in the stored grid: one above and left of the tile's,
            // in the border of at least 1. Past the stored grid (the bottom and right of tiles
            // that overhang the map) the window reads zeros.
            let (y0, x0) = (ty * M + g.pad - 1, tx * M + g.pad - 1);
            let (rows, cols) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
            let mut window = [None; POINTS];
            for r in 0..WINDOW {
                for s in 0..WINDOW {
                    let (y, x) = (y0 + r, x0 + s);
                    if y < rows && x < cols {
                        window[r * WINDOW + s] = Some(b * g.image_len() + y * g.row_len() + x * c);
                    }
                }
            }
            // SAFETY: row `t - first` of every plane is this task's alone and lies inside `v`
            // (36 planes of `plane` floats); the window offsets lie inside `input`'s grid.
            unsafe {
                let dst = v_ptr.get().add((t - first) * c);
                input_tile(kernel, input, &window, c, dst, plane);
            }
        });
    }

    /// The 36 products: plane `p` of `v` (`count x c_in`) times plane `p` of the weights into
    /// plane `p` of `m` (`count x c_out`), one plane per task.
    fn multiply(&self, v: &[f32], m: &mut [f32], count: usize, kernel: KernelKind) {
        m[..POINTS * count * self.c_out]
            .par_chunks_mut(count * self.c_out)
            .zip(v[..POINTS * count * self.c_in].par_chunks(count * self.c_in))
            .zip(&self.planes)
            .for_each(|((product, transformed), weights)| {
                ConvGemm::matrix(GemmInput::F32(transformed), count, weights)
                    .run_on_this_thread(product, kernel)
            });
    }

    /// `A^T m A` of every tile in `tiles`, plus the bias (and the residual), through the
    /// activation, into the interior of `output` (laid out as `out`).
    #[allow(clippy::too_many_arguments)]
    fn transform_output(
        &self,
        m: &[f32],
        count: usize,
        tiles: std::ops::Range<usize>,
        output: &mut [f32],
        out: Grid,
        residual: bool,
        activation: Activation,
        kernel: KernelKind,
    ) {
        let first = tiles.start;
        let (c, plane) = (self.c_out, count * self.c_out);
        let out_ptr = SendPtr(output.as_mut_ptr());
        let interior = out.interior();
        tiles.into_par_iter().with_min_len(4).for_each(|t| {
            let (b, ty, tx) = Self::tile_at(t, (out.h, out.w));
            let mut pixels = [None; M * M];
            for p in 0..M {
                for q in 0..M {
                    let (y, x) = (ty * M + p, tx * M + q);
                    if y < out.h && x < out.w {
                        pixels[p * M + q] = Some(
                            interior.base
                                + b * interior.image_step
                                + y * interior.row_step
                                + x * interior.col_step,
                        );
                    }
                }
            }
            // SAFETY: the tile's pixels are this task's alone and lie inside `output`'s
            // interior; row `t - first` of every plane lies inside `m`.
            unsafe {
                let src = m.as_ptr().add((t - first) * c);
                output_tile(
                    kernel,
                    src,
                    plane,
                    &pixels,
                    c,
                    &self.bias,
                    residual,
                    activation,
                    out_ptr.get(),
                );
            }
        });
    }
}

/// The 1-D input transform `B^T z` of six vectors of lanes.
#[inline(always)]
fn input_1d(z: [&[f32; LANES]; WINDOW]) -> [[f32; LANES]; WINDOW] {
    let mut o = [[0f32; LANES]; WINDOW];
    for l in 0..LANES {
        let (z0, z1, z2, z3, z4, z5) = (z[0][l], z[1][l], z[2][l], z[3][l], z[4][l], z[5][l]);
        o[0][l] = 4.0 * z0 - 5.0 * z2 + z4;
        o[1][l] = -4.0 * (z1 + z2) + z3 + z4;
        o[2][l] = 4.0 * (z1 - z2) - z3 + z4;
        o[3][l] = 2.0 * (z3 - z1) - z2 + z4;
        o[4][l] = 2.0 * (z1 - z3) - z2 + z4;
        o[5][l] = 4.0 * z1 - 5.0 * z3 + z5;
    }
    o
}

/// The 1-D output transform `A^T z` of six vectors of lanes.
#[inline(always)]
fn output_1d(z: [&[f32; LANES]; WINDOW]) -> [[f32; LANES]; M] {
    let mut o = [[0f32; LANES]; M];
    for l in 0..LANES {
        let (z0, z1, z2, z3, z4, z5) = (z[0][l], z[1][l], z[2][l], z[3][l], z[4][l], z[5][l]);
        let (sum12, diff12) = (z1 + z2, z1 - z2);
        let (sum34, diff34) = (z3 + z4, z3 - z4);
        o[0][l] = z0 + sum12 + sum34;
        o[1][l] = diff12 + 2.0 * diff34;
        o[2][l] = sum12 + 4.0 * sum34;
        o[3][l] = diff12 + 8.0 * diff34 + z5;
    }
    o
}

/// `lanes` values from `src` (the rest zero): one vector load when the block is whole, which
/// a variable-length copy would turn into a call to `memcpy`.
#[inline(always)]
unsafe fn load_lanes(src: *const f32, lanes: usize) -> [f32; LANES] {
    if lanes == LANES {
        std::ptr::read_unaligned(src as *const [f32; LANES])
    } else {
        let mut v = [0f32; LANES];
        std::ptr::copy_nonoverlapping(src, v.as_mut_ptr(), lanes);
        v
    }
}

/// The first `lanes` values of `v` to `dst` (as [`load_lanes`], one vector store when whole).
#[inline(always)]
unsafe fn store_lanes(dst: *mut f32, v: &[f32; LANES], lanes: usize) {
    if lanes == LANES {
        std::ptr::write_unaligned(dst as *mut [f32; LANES], *v);
    } else {
        std::ptr::copy_nonoverlapping(v.as_ptr(), dst, lanes);
    }
}

/// One tile's input transform for every channel, lanes at a time: the window's 36 pixels
/// (`None` reads zeros) to row 0 of each of the 36 planes at `dst + p * plane`.
#[inline(always)]
unsafe fn input_tile_body(
    input: &[f32],
    window: &[Option<usize>; POINTS],
    c: usize,
    dst: *mut f32,
    plane: usize,
) {
    let mut c0 = 0;
    while c0 < c {
        let lanes = LANES.min(c - c0);
        let mut d = [[0f32; LANES]; POINTS];
        for (values, at) in d.iter_mut().zip(window) {
            if let Some(at) = at {
                debug_assert!(at + c0 + lanes <= input.len());
                *values = load_lanes(input.as_ptr().add(at + c0), lanes);
            }
        }
        // Columns, then rows: t = B^T d, then V = t B.
        let mut t = [[0f32; LANES]; POINTS];
        for s in 0..WINDOW {
            let col = input_1d(std::array::from_fn(|r| &d[r * WINDOW + s]));
            for (i, values) in col.into_iter().enumerate() {
                t[i * WINDOW + s] = values;
            }
        }
        for i in 0..WINDOW {
            let row = input_1d(std::array::from_fn(|s| &t[i * WINDOW + s]));
            for (j, values) in row.iter().enumerate() {
                store_lanes(dst.add((i * WINDOW + j) * plane + c0), values, lanes);
            }
        }
        c0 += lanes;
    }
}

/// One tile's output transform for every channel, lanes at a time: row 0 of the 36 planes at
/// `src + p * plane` to the tile's pixels (`None`: past the map's edge, dropped), bias, the
/// residual already there, and the activation applied.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_tile_body(
    src: *const f32,
    plane: usize,
    pixels: &[Option<usize>; M * M],
    c: usize,
    bias: &[f32],
    residual: bool,
    activation: Activation,
    output: *mut f32,
) {
    let mut c0 = 0;
    while c0 < c {
        let lanes = LANES.min(c - c0);
        let mut mv = [[0f32; LANES]; POINTS];
        for (p, values) in mv.iter_mut().enumerate() {
            *values = load_lanes(src.add(p * plane + c0), lanes);
        }
        let b = load_lanes(bias[c0..c0 + lanes].as_ptr(), lanes);
        // Columns, then rows: t = A^T m (4 x 6), then Y = t A (4 x 4).
        let mut t = [[0f32; LANES]; M * WINDOW];
        for j in 0..WINDOW {
            let col = output_1d(std::array::from_fn(|i| &mv[i * WINDOW + j]));
            for (p, values) in col.into_iter().enumerate() {
                t[p * WINDOW + j] = values;
            }
        }
        for p in 0..M {
            let row = output_1d(std::array::from_fn(|j| &t[p * WINDOW + j]));
            for (q, values) in row.iter().enumerate() {
                let Some(at) = pixels[p * M + q] else {
                    continue;
                };
                let dst = output.add(at + c0);
                let mut y = [0f32; LANES];
                for l in 0..LANES {
                    y[l] = values[l] + b[l];
                }
                if residual {
                    let r = load_lanes(dst, lanes);
                    for l in 0..LANES {
                        y[l] += r[l];
                    }
                }
                for v in y.iter_mut() {
                    *v = activation.apply(*v);
                }
                store_lanes(dst, &y, lanes);
            }
        }
        c0 += lanes;
    }
}

/// Defines `unsafe fn $name(kernel, args...)`, which calls `$body(args...)` compiled for the
/// widest vectors `kernel` allows (the transforms are plain loops over lanes, which the
/// compiler vectorises to the target's width).
macro_rules! widest_vectors {
    ($(#[$doc:meta])* fn $name:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(kernel: KernelKind, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match kernel {
                    KernelKind::Avx512 => return avx512($($arg),*),
                    KernelKind::Avx2Fma => return avx2($($arg),*),
                    KernelKind::Portable => {}
                }
            }
            $body($($arg),*)
        }
    };
}

widest_vectors!(
    /// [`input_tile_body`] compiled for the widest vectors `kernel` allows.
    fn input_tile => input_tile_body(
        input: &[f32],
        window: &[Option<usize>; POINTS],
        c: usize,
        dst: *mut f32,
        plane: usize,
    )
);

widest_vectors!(
    /// [`output_tile_body`] compiled for the widest vectors `kernel` allows.
    fn output_tile => output_tile_body(
        src: *const f32,
        plane: usize,
        pixels: &[Option<usize>; M * M],
        c: usize,
        bias: &[f32],
        residual: bool,
        activation: Activation,
        output: *mut f32,
    )
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::lcg;

    /// A 3x3, padding-1 convolution in f64 of an unpadded `(n, h, w, c)` map, and the sum of
    /// the absolute products of each output (the scale of its rounding error).
    fn direct(
        x: &[f32],
        (n, h, w, c): (usize, usize, usize, usize),
        wt: &[f32],
        co: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; n * h * w * co];
        let mut magnitude = vec![0f64; n * h * w * co];
        for b in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    for o in 0..co {
                        let (mut s, mut a) = (0f64, 0f64);
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (y + ky, xx + kx);
                                if iy < 1 || ix < 1 || iy > h || ix > w {
                                    continue;
                                }
                                for ci in 0..c {
                                    let v = x[((b * h + iy - 1) * w + ix - 1) * c + ci] as f64;
                                    let k = wt[((o * c + ci) * 3 + ky) * 3 + kx] as f64;
                                    s += v * k;
                                    a += (v * k).abs();
                                }
                            }
                        }
                        out[((b * h + y) * w + xx) * co + o] = s;
                        magnitude[((b * h + y) * w + xx) * co + o] = a;
                    }
                }
            }
        }
        (out, magnitude)
    }

    /// Odd shapes (1, 7 and 13 channels, batch 1 and 3, maps that are not a multiple of the
    /// tile, channel counts that are not a multiple of the lanes or the register tile, several
    /// chunks), each kernel and f32 format, with and without a residual, against the direct
    /// convolution in f64; the border of the output must stay as it was.
    #[test]
    fn winograd_matches_direct_convolution_on_odd_shapes() {
        let mut seed = 5u64;
        let mut kernels = vec![KernelKind::Portable];
        if KernelKind::detect().has_avx2() {
            kernels.push(KernelKind::Avx2Fma);
        }
        if KernelKind::detect() == KernelKind::Avx512 {
            kernels.push(KernelKind::Avx512);
        }
        // (n, h, w, c_in, c_out)
        let cases = [
            (1, 5, 6, 1, 3),
            (3, 7, 5, 7, 13),
            (1, 9, 9, 13, 40),
            (3, 4, 4, 16, 33),
            (1, 1, 1, 7, 7),
            (1, 8, 11, 130, 70),
            (3, 40, 36, 130, 70),
        ];
        let mut worst = 0f64;
        for &(n, h, w, ci, co) in &cases {
            let x: Vec<f32> = (0..n * h * w * ci).map(|_| lcg(&mut seed)).collect();
            let wt: Vec<f32> = (0..co * ci * 9).map(|_| lcg(&mut seed)).collect();
            let bias: Vec<f32> = (0..co).map(|_| lcg(&mut seed)).collect();
            let res: Vec<f32> = (0..n * h * w * co).map(|_| lcg(&mut seed)).collect();
            let (want, magnitude) = direct(&x, (n, h, w, ci), &wt, co);
            let in_grid = Grid {
                n,
                h,
                w,
                c: ci,
                pad: 1,
            };
            let mut input = vec![0f32; in_grid.floats()];
            let map = in_grid.interior();
            for (i, pixel) in x.chunks_exact(ci).enumerate() {
                input[map.offset(i)..][..ci].copy_from_slice(pixel);
            }
            let out = in_grid.with(h, w, co);
            let out_map = out.interior();
            for &kernel in &kernels {
                for format in [WeightFormat::F32, WeightFormat::F32Wide] {
                    let conv = WinogradConv::fold(format, &wt, (co, ci), &bias);
                    for (residual, activation) in
                        [(false, Activation::Identity), (true, Activation::Relu)]
                    {
                        let mut output = vec![f32::NAN; out.floats()];
                        for (i, r) in res.chunks_exact(co).enumerate() {
                            output[out_map.offset(i)..][..co].copy_from_slice(r);
                        }
                        conv.run(
                            &input,
                            in_grid,
                            &mut output,
                            out,
                            residual,
                            activation,
                            kernel,
                        );
                        let mut interior = vec![false; output.len()];
                        for i in 0..n * h * w {
                            let at = out_map.offset(i);
                            interior[at..at + co].iter_mut().for_each(|v| *v = true);
                            for o in 0..co {
                                let j = i * co + o;
                                let mut v = want[j] + bias[o] as f64;
                                if residual {
                                    v += res[j] as f64;
                                }
                                let v = activation.apply(v as f32) as f64;
                                let got = output[at + o] as f64;
                                let error = (got - v).abs() / (magnitude[j] + 1.0);
                                worst = worst.max(error);
                                assert!(
                                    error <= 1e-5,
                                    "{kernel:?} {format:?} {:?} residual {residual} [{i}, {o}]: \
                                     {got} vs {v}",
                                    (n, h, w, ci, co)
                                );
                            }
                        }
                        assert!(
                            output
                                .iter()
                                .zip(&interior)
                                .all(|(v, &inside)| inside || v.is_nan()),
                            "the border was written"
                        );
                    }
                }
            }
        }
        eprintln!("largest error relative to the sum of |products|: {worst:.2e}");
    }
}
