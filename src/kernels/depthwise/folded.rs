//! The depthwise convolution of the CPU encoder engine (EfficientNet's MBConv blocks): one
//! `k x k` filter per channel, on NHWC buffers with a zero border, BatchNorm folded into the
//! weights and the activation applied before the store. Inference only; training runs
//! [`super::autograd`].
//!
//! In NHWC a pixel's channels are contiguous, and so are the folded weights of one tap
//! (`(k * k, C)`, tap-major), so each output pixel is `k * k` multiply-adds of two contiguous
//! channel vectors into an accumulator of registers: no im2col, no transposes, one pass over
//! the output. Padding ("same" padding, asymmetric for stride 2, included) comes from the
//! input's zero border: windows start `top` rows and `left` columns into it. Work is split over
//! output rows with rayon. Like the GEMM, the kernel has an AVX2+FMA version and a portable one.

use rayon::prelude::*;

use crate::kernels::activation::Activation;
use crate::kernels::isa::KernelKind;
use crate::kernels::layout::Grid;

/// Depthwise `k x k` weights with BatchNorm folded in.
#[derive(Debug, Clone)]
pub struct DepthwiseWeights {
    kernel: usize,
    stride: usize,
    channels: usize,
    /// `(k * k, channels)`: tap `ky * k + kx`, then channel.
    taps: Vec<f32>,
    bias: Vec<f32>,
}

impl DepthwiseWeights {
    /// From PyTorch's `(C, 1, k, k)` weights (flattened), each channel multiplied by `scale`,
    /// with `shift` as the bias.
    pub fn fold(
        weight: &[f32],
        scale: &[f32],
        shift: &[f32],
        kernel: usize,
        stride: usize,
    ) -> Self {
        let channels = scale.len();
        assert_eq!(weight.len(), channels * kernel * kernel, "weight size");
        assert_eq!(shift.len(), channels, "bias size");
        assert!(kernel > 0 && stride > 0, "kernel and stride");
        let mut taps = vec![0f32; kernel * kernel * channels];
        for c in 0..channels {
            for t in 0..kernel * kernel {
                taps[t * channels + c] = weight[c * kernel * kernel + t] * scale[c];
            }
        }
        DepthwiseWeights {
            kernel,
            stride,
            channels,
            taps,
            bias: shift.to_vec(),
        }
    }

