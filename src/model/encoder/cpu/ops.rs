//! The non-convolution steps of the CPU engine, on NHWC buffers with a zero border: the layout
//! of a feature map ([`Grid`]), input packing, border clearing, max pooling and adaptive
//! average pooling. (The depthwise convolution has its own module, [`super::depthwise`].)

use rayon::prelude::*;

use super::kernel::PixelMap;

/// An NHWC feature map of `n` images, `h x w` pixels, `c` channels, stored with a zero border
/// of `pad` pixels on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pad: usize,
}

impl Grid {
    /// Floats the stored map takes.
    pub fn floats(&self) -> usize {
        self.n * self.image_len()
    }

    pub fn row_len(&self) -> usize {
        (self.w + 2 * self.pad) * self.c
    }

    pub fn image_len(&self) -> usize {
        (self.h + 2 * self.pad) * self.row_len()
    }

    /// Every pixel of the map.
    pub fn interior(&self) -> PixelMap {
        PixelMap {
            images: self.n,
            height: self.h,
            width: self.w,
            base: self.pad * (self.row_len() + self.c),
            image_step: self.image_len(),
            row_step: self.row_len(),
            col_step: self.c,
        }
    }

    /// The top-left corners of the windows of a convolution with `conv_pad` padding and
    /// `stride`, for an `out_h x out_w` output. The border must be at least `conv_pad`.
    pub fn windows(&self, out_h: usize, out_w: usize, stride: usize, conv_pad: usize) -> PixelMap {
        self.windows_at(out_h, out_w, stride, conv_pad, conv_pad)
    }

    /// As [`Grid::windows`], with padding `top` above and `left` to the left (TensorFlow's
    /// "same" padding is asymmetric); what lies below and to the right comes from the border.
    pub fn windows_at(
        &self,
        out_h: usize,
        out_w: usize,
        stride: usize,
        top: usize,
        left: usize,
    ) -> PixelMap {
        assert!(
            top <= self.pad && left <= self.pad,
            "border narrower than the padding"
        );
        PixelMap {
            images: self.n,
            height: out_h,
            width: out_w,
            base: (self.pad - top) * self.row_len() + (self.pad - left) * self.c,
            image_step: self.image_len(),
            row_step: stride * self.row_len(),
            col_step: stride * self.c,
        }
    }

    /// Offsets of the kernel rows of a `k x k` window from its top-left corner.
    pub fn kernel_rows(&self, k: usize) -> Vec<usize> {
        (0..k).map(|ky| ky * self.row_len()).collect()
    }

    /// With a different pixel size and channel count, same images and border.
    pub fn with(&self, h: usize, w: usize, c: usize) -> Grid {
        Grid { h, w, c, ..*self }
    }
}

/// Grows `buf` to at least `len` floats (never shrinks: buffers are reused across calls).
pub fn ensure_len(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// Sets the border of `grid` in `buf` to zero.
pub fn zero_border(buf: &mut [f32], grid: Grid) {
    if grid.pad == 0 {
        return;
    }
    let row = grid.row_len();
    let edge = grid.pad * grid.c;
    let top = grid.pad * row;
    buf[..grid.floats()]
        .par_chunks_mut(grid.image_len())
        .for_each(|image| {
            image[..top].fill(0.0);
            let bottom = top + grid.h * row;
            image[bottom..].fill(0.0);
            for y in 0..grid.h {
                let r = &mut image[top + y * row..][..row];
                r[..edge].fill(0.0);
                r[row - edge..].fill(0.0);
            }
        });
}

/// Copies NCHW images into `buf` laid out as `grid` (channels `c`, zero border).
pub fn pack_nchw(images: &[f32], grid: Grid, buf: &mut [f32]) {
    let (h, w, c) = (grid.h, grid.w, grid.c);
    let interior = grid.interior();
    buf[..grid.floats()]
        .par_chunks_mut(grid.image_len())
        .enumerate()
        .for_each(|(n, image)| {
            image.fill(0.0);
            let src = &images[n * c * h * w..][..c * h * w];
            let base = interior.base;
            for y in 0..h {
                let row = &mut image[base + y * interior.row_step..][..w * c];
                for ch in 0..c {
                    let plane = &src[(ch * h + y) * w..][..w];
                    for (x, &v) in plane.iter().enumerate() {
                        row[x * c + ch] = v;
                    }
                }
            }
        });
}

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
/// matrices of [`crate::model::encoder::adaptive_pool_matrix`].
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let bins = crate::model::encoder::adaptive_pool_matrix(2, 1);
        let mut out = vec![f32::NAN; 2];
        adaptive_avg_pool(&buf, g, 1, &bins, &bins, &mut out);
        assert_eq!(out, vec![1.5, 5.5]);
    }
}
