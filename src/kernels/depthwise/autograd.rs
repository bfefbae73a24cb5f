//! Depthwise 2-D convolution (one filter per channel, PyTorch's `groups == channels`) on NCHW
//! tensors, with its backward pass: the reference EfficientNet's (training, and inference
//! off the CPU engine).
//!
//! Candle runs a grouped convolution as one convolution per group, far too slow for the
//! hundreds of channels of an EfficientNet. On the CPU this is a direct kernel (forward, and
//! backward for input and weights) run as a candle custom op, so autograd works through it.
//! On other devices the same result comes from candle ops: a sum over kernel taps of shifted,
//! channel-scaled inputs, which autograd differentiates too.
//!
//! GPU path: [`depthwise_conv2d`] runs the custom op only for f32 tensors on the CPU
//! ([`crate::kernels::eligible`]); on CUDA it routes to [`depthwise_by_taps`] (index_select,
//! broadcast_mul, add: candle's CUDA kernels).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::operands::{contiguous_f32, eligible};

/// `(N, C, H, W)` input, `(C, 1, K, K)` weights, symmetric zero padding `padding`.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (wc, one, k, k2) = w.dims4()?;
    if wc != c || one != 1 || k != k2 {
        candle_core::bail!(
            "depthwise convolution: weights {:?} do not fit input {:?}",
            w.dims(),
            x.dims()
        );
    }
    if eligible(&[x, w]) {
        x.apply_op2(w, Depthwise { stride, padding })
    } else {
        depthwise_by_taps(x, w, stride, padding)
    }
}

