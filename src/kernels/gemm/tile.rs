//! The GEMM's f32 register tiles: `TILE_ROWS` output pixels by `PANEL` output channels,
//! accumulated over one depth block, started from the bias (plus the residual) or from the
//! previous block's sums, and finished with the activation: a portable version and an
//! AVX2+FMA one; and the wide tile, `TILE_ROWS_WIDE` pixels by `PANEL_WIDE` channels, for
//! AVX-512 (and its portable check). The scratch tile for the edges of the output serves every
//! tile, the bf16 ones of [`super::tile_bf16`] too.

use crate::kernels::activation::Activation;
use crate::kernels::isa::KernelKind;

/// Output rows (pixels) per register tile.
pub const TILE_ROWS: usize = 6;
/// Output columns (channels) per register tile and weight panel.
pub const PANEL: usize = 16;
/// Output rows per AVX-512 register tile.
pub const TILE_ROWS_WIDE: usize = 12;
/// Output columns per AVX-512 register tile and weight panel: two 16-float vectors.
pub const PANEL_WIDE: usize = 32;

/// How a tile's accumulators start.
#[derive(Clone, Copy)]
pub(super) enum Init {
    /// From the bias (PANEL floats), plus the residual rows when `residual`.
    Bias { bias: *const f32, residual: bool },
    /// From the destination (a later depth block).
    Accumulate,
}

/// One register tile's work: `ROWS` input rows of element `E` (f32, or bf16 bits) against one
/// panel of weights of the same element.
pub(super) struct Tile<'a, E, const ROWS: usize> {
    pub(super) a_rows: &'a [*const E; ROWS],
    /// Offsets (from each row's start) of the runs of `k_len` values to multiply.
    pub(super) taps: &'a [usize],
    pub(super) k_len: usize,
    /// The panel: `taps.len() * k_len` depth steps (f32) or pairs of them (bf16).
    pub(super) b: *const E,
    pub(super) init: Init,
    pub(super) activation: Activation,
}

/// A full tile's micro-kernel: the tile, its destination rows, its residual rows.
pub(super) type TileFn<E, const ROWS: usize> =
    unsafe fn(&Tile<E, ROWS>, &[*mut f32; ROWS], &[*const f32; ROWS]);

/// The f32 micro-kernel for `kernel`, on 16-column panels.
pub(super) fn f32_tile(kernel: KernelKind) -> TileFn<f32, TILE_ROWS> {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2Fma | KernelKind::Avx512 => avx2::tile,
        _ => portable_tile::<TILE_ROWS, PANEL>,
    }
}

/// The f32 micro-kernel for `kernel`, on 32-column panels: AVX-512's, or the portable one.
pub(super) fn f32_wide_tile(kernel: KernelKind) -> TileFn<f32, TILE_ROWS_WIDE> {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512 => avx512::tile,
        _ => portable_tile::<TILE_ROWS_WIDE, PANEL_WIDE>,
    }
}

/// A tile with fewer than `ROWS` rows or `P` columns: run it on a scratch tile.
pub(super) unsafe fn run_edge_tile<E, const ROWS: usize, const P: usize>(
    run: TileFn<E, ROWS>,
    tile: &Tile<E, ROWS>,
    d: &[*mut f32; ROWS],
    res: &[*const f32; ROWS],
    valid_rows: usize,
    valid_cols: usize,
) {
    let mut dst = [[0f32; P]; ROWS];
    let mut resid = [[0f32; P]; ROWS];
    for i in 0..valid_rows {
        for j in 0..valid_cols {
            dst[i][j] = *d[i].add(j);
            resid[i][j] = *res[i].add(j);
        }
    }
    let mut dp = [std::ptr::null_mut(); ROWS];
    let mut rp = [std::ptr::null(); ROWS];
    for i in 0..ROWS {
        dp[i] = dst[i].as_mut_ptr();
        rp[i] = resid[i].as_ptr();
    }
    run(tile, &dp, &rp);
    for i in 0..valid_rows {
        std::ptr::copy_nonoverlapping(dst[i].as_ptr(), d[i], valid_cols);
    }
}

/// A portable tile's accumulators as `init` starts them.
pub(super) unsafe fn portable_start<const ROWS: usize, const P: usize>(
    init: Init,
    d: &[*mut f32; ROWS],
    res: &[*const f32; ROWS],
) -> [[f32; P]; ROWS] {
    let mut acc = [[0f32; P]; ROWS];
    match init {
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
    acc
}

/// Stores a portable tile's sums through `activation`.
pub(super) unsafe fn portable_finish<const ROWS: usize, const P: usize>(
    acc: &[[f32; P]; ROWS],
    activation: Activation,
    d: &[*mut f32; ROWS],
) {
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            *d[i].add(j) = activation.apply(v);
        }
    }
}

