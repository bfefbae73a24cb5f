//! Which micro-kernel the NHWC convolution kernels ([`super::gemm`], [`super::depthwise`]) run:
//! AVX-512 where the CPU has it (the GEMM's 8x32 tile; the depthwise kernel stays AVX2), AVX2
//! with FMA where it has both, else plain Rust. All compute the same sums in the same order,
//! up to fused rounding; the portable one exists for other CPUs and as the check of the vector
//! ones in the tests.

/// Which micro-kernel runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 with FMA.
    Avx2Fma,
    /// x86-64 AVX-512F (with AVX2 and FMA): twice the f32 FMA width of AVX2 on CPUs with two
    /// 512-bit FMA units (Intel Xeon since Skylake-SP); on CPUs that split 512-bit work in two
    /// (AMD Zen 4 and 5) about as fast as AVX2.
    Avx512,
}

impl KernelKind {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return KernelKind::Avx512;
            }
            if avx2 {
                return KernelKind::Avx2Fma;
            }
        }
        KernelKind::Portable
    }

    /// Whether the AVX2+FMA kernels run (they do wherever AVX-512's do).
    pub fn has_avx2(self) -> bool {
        matches!(self, KernelKind::Avx2Fma | KernelKind::Avx512)
    }
}
