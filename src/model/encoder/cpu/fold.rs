//! Reading a network's tensors into the engine's kernels: each convolution with the BatchNorm
//! that follows it folded in ([`crate::kernels::conv::FoldedConv`]), checked to have a shape
//! the kernels support.

use candle_core::{DType, Device, Tensor};

use super::error::{CpuEngineError, Result};
use crate::kernels::conv::{Conv3x3, FoldedConv};
use crate::kernels::gemm::WeightFormat;
use crate::model::encoder::layers::BatchNorm;

/// How a network's convolution weights are packed: the stem's, and every other one's. In bf16
/// the stem stays f32: it is about 1% of a ResNet's work, and rounding the image itself to 8
/// significant bits is the error that changed most captions in measurements.
#[derive(Debug, Clone, Copy)]
pub struct Formats {
    pub stem: WeightFormat,
    pub body: WeightFormat,
    /// Whether 3x3, stride-1 f32 convolutions also keep a Winograd form.
    pub conv3x3: Conv3x3,
}

/// A bias-free convolution with `(C_out, C_in, k, k)` `weight` (symmetric `padding`) followed
/// by inference-mode `bn`: weights scaled per output channel, shift as bias, packed in `format`
/// (and in Winograd form as `conv3x3` says, where it applies).
pub fn fold_conv(
    format: WeightFormat,
    conv3x3: Conv3x3,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    bn: &BatchNorm,
    layer: &str,
) -> Result<FoldedConv> {
    let wrap = |source| CpuEngineError::Weights {
        layer: layer.to_string(),
        source,
    };
    let (c_out, c_in, kh, kw) = weight.dims4().map_err(wrap)?;
    if kh != kw {
        return Err(CpuEngineError::Unsupported {
            layer: layer.to_string(),
            what: format!("kernel {kh}x{kw} is not square"),
        });
    }
    let w = read_f32(weight).map_err(wrap)?;
    let (scale, shift) = folded_batch_norm(bn, c_out, layer)?;
    Ok(FoldedConv::fold_as(
        format,
        &w,
        (c_out, c_in, kh),
        &scale,
        &shift,
        stride,
        padding,
    )
    .with_winograd(conv3x3, &w, &scale))
}

/// A tensor's values as f32 on the CPU.
pub fn read_f32(t: &Tensor) -> std::result::Result<Vec<f32>, candle_core::Error> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

/// Inference-mode `bn` as per-channel `(scale, shift)`, checked to have `channels` entries.
pub fn folded_batch_norm(
    bn: &BatchNorm,
    channels: usize,
    layer: &str,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let wrap = |source| CpuEngineError::Weights {
        layer: layer.to_string(),
        source,
    };
    let (scale, shift) = bn.scale_shift().map_err(wrap)?;
    let scale = read_f32(&scale).map_err(wrap)?;
    let shift = read_f32(&shift).map_err(wrap)?;
    if scale.len() != channels || shift.len() != channels {
        return Err(CpuEngineError::Unsupported {
            layer: layer.to_string(),
            what: format!("{} BatchNorm channels for {channels} outputs", scale.len()),
        });
    }
    Ok((scale, shift))
}
