//! gaze's own CPU kernels: every computation it runs in its own code instead of through
//! candle's ops, because on the CPU candle's way is several times slower (the convolutions)
//! or computes gradients nobody reads (the attention ops). Each one computes what the candle
//! formulation computes (the tests hold them to it, and to PyTorch), and runs only for f32
//! tensors on the CPU: [`eligible`] is that test, the one place it is written. Other devices
//! and dtypes take candle's ops, which CUDA runs.
//!
//! By job:
//! - [`gemm`]: a convolution as an implicit GEMM over NHWC buffers (no im2col copy), with bias,
//!   residual add and activation in registers; [`conv`] folds BatchNorm into such a
//!   convolution and runs it on feature maps with symmetric or TensorFlow "same" padding;
//!   [`winograd`] computes its 3x3 stride-1 ones with a quarter of the multiplications.
//! - [`depthwise`]: depthwise convolution, as the NHWC inference kernel with BatchNorm folded
//!   in, and as an NCHW candle custom op with its backward pass for training.
//! - [`layout`]: the NHWC feature maps with a zero border that those kernels read in place, and
//!   "same" padding; [`pool`]: max pooling and PyTorch's adaptive average pooling on them.
//! - [`attention`]: the fused attention scores and the attention-weighted sum (training and
//!   decoding); [`projection`]: the encoder projection, without the input gradient a frozen
//!   encoder does not need.
//! - [`bf16`]: the engine's precision (f32, or bfloat16 products with f32 sums on CPUs with
//!   AVX-512 BF16) and the conversion of maps to bf16.
//! - [`isa`] (which micro-kernel: AVX2+FMA or portable), [`activation`] (the epilogue's ReLU or
//!   ReLU6), [`operands`] (what the kernels take).
//!
//! The kernels know nothing of networks: `model::encoder::cpu` wires them into the CPU encoder
//! engine (which layer runs which kernel into which buffer), `model::attention` and the
//! reference EfficientNet call the candle custom ops.

pub mod activation;
pub mod attention;
pub mod bf16;
pub mod conv;
pub mod dense;
pub mod depthwise;
pub mod gemm;
pub mod isa;
pub mod layout;
pub mod operands;
pub mod pool;
pub mod projection;
#[cfg(test)]
mod testing;
pub mod winograd;

pub use self::operands::eligible;
