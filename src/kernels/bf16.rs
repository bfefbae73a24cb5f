//! bfloat16 for the CPU engine: which precision the convolutions compute in ([`Precision`]),
//! whether this CPU has the instructions for it ([`native`]) and whether they are faster than
//! its f32 ones ([`relative_speed`]), and the conversion of feature maps from f32 ([`to_bf16`]).
//!
//! Whether bf16 pays depends on the chip, not only on its flags: where `vdpbf16ps` issues as
//! often as an f32 FMA (AMD Zen 4 and 5) it does twice the work per instruction; on an Intel
//! Emerald Rapids (AMX not exposed) it measured a quarter of the issue rate of the two 512-bit
//! FMA units, half their work per second, so an AVX-512 f32 GEMM is faster there.
//! [`relative_speed`] measures that once per process (a few milliseconds), and `auto` uses it.
//!
//! A bfloat16 is the upper half of an f32 (8 exponent bits, 7 mantissa bits), rounded to
//! nearest even. The product of two of them is exact in f32, so a dot product of bf16 pairs
//! with an f32 accumulator (`vdpbf16ps`, AVX-512 BF16) loses only the inputs' rounding: about
//! 3 significant digits per operand, nothing more per sum. Accumulators, bias, residual adds,
//! activations, pooling and everything after the encoder stay f32.

use rayon::prelude::*;

