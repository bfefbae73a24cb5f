//! The activation a convolution kernel applies in registers before it stores a value, so that
//! ReLU and ReLU6 need no pass of their own over the output.

/// The activation a convolution's epilogue applies after bias and residual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet and EfficientNet-Lite).
    Relu6,
}

impl Activation {
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }
}

/// The same on eight lanes, for the AVX2 kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::Activation;
    use std::arch::x86_64::*;

    /// `activation` applied to each lane of `v`. Callers run with AVX2 enabled.
    #[inline(always)]
    pub(crate) unsafe fn apply(v: __m256, activation: Activation) -> __m256 {
        match activation {
            Activation::Identity => v,
            Activation::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
            Activation::Relu6 => {
                _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0))
            }
        }
    }
}