/// The device-independent formulation: `sum_{ky,kx} w[:, ky, kx] * shift(x)`.
pub fn depthwise_by_taps(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let k = w.dim(2)?;
    let ho = (h + 2 * padding - k) / stride + 1;
    let wo = (wd + 2 * padding - k) / stride + 1;
    let xp = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let rows = |start: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..ho).map(|o| (start + o * stride) as u32).collect();
        Tensor::from_vec(idx, ho, x.device())
    };
    let cols = |start: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..wo).map(|o| (start + o * stride) as u32).collect();
        Tensor::from_vec(idx, wo, x.device())
    };
    let mut out: Option<Tensor> = None;
    for ky in 0..k {
        let band = xp.index_select(&rows(ky)?, 2)?;
        for kx in 0..k {
            let tap = band.index_select(&cols(kx)?, 3)?;
            let wk = w
                .narrow(2, ky, 1)?
                .narrow(3, kx, 1)?
                .reshape((1, c, 1, 1))?;
            let term = tap.broadcast_mul(&wk)?;
            out = Some(match out {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
    }
    match out {
        Some(t) => Ok(t),
        None => Tensor::zeros((n, c, ho, wo), x.dtype(), x.device()),
    }
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &[usize], k: usize, stride: usize, padding: usize) -> Result<Self> {
        let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
        if h + 2 * padding < k || w + 2 * padding < k {
            candle_core::bail!(
                "depthwise convolution: kernel {k} larger than padded input {h}x{w}"
            );
        }
        let ho = (h + 2 * padding - k) / stride + 1;
        let wo = (w + 2 * padding - k) / stride + 1;
        Ok(Geometry {
            n,
            c,
            h,
            w,
            k,
            stride,
            padding,
            ho,
            wo,
        })
    }

    /// For output index `o` and tap `t`, the input index, if inside the image.
    fn input(&self, o: usize, t: usize, size: usize) -> Option<usize> {
        (o * self.stride + t)
            .checked_sub(self.padding)
            .filter(|&i| i < size)
    }
}

/// The name the depthwise ops give in their errors.
const OP: &str = "depthwise convolution";

struct Depthwise {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, OP)?;
        let w = contiguous_f32(s2, l2, OP)?;
        let g = Geometry::new(l1.dims(), l2.dims()[2], self.stride, self.padding)?;
        let mut out = vec![0f32; g.n * g.c * g.ho * g.wo];
        out.par_chunks_mut(g.ho * g.wo)
            .enumerate()
            .for_each(|(plane, dst)| {
                let ch = plane % g.c;
                let src = &x[plane * g.h * g.w..(plane + 1) * g.h * g.w];
                let filt = &w[ch * g.k * g.k..(ch + 1) * g.k * g.k];
                for ky in 0..g.k {
                    for oy in 0..g.ho {
                        let Some(iy) = g.input(oy, ky, g.h) else {
                            continue;
                        };
                        let row = &src[iy * g.w..(iy + 1) * g.w];
                        let out_row = &mut dst[oy * g.wo..(oy + 1) * g.wo];
                        for kx in 0..g.k {
                            let wv = filt[ky * g.k + kx];
                            if g.stride == 1 {
                                // Contiguous range of valid outputs for this tap.
                                let lo = g.padding.saturating_sub(kx);
                                let hi = (g.w + g.padding).saturating_sub(kx).min(g.wo);
                                for ox in lo..hi {
                                    out_row[ox] += wv * row[ox + kx - g.padding];
                                }
                            } else {
                                for (ox, o) in out_row.iter_mut().enumerate() {
                                    if let Some(ix) = g.input(ox, kx, g.w) {
                                        *o += wv * row[ix];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let geometry = (self.stride, self.padding);
        let gx = grad.apply_op2_no_bwd(
            &w.contiguous()?,
            &GradInput {
                geometry,
                input: x.dims().to_vec(),
            },
        )?;
        let gw = grad.apply_op2_no_bwd(
            &x.contiguous()?,
            &GradWeight {
                geometry,
                k: w.dim(2)?,
            },
        )?;
        Ok((Some(gx), Some(gw)))
    }
}

/// Gradient with respect to the input: scatter each output gradient back through the taps.
struct GradInput {
    geometry: (usize, usize),
    input: Vec<usize>,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gy = contiguous_f32(s1, l1, OP)?;
        let w = contiguous_f32(s2, l2, OP)?;
        let g = Geometry::new(&self.input, l2.dims()[2], self.geometry.0, self.geometry.1)?;
        let mut gx = vec![0f32; g.n * g.c * g.h * g.w];
        gx.par_chunks_mut(g.h * g.w)
            .enumerate()
            .for_each(|(plane, dst)| {
                let ch = plane % g.c;
                let src = &gy[plane * g.ho * g.wo..(plane + 1) * g.ho * g.wo];
                let filt = &w[ch * g.k * g.k..(ch + 1) * g.k * g.k];
                for oy in 0..g.ho {
                    for ky in 0..g.k {
                        let Some(iy) = g.input(oy, ky, g.h) else {
                            continue;
                        };
                        for ox in 0..g.wo {
                            let v = src[oy * g.wo + ox];
                            for kx in 0..g.k {
                                if let Some(ix) = g.input(ox, kx, g.w) {
                                    dst[iy * g.w + ix] += v * filt[ky * g.k + kx];
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(gx), Shape::from(self.input.as_slice())))
    }
}

/// Gradient with respect to the weights: correlate output gradients with the input.
struct GradWeight {
    geometry: (usize, usize),
    k: usize,
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gy = contiguous_f32(s1, l1, OP)?;
        let x = contiguous_f32(s2, l2, OP)?;
        let g = Geometry::new(l2.dims(), self.k, self.geometry.0, self.geometry.1)?;
        let kk = g.k * g.k;
        let mut gw = vec![0f32; g.c * kk];
        gw.par_chunks_mut(kk).enumerate().for_each(|(ch, dst)| {
            for b in 0..g.n {
                let plane = b * g.c + ch;
                let src = &x[plane * g.h * g.w..(plane + 1) * g.h * g.w];
                let gyp = &gy[plane * g.ho * g.wo..(plane + 1) * g.ho * g.wo];
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let mut acc = 0f32;
                        for oy in 0..g.ho {
                            let Some(iy) = g.input(oy, ky, g.h) else {
                                continue;
                            };
                            for ox in 0..g.wo {
                                if let Some(ix) = g.input(ox, kx, g.w) {
                                    acc += gyp[oy * g.wo + ox] * src[iy * g.w + ix];
                                }
                            }
                        }
                        dst[ky * g.k + kx] += acc;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(gw), Shape::from((g.c, 1, g.k, g.k))))
    }
}