/// What the engine's convolutions multiply in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 inputs and weights (the reference's numbers up to rounding order).
    #[default]
    F32,
    /// bfloat16 inputs and weights, f32 accumulation.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `f32`, `bf16`, or `auto` (bf16 where the CPU has AVX-512 BF16 and its bf16 products
    /// measure faster than its f32 ones: [`relative_speed`] at least 1.2, else f32). `bf16` on a
    /// CPU without the instructions is refused: the emulation the tests use is slower than f32.
    pub fn parse(value: &str) -> Result<Precision, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => {
                if native() {
                    Ok(Precision::Bf16)
                } else {
                    Err(format!(
                        "precision bf16 needs a CPU with AVX-512 BF16 (avx512_bf16: Intel \
                         Sapphire Rapids or later, AMD Zen 4 or later), which this one lacks; \
                         use f32{}",
                        if cfg!(target_arch = "x86_64") {
                            ""
                        } else {
                            " (bf16 kernels exist for x86-64 only)"
                        }
                    ))
                }
            }
            "auto" => Ok(if relative_speed().is_some_and(|s| s >= 1.2) {
                Precision::Bf16
            } else {
                Precision::F32
            }),
            other => Err(format!(
                "unknown precision {other:?}: expected f32, bf16 or auto"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether this CPU runs the AVX-512 BF16 kernels (`vdpbf16ps` and the conversions).
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How many times the f32 multiply-adds per second of AVX-512 FMA this CPU does with
/// `vdpbf16ps`, measured once per process on one thread (independent chains of each
/// instruction, best of three runs, a few milliseconds in all); `None` without AVX-512 BF16.
/// Above 1, bf16 convolutions are faster than f32 ones; the engine's GEMM follows the
/// instructions' ratio closely.
pub fn relative_speed() -> Option<f64> {
    static SPEED: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *SPEED.get_or_init(|| {
        if !native() {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the CPU has AVX-512F and BF16 (checked above).
            let (bf16, f32) = unsafe { avx512::multiply_add_rates() };
            Some(bf16 / f32)
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    })
}

/// `v` rounded to the nearest bfloat16 (ties to even), as its bits; NaN stays NaN.
#[inline]
pub fn round(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// The f32 a bfloat16 stands for.
#[inline]
pub fn widen(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Elements per parallel conversion task: big enough to amortise the task, small enough to
/// spread a layer's map over the threads.
const CHUNK: usize = 1 << 15;

/// `dst[i] = round(src[i])` for the length of `src` (`dst` at least as long), in parallel.
pub fn to_bf16(src: &[f32], dst: &mut [u16]) {
    let dst = &mut dst[..src.len()];
    let fast = native();
    let convert = |(s, d): (&[f32], &mut [u16])| {
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: the CPU has AVX-512F and BF16 (checked above); same lengths.
            unsafe { avx512::convert(s, d) };
            return;
        }
        let _ = fast;
        for (d, &s) in d.iter_mut().zip(s) {
            *d = round(s);
        }
    };
    if src.len() <= CHUNK {
        convert((src, dst));
    } else {
        src.par_chunks(CHUNK)
            .zip(dst.par_chunks_mut(CHUNK))
            .for_each(convert);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Iterations of 16 independent instructions per timed run.
    const ROUNDS: usize = 1 << 16;

    /// Multiply-adds per second: of `vdpbf16ps` (32 per instruction) and of `vfmadd231ps` on
    /// 512-bit vectors (16 per instruction), best of three runs each.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn multiply_add_rates() -> (f64, f64) {
        let best = |run: &dyn Fn() -> f32| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(run());
                    t.elapsed().as_secs_f64().max(1e-9)
                })
                .fold(f64::INFINITY, f64::min)
        };
        let per_run = (16 * ROUNDS) as f64;
        let bf16 = per_run * 32.0 / best(&|| dot_chains());
        let f32 = per_run * 16.0 / best(&|| fma_chains());
        (bf16, f32)
    }

    // Out of line, with constant operands and one sum at the end: written otherwise the
    // compiler rotated the chains through registers with a move per instruction, which
    // halved the measured FMA rate.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot_chains() -> f32 {
        let mut c = [_mm512_setzero_ps(); 16];
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        for _ in 0..ROUNDS {
            for v in c.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
            // Keeps the compiler from folding rounds together.
            std::arch::asm!("", options(nomem, nostack));
        }
        _mm512_reduce_add_ps(
            c.iter()
                .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v)),
        )
    }

    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_chains() -> f32 {
        let mut c = [_mm512_setzero_ps(); 16];
        let a = _mm512_set1_ps(0.5);
        let b = _mm512_set1_ps(0.25);
        for _ in 0..ROUNDS {
            for v in c.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
            std::arch::asm!("", options(nomem, nostack));
        }
        _mm512_reduce_add_ps(
            c.iter()
                .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v)),
        )
    }

    /// 16 floats at a time with `vcvtneps2bf16` (round to nearest even), the tail one by one.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
            i += 16;
        }
        for j in i..n {
            dst[j] = super::round(src[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(widen(round(1.0)), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(widen(round(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(widen(round(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(widen(round(f32::NAN)).is_nan());
        assert_eq!(widen(round(-0.0)).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn vector_conversion_matches_scalar_rounding() {
        let mut seed = 5u64;
        // Odd length: the vector body and the scalar tail both run.
        let src: Vec<f32> = (0..CHUNK * 2 + 37)
            .map(|i| crate::kernels::testing::lcg(&mut seed) * (1 << (i % 20)) as f32)
            .collect();
        let mut dst = vec![0u16; src.len() + 3];
        to_bf16(&src, &mut dst);
        for (i, (&s, &d)) in src.iter().zip(&dst).enumerate() {
            assert_eq!(d, round(s), "[{i}] {s}");
        }
        assert_eq!(&dst[src.len()..], &[0, 0, 0]);
    }

    #[test]
    fn precision_names_parse() {
        assert_eq!(Precision::parse("f32"), Ok(Precision::F32));
        assert_eq!(Precision::parse(" FP32 "), Ok(Precision::F32));
        let auto = Precision::parse("auto").unwrap();
        assert_eq!(
            auto == Precision::Bf16,
            relative_speed().is_some_and(|s| s >= 1.2)
        );
        assert_eq!(relative_speed().is_some(), native());
        eprintln!("bf16 multiply-adds per f32 ones: {:?}", relative_speed());
        match Precision::parse("bf16") {
            Ok(p) => assert!(native() && p == Precision::Bf16),
            Err(e) => assert!(!native() && e.contains("AVX-512 BF16"), "{e}"),
        }
        assert!(Precision::parse("f16")
            .unwrap_err()
            .contains("f32, bf16 or auto"));
    }
}
