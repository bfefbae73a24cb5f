//! Depthwise convolution (one `k x k` filter per channel), in the two forms gaze needs:
//! - [`autograd`]: NCHW tensors through a candle custom op with its backward pass, for the
//!   reference EfficientNet (training, and every device; candle's grouped convolution is one
//!   convolution per group, far too slow here);
//! - [`folded`]: NHWC buffers with BatchNorm folded in, for the CPU encoder engine's inference.

pub mod autograd;
pub mod folded;

pub use self::autograd::{depthwise_by_taps, depthwise_conv2d};
pub use self::folded::{depthwise, DepthwiseWeights};
