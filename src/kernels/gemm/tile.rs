//! The GEMM's register tiles: `TILE_ROWS` output pixels by `PANEL` output channels,
//! accumulated over one depth block, started from the bias (plus the residual) or from the
//! previous block's sums, and finished with the activation. A portable version and an
//! AVX2+FMA one, and the scratch tile for the edges of the output.

use crate::kernels::activation::Activation;
use crate::kernels::isa::KernelKind;

/// Output rows (pixels) per register tile.
pub const TILE_ROWS: usize = 6;
/// Output columns (channels) per register tile and weight panel.
pub const PANEL: usize = 16;

/// How a tile's accumulators start.
#[derive(Clone, Copy)]
pub(super) enum Init {
    /// From the bias (PANEL floats), plus the residual rows when `residual`.
    Bias { bias: *const f32, residual: bool },
    /// From the destination (a later depth block).
    Accumulate,
}

pub(super) struct Tile<'a> {
    pub(super) a_rows: &'a [*const f32; TILE_ROWS],
    /// Offsets (from each row's start) of the runs of `k_len` floats to multiply.
    pub(super) taps: &'a [usize],
    pub(super) k_len: usize,
    /// `taps.len() * k_len` rows of PANEL floats.
    pub(super) b: *const f32,
    pub(super) init: Init,
    pub(super) activation: Activation,
}

/// A tile with fewer than TILE_ROWS rows or PANEL columns: run it on a scratch tile.
pub(super) unsafe fn run_edge_tile(
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
pub(super) unsafe fn run_tile(
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
    use super::{Init, Tile, PANEL, TILE_ROWS};
    use crate::kernels::activation;
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
        for v in c.iter_mut() {
            *v = activation::avx2::apply(*v, tile.activation);
        }
        for i in 0..TILE_ROWS {
            _mm256_storeu_ps(d[i], c[2 * i]);
            _mm256_storeu_ps(d[i].add(8), c[2 * i + 1]);
        }
    }
}