unsafe fn portable_tile<const ROWS: usize, const P: usize>(
    tile: &Tile<f32, ROWS>,
    d: &[*mut f32; ROWS],
    res: &[*const f32; ROWS],
) {
    let mut acc = portable_start::<ROWS, P>(tile.init, d, res);
    let mut b = tile.b;
    for &t in tile.taps {
        for k in 0..tile.k_len {
            let bk = &*(b as *const [f32; P]);
            for (i, row) in acc.iter_mut().enumerate() {
                let a = *tile.a_rows[i].add(t + k);
                for (v, &bv) in row.iter_mut().zip(bk) {
                    *v += a * bv;
                }
            }
            b = b.add(P);
        }
    }
    portable_finish(&acc, tile.activation, d);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Init, Tile, PANEL, TILE_ROWS};
    use crate::kernels::activation;
    use std::arch::x86_64::*;

    /// The 6x16 tile: twelve 8-float accumulators, two weight vectors, one broadcast.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        tile: &Tile<f32, TILE_ROWS>,
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
        for v in c.iter_mut() {
            *v = activation::avx2::apply(*v, tile.activation);
        }
        for i in 0..TILE_ROWS {
            _mm256_storeu_ps(d[i], c[2 * i]);
            _mm256_storeu_ps(d[i].add(8), c[2 * i + 1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{Init, Tile, PANEL_WIDE, TILE_ROWS_WIDE};
    use crate::kernels::activation::Activation;
    use std::arch::x86_64::*;

    /// A 32-column tile's accumulators (two vectors per row) as `init` starts them.
    #[inline(always)]
    pub(in crate::kernels::gemm) unsafe fn start<const ROWS: usize>(
        init: Init,
        d: &[*mut f32; ROWS],
        res: &[*const f32; ROWS],
    ) -> [[__m512; 2]; ROWS] {
        let mut c = [[_mm512_setzero_ps(); 2]; ROWS];
        match init {
            Init::Bias { bias, residual } => {
                let b0 = _mm512_loadu_ps(bias);
                let b1 = _mm512_loadu_ps(bias.add(16));
                for i in 0..ROWS {
                    if residual {
                        c[i][0] = _mm512_add_ps(b0, _mm512_loadu_ps(res[i]));
                        c[i][1] = _mm512_add_ps(b1, _mm512_loadu_ps(res[i].add(16)));
                    } else {
                        c[i] = [b0, b1];
                    }
                }
            }
            Init::Accumulate => {
                for i in 0..ROWS {
                    c[i][0] = _mm512_loadu_ps(d[i]);
                    c[i][1] = _mm512_loadu_ps(d[i].add(16));
                }
            }
        }
        c
    }

    /// Stores a 32-column tile's sums through `activation`.
    #[inline(always)]
    pub(in crate::kernels::gemm) unsafe fn finish<const ROWS: usize>(
        c: &[[__m512; 2]; ROWS],
        activation: Activation,
        d: &[*mut f32; ROWS],
    ) {
        let activate = |v: __m512| match activation {
            Activation::Identity => v,
            Activation::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
            Activation::Relu6 => {
                _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(6.0))
            }
        };
        for i in 0..ROWS {
            _mm512_storeu_ps(d[i], activate(c[i][0]));
            _mm512_storeu_ps(d[i].add(16), activate(c[i][1]));
        }
    }

    /// The 12x32 tile: twenty-four 16-float accumulators, two weight vectors, one broadcast
    /// per row.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        tile: &Tile<f32, TILE_ROWS_WIDE>,
        d: &[*mut f32; TILE_ROWS_WIDE],
        res: &[*const f32; TILE_ROWS_WIDE],
    ) {
        let mut c = start(tile.init, d, res);
        let mut b = tile.b;
        for &t in tile.taps {
            // In bounds: the GEMM checked every row's runs against the input.
            let a = tile.a_rows.map(|row| row.wrapping_add(t));
            for k in 0..tile.k_len {
                let w0 = _mm512_loadu_ps(b);
                let w1 = _mm512_loadu_ps(b.add(16));
                for i in 0..TILE_ROWS_WIDE {
                    let x = _mm512_set1_ps(*a[i].add(k));
                    c[i][0] = _mm512_fmadd_ps(x, w0, c[i][0]);
                    c[i][1] = _mm512_fmadd_ps(x, w1, c[i][1]);
                }
                b = b.add(PANEL_WIDE);
            }
        }
        finish(&c, tile.activation, d);
    }
}
