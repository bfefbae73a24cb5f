//! Pooling on [`Grid`] feature maps: the ResNet stem's max pooling, and PyTorch's
//! `AdaptiveAvgPool2d` that turns the last map into the encoder's `S x S` grid, with the bin
//! matrices both it and the reference path (candle ops) average with.
//!
//! Why here: on the engine's NHWC buffers with their zero border, pooling is one parallel pass
//! that reads the map in place, where candle would first transpose it back to NCHW.

use rayon::prelude::*;

use super::layout::Grid;

/// Max pooling with a `k x k` window and `stride` over `input` (laid out as `in_grid`, whose
/// zero border must be at least `pad`) into the interior of `output` (`out_grid`).
///
/// The border stands in for PyTorch's `-inf` padding, which is exact when every input value
/// is non-negative (the input follows a ReLU).
pub fn max_pool(
    input: &[f32],
    in_grid: Grid,
    k: usize,
    stride: usize,
    pad: usize,
    output: &mut [f32],
    out_grid: Grid,
) {
    assert_eq!(in_grid.c, out_grid.c);
    assert_eq!(in_grid.n, out_grid.n);
    let c = in_grid.c;
    let windows = in_grid.windows(out_grid.h, out_grid.w, stride, pad);
    let in_row = in_grid.row_len();
    let padded_h = out_grid.h + 2 * out_grid.pad;
    let skip = out_grid.pad * c;
    // One task per output row; border rows are left as they are.
    output[..out_grid.floats()]
        .par_chunks_mut(out_grid.row_len())
        .enumerate()
        .for_each(|(i, out_row)| {
            let (n, y) = (i / padded_h, i % padded_h);
            if y < out_grid.pad || y >= out_grid.pad + out_grid.h {
                return;
            }
            let first = (n * out_grid.h + y - out_grid.pad) * out_grid.w;
            for x in 0..out_grid.w {
                let corner = windows.offset(first + x);
                let dst = &mut out_row[skip + x * c..][..c];
                dst.copy_from_slice(&input[corner..][..c]);
                for ky in 0..k {
                    for kx in 0..k {
                        let src = &input[corner + ky * in_row + kx * c..][..c];
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d = if s > *d { s } else { *d };
                        }
                    }
                }
            }
        });
}

/// PyTorch's `AdaptiveAvgPool2d(s)` of the interior of `input` (laid out as `grid`), written
/// into `out` as a dense `(n, s, s, c)` array. `rows` and `cols` are the `(s, h)` and `(s, w)` bin
/// matrices of [`adaptive_pool_matrix`].
pub fn adaptive_avg_pool(
    input: &[f32],
    grid: Grid,
    s: usize,
    rows: &[f32],
    cols: &[f32],
    out: &mut [f32],
) {
    let c = grid.c;
    let map = grid.interior();
    let out = &mut out[..grid.n * s * s * c];
    out.fill(0.0);
    out.par_chunks_mut(s * c).enumerate().for_each(|(ni, dst)| {
        let (n, i) = (ni / s, ni % s);
        for j in 0..s {
            let d = &mut dst[j * c..][..c];
            for a in 0..grid.h {
                let wa = rows[i * grid.h + a];
                if wa == 0.0 {
                    continue;
                }
                for b in 0..grid.w {
                    let wb = cols[j * grid.w + b];
                    if wb == 0.0 {
                        continue;
                    }
                    let weight = wa * wb;
                    let pixel = (n * grid.h + a) * grid.w + b;
                    let src = &input[map.offset(pixel)..][..c];
                    for (o, &v) in d.iter_mut().zip(src) {
                        *o += weight * v;
                    }
                }
            }
        }
    });
}

/// PyTorch's `AdaptiveAvgPool1d` bins as a `(out, in)` averaging matrix: bin `i` spans
/// `floor(i*in/out) .. ceil((i+1)*in/out)`, so bins overlap when `out > in`.
pub fn adaptive_pool_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    for i in 0..output {
        let start = i * input / output;
        let end = ((i + 1) * input).div_ceil(output);
        let weight = 1.0 / (end - start) as f32;
        for j in start..end {
            m[i * input + j] = weight;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::layout::{pack_nchw, zero_border};

    #[test]
    fn packing_borders_and_max_pool() {
        // One image, 2 channels, 3x4 pixels, values >= 0.
        let (h, w, c) = (3, 4, 2);
        let nchw: Vec<f32> = (0..c * h * w).map(|v| v as f32).collect();
        let g = Grid {
            n: 1,
            h,
            w,
            c,
            pad: 1,
        };
        let mut buf = vec![f32::NAN; g.floats()];
        pack_nchw(&nchw, g, &mut buf);
        // Pixel (y=1, x=2) holds channel values 6 and 18.
        let at = g.interior().offset(w + 2);
        assert_eq!(&buf[at..at + 2], &[6.0, 18.0]);
        assert_eq!(buf[0], 0.0);
        buf[0] = 5.0;
        zero_border(&mut buf, g);
        assert_eq!(buf[0], 0.0);
        assert_eq!(buf[at], 6.0);

        // 3x3 stride 2 pad 1: output 2x2.
        let og = g.with(2, 2, c);
        let mut out = vec![f32::NAN; og.floats()];
        zero_border(&mut out, og);
        max_pool(&buf, g, 3, 2, 1, &mut out, og);
        let m = og.interior();
        // Window of output (0,0): rows 0..2, cols 0..2 of the image -> max channel 0 = 5.
        assert_eq!(&out[m.offset(0)..m.offset(0) + 2], &[5.0, 17.0]);
        // Output (1,1): rows 1..3, cols 1..4 -> max = 11.
        assert_eq!(&out[m.offset(3)..m.offset(3) + 2], &[11.0, 23.0]);
    }

    #[test]
    fn average_pool_uses_the_bins() {
        let g = Grid {
            n: 2,
            h: 2,
            w: 2,
            c: 1,
            pad: 1,
        };
        let mut buf = vec![0f32; g.floats()];
        let m = g.interior();
        for i in 0..8 {
            buf[m.offset(i)] = i as f32;
        }
        let bins = adaptive_pool_matrix(2, 1);
        let mut out = vec![f32::NAN; 2];
        adaptive_avg_pool(&buf, g, 1, &bins, &bins, &mut out);
        assert_eq!(out, vec![1.5, 5.5]);
    }

    #[test]
    fn pool_bins_match_pytorch() {
        // 8 -> 14: bins overlap; bin 0 is [0, 1), bin 1 is [0, 2), bin 13 is [7, 8).
        let m = adaptive_pool_matrix(8, 14);
        assert_eq!(&m[0..8], &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&m[8..16], &[0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            &m[13 * 8..14 * 8],
            &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        );
        // 5 -> 3: [0,2), [1,4), [3,5)
        let m = adaptive_pool_matrix(5, 3);
        assert_eq!(
            m,
            vec![
                0.5,
                0.5,
                0.0,
                0.0,
                0.0,
                0.0,
                1.0 / 3.0,
                1.0 / 3.0,
                1.0 / 3.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.5,
                0.5
            ]
        );
    }
}