    pub fn kernel(&self) -> usize {
        self.kernel
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Floats held (weights and bias).
    pub fn len(&self) -> usize {
        self.taps.len() + self.bias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes `activation(bias + depthwise convolution)` of `input` (laid out as `in_grid`) into the
/// interior of `output` (laid out as `out_grid`, whose border is zeroed). Output pixel `(y, x)`
/// reads the window whose top-left corner is input pixel `(y * stride - top, x * stride - left)`;
/// positions outside the image must fall in `in_grid`'s zero border. Panics otherwise, or when
/// the grids do not match the weights.
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    input: &[f32],
    in_grid: Grid,
    (top, left): (usize, usize),
    weights: &DepthwiseWeights,
    activation: Activation,
    output: &mut [f32],
    out_grid: Grid,
    kernel: KernelKind,
) {
    let (k, s, c) = (weights.kernel, weights.stride, weights.channels);
    assert_eq!(in_grid.c, c, "input channels");
    assert_eq!(out_grid.c, c, "output channels");
    assert_eq!(in_grid.n, out_grid.n, "images");
    assert!(
        top <= in_grid.pad && left <= in_grid.pad,
        "padding wider than the border"
    );
    if out_grid.h == 0 || out_grid.w == 0 {
        return;
    }
    // The last window must end inside the image plus its border.
    assert!(
        (out_grid.h - 1) * s + k <= in_grid.h + in_grid.pad + top,
        "windows run past the bottom border"
    );
    assert!(
        (out_grid.w - 1) * s + k <= in_grid.w + in_grid.pad + left,
        "windows run past the right border"
    );
    assert!(input.len() >= in_grid.floats(), "input buffer");
    let windows = in_grid.windows_at(out_grid.h, out_grid.w, s, top, left);
    let in_row = in_grid.row_len();
    let padded_h = out_grid.h + 2 * out_grid.pad;
    let edge = out_grid.pad * c;
    output[..out_grid.floats()]
        .par_chunks_mut(out_grid.row_len())
        .enumerate()
        .for_each(|(i, out_row)| {
            let (n, y) = (i / padded_h, i % padded_h);
            if y < out_grid.pad || y >= out_grid.pad + out_grid.h {
                out_row.fill(0.0);
                return;
            }
            let row_len = out_row.len();
            out_row[..edge].fill(0.0);
            out_row[row_len - edge..].fill(0.0);
            let corner = windows.offset((n * out_grid.h + y - out_grid.pad) * out_grid.w);
            let row = Row {
                corner,
                col_step: s * c,
                width: out_grid.w,
                in_row,
                activation,
            };
            let dst = &mut out_row[edge..row_len - edge];
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Avx2Fma` and `Avx512` are only chosen when the CPU has AVX2 and FMA;
                // every read lies inside `input`, by the window checks above.
                KernelKind::Avx2Fma | KernelKind::Avx512 => unsafe {
                    avx2::row(input, &row, weights, dst)
                },
                _ => portable_row(input, &row, weights, dst),
            }
        });
}

/// One output row: where its first window starts and how the windows step.
struct Row {
    corner: usize,
    col_step: usize,
    width: usize,
    in_row: usize,
    activation: Activation,
}

/// Channels one accumulator block of the portable kernel holds.
const PORTABLE_BLOCK: usize = 64;

fn portable_row(input: &[f32], row: &Row, w: &DepthwiseWeights, dst: &mut [f32]) {
    let (k, c) = (w.kernel, w.channels);
    for (x, out) in dst.chunks_exact_mut(c).take(row.width).enumerate() {
        let corner = row.corner + x * row.col_step;
        let mut ch = 0;
        while ch < c {
            let len = PORTABLE_BLOCK.min(c - ch);
            let mut acc = [0f32; PORTABLE_BLOCK];
            let acc = &mut acc[..len];
            acc.copy_from_slice(&w.bias[ch..ch + len]);
            for ky in 0..k {
                for kx in 0..k {
                    let src = &input[corner + ky * row.in_row + kx * c + ch..][..len];
                    let wt = &w.taps[(ky * k + kx) * c + ch..][..len];
                    for ((a, &v), &m) in acc.iter_mut().zip(src).zip(wt) {
                        *a += v * m;
                    }
                }
            }
            for (o, &a) in out[ch..ch + len].iter_mut().zip(acc.iter()) {
                *o = row.activation.apply(a);
            }
            ch += len;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{DepthwiseWeights, Row};
    use crate::kernels::activation::avx2::apply as activate;
    use std::arch::x86_64::*;

    /// Sixteen channels at a time in two accumulators, then eight, then one.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row(input: &[f32], row: &Row, w: &DepthwiseWeights, dst: &mut [f32]) {
        let (k, c) = (w.kernel, w.channels);
        assert!(dst.len() >= row.width * c, "output row");
        let last = row.corner + (row.width - 1) * row.col_step + (k - 1) * (row.in_row + c) + c;
        assert!(last <= input.len(), "input windows");
        let inp = input.as_ptr();
        let taps = w.taps.as_ptr();
        let bias = w.bias.as_ptr();
        for x in 0..row.width {
            let src = inp.add(row.corner + x * row.col_step);
            let out = dst.as_mut_ptr().add(x * c);
            let mut ch = 0;
            while ch + 16 <= c {
                let mut a0 = _mm256_loadu_ps(bias.add(ch));
                let mut a1 = _mm256_loadu_ps(bias.add(ch + 8));
                for ky in 0..k {
                    let r = src.add(ky * row.in_row + ch);
                    let t = taps.add(ky * k * c + ch);
                    for kx in 0..k {
                        let (r, t) = (r.add(kx * c), t.add(kx * c));
                        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r), _mm256_loadu_ps(t), a0);
                        a1 = _mm256_fmadd_ps(
                            _mm256_loadu_ps(r.add(8)),
                            _mm256_loadu_ps(t.add(8)),
                            a1,
                        );
                    }
                }
                _mm256_storeu_ps(out.add(ch), activate(a0, row.activation));
                _mm256_storeu_ps(out.add(ch + 8), activate(a1, row.activation));
                ch += 16;
            }
            if ch + 8 <= c {
                let mut a0 = _mm256_loadu_ps(bias.add(ch));
                for ky in 0..k {
                    for kx in 0..k {
                        let r = src.add(ky * row.in_row + kx * c + ch);
                        let t = taps.add((ky * k + kx) * c + ch);
                        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r), _mm256_loadu_ps(t), a0);
                    }
                }
                _mm256_storeu_ps(out.add(ch), activate(a0, row.activation));
                ch += 8;
            }
            for ch in ch..c {
                let mut a = *bias.add(ch);
                for ky in 0..k {
                    for kx in 0..k {
                        let v = *src.add(ky * row.in_row + kx * c + ch);
                        a = v.mul_add(*taps.add((ky * k + kx) * c + ch), a);
                    }
                }
                *out.add(ch) = row.activation.apply(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::layout::same_padding;
    use crate::kernels::testing::lcg;

    #[test]
    fn matches_direct_depthwise_convolution() {
        let kernels = if KernelKind::detect() == KernelKind::Portable {
            vec![KernelKind::Portable]
        } else {
            vec![KernelKind::Portable, KernelKind::detect()]
        };
        let mut seed = 3u64;
        // (n, h, w, c, k, stride, extra input border, output border), with "same" padding.
        let cases = [
            (2, 7, 6, 21, 3, 1, 0, 0),
            (1, 9, 8, 16, 5, 2, 0, 1),
            (1, 6, 5, 40, 3, 2, 0, 0),
            (3, 5, 9, 8, 5, 1, 1, 2),
            (1, 1, 1, 3, 5, 2, 0, 0),
            (1, 4, 4, 100, 3, 1, 2, 0),
            (1, 12, 11, 24, 5, 2, 0, 0),
        ];
        for &(n, h, w, c, k, s, extra, out_pad) in &cases {
            let (top, _) = same_padding(h, k, s);
            let (left, _) = same_padding(w, k, s);
            let pad = k / 2 + extra;
            let in_grid = Grid { n, h, w, c, pad };
            let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
            let out_grid = Grid {
                n,
                h: ho,
                w: wo,
                c,
                pad: out_pad,
            };
            let x: Vec<f32> = (0..n * h * w * c).map(|_| 4.0 * lcg(&mut seed)).collect();
            let wt: Vec<f32> = (0..c * k * k).map(|_| lcg(&mut seed)).collect();
            let scale: Vec<f32> = (0..c).map(|_| 1.0 + 0.5 * lcg(&mut seed)).collect();
            let shift: Vec<f32> = (0..c).map(|_| lcg(&mut seed)).collect();
            let folded = DepthwiseWeights::fold(&wt, &scale, &shift, k, s);
            let mut input = vec![0f32; in_grid.floats()];
            let map = in_grid.interior();
            for i in 0..n * h * w {
                input[map.offset(i)..][..c].copy_from_slice(&x[i * c..][..c]);
            }
            for &kernel in &kernels {
                for activation in [Activation::Identity, Activation::Relu6] {
                    let mut out = vec![f32::NAN; out_grid.floats()];
                    depthwise(
                        &input,
                        in_grid,
                        (top, left),
                        &folded,
                        activation,
                        &mut out,
                        out_grid,
                        kernel,
                    );
                    let omap = out_grid.interior();
                    for b in 0..n {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let pixel = (b * ho + oy) * wo + ox;
                                for ch in 0..c {
                                    let mut sum = 0f64;
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let iy = (oy * s + ky) as isize - top as isize;
                                            let ix = (ox * s + kx) as isize - left as isize;
                                            if iy < 0
                                                || ix < 0
                                                || iy >= h as isize
                                                || ix >= w as isize
                                            {
                                                continue;
                                            }
                                            let v = x[((b * h + iy as usize) * w + ix as usize)
                                                * c
                                                + ch];
                                            sum += v as f64 * wt[ch * k * k + ky * k + kx] as f64;
                                        }
                                    }
                                    let want = activation
                                        .apply((sum * scale[ch] as f64 + shift[ch] as f64) as f32);
                                    let got = out[omap.offset(pixel) + ch];
                                    assert!(
                                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                        "{kernel:?} {:?} pixel {pixel} channel {ch}: {got} vs {want}",
                                        (n, h, w, c, k, s, top, left)
                                    );
                                }
                            }
                        }
                    }
                    // The border is zero.
                    let zeros = out.iter().filter(|v| **v == 0.0).count();
                    let border = out_grid.floats() - n * ho * wo * c;
                    assert!(zeros >= border, "border not cleared");
                    assert!(out.iter().all(|v| v.is_finite()), "unwritten output");
                }
            }
        }
    }
}
