//! The layout every NHWC kernel here works on: a feature map of `n` images stored a row per
//! pixel, channels contiguous, with a zero border on every side ([`Grid`]), and where a grid's
//! pixels or a convolution's windows start in such a buffer ([`PixelMap`]).
//!
//! The border is what lets the kernels read every window in place: a convolution's zero
//! padding, TensorFlow's asymmetric "same" padding ([`same_padding`]) included, is the border
//! read from an offset, so no padded copy and no im2col buffer is ever made. Packing NCHW
//! images into a grid and clearing borders are here too.

use rayon::prelude::*;

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
    pub fn offsets(&self, range: std::ops::Range<usize>) -> Vec<usize> {
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
    pub fn last_offset(&self) -> usize {
        self.offset(self.pixels().saturating_sub(1))
    }
}

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

/// TensorFlow "same" padding for one dimension: (before, after). The output has
/// `size.div_ceil(stride)` pixels.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// The border a "same" convolution with a `kernel`-wide window needs after the image.
pub fn same_border(kernel: usize) -> usize {
    kernel / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(225, 3, 2), (1, 1));
        assert_eq!(same_padding(112, 5, 2), (1, 2));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }
}
