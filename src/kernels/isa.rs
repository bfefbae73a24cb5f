//! Which micro-kernel the NHWC convolution kernels ([`super::gemm`], [`super::depthwise`]) run:
//! AVX2 with FMA where the CPU has both, else plain Rust. Both compute the same sums in the
//! same order, up to fused rounding; the portable one exists for other CPUs and as the check
//! of the vector one in the tests.

/// Which micro-kernel runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 with FMA.
    Avx2Fma,
}

impl KernelKind {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return KernelKind::Avx2Fma;
            }
        }
        KernelKind::Portable
    }
}
