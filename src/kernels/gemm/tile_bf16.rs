//! The GEMM's bfloat16 register tiles: `TILE_ROWS_BF16` output pixels by `PANEL_BF16` output
//! channels, inputs and weights in bf16, sums in f32. Each depth step takes a *pair* of input
//! values (one 32-bit broadcast) against a pair of weights per column, as AVX-512 BF16's
//! `vdpbf16ps` does: 16 columns times 2 depth steps per instruction, twice the f32 FMA's work.
//! Start (bias, residual, earlier block) and finish (activation) are the f32 tile's.
//!
//! The portable tile computes what `vdpbf16ps` computes (each bf16 product is exact in f32;
//! the pair's odd product is added first, then the even one), so it is the AVX-512 tile's check
//! in the tests and runs where the CPU lacks the instructions (slowly: see
//! [`crate::kernels::bf16::Precision::parse`]).

use super::tile::{portable_finish, portable_start, Tile, TileFn};
use crate::kernels::bf16::{self, widen};
use crate::kernels::isa::KernelKind;

/// Output rows (pixels) per bf16 register tile.
pub const TILE_ROWS_BF16: usize = 8;
/// Output columns (channels) per bf16 register tile and weight panel: two 16-float vectors.
pub const PANEL_BF16: usize = 32;

/// The bf16 micro-kernel: AVX-512 BF16 where the CPU has it and `kernel` is not the portable
/// one (which the tests ask for as the reference), else the portable emulation.
pub(super) fn bf16_tile(kernel: KernelKind) -> TileFn<u16, TILE_ROWS_BF16> {
    #[cfg(target_arch = "x86_64")]
    if kernel != KernelKind::Portable && bf16::native() {
        return avx512::tile;
    }
    let _ = kernel;
    portable_tile
}

unsafe fn portable_tile(
    tile: &Tile<u16, TILE_ROWS_BF16>,
    d: &[*mut f32; TILE_ROWS_BF16],
    res: &[*const f32; TILE_ROWS_BF16],
) {
    let mut acc = portable_start::<TILE_ROWS_BF16, PANEL_BF16>(tile.init, d, res);
    let pairs = tile.k_len.div_ceil(2);
    let mut b = tile.b;
    for &t in tile.taps {
        for q in 0..pairs {
            let bq = &*(b as *const [u16; 2 * PANEL_BF16]);
            for (i, row) in acc.iter_mut().enumerate() {
                let a0 = widen(*tile.a_rows[i].add(t + 2 * q));
                let a1 = widen(*tile.a_rows[i].add(t + 2 * q + 1));
                for (j, v) in row.iter_mut().enumerate() {
                    *v += a1 * widen(bq[2 * j + 1]);
                    *v += a0 * widen(bq[2 * j]);
                }
            }
            b = b.add(2 * PANEL_BF16);
        }
    }
    portable_finish(&acc, tile.activation, d);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, PANEL_BF16, TILE_ROWS_BF16};
    use crate::kernels::gemm::tile::avx512::{finish, start};
    use std::arch::x86_64::*;

    /// The 8x32 tile: sixteen 16-float accumulators, two weight vectors per pair step, one
    /// 32-bit broadcast per row.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(
        tile: &Tile<u16, TILE_ROWS_BF16>,
        d: &[*mut f32; TILE_ROWS_BF16],
        res: &[*const f32; TILE_ROWS_BF16],
    ) {
        let mut c = start(tile.init, d, res);
        let pairs = tile.k_len.div_ceil(2);
        let mut b = tile.b;
        for &t in tile.taps {
            // In bounds: the GEMM checked every row's runs against the input.
            let a = tile.a_rows.map(|row| row.wrapping_add(t));
            for q in 0..pairs {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const _));
                let w1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(b.add(PANEL_BF16) as *const _));
                for i in 0..TILE_ROWS_BF16 {
                    let pair = (a[i].add(2 * q) as *const i32).read_unaligned();
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    c[i][0] = _mm512_dpbf16_ps(c[i][0], x, w0);
                    c[i][1] = _mm512_dpbf16_ps(c[i][1], x, w1);
                }
                b = b.add(2 * PANEL_BF16);
            }
        }
        finish(&c, tile.activation, d);
    }
}
