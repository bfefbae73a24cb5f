//! A linear layer `y = x W^T + b` on row-major f32 rows, computed by the convolution GEMM of
//! [`super::gemm`] as a 1x1 convolution over a one-row "image" of `rows` pixels: the weights
//! are packed once (f32, or bfloat16 pairs for `vdpbf16ps`), the bias is the epilogue's.
//!
//! Why it exists: the decoder's products at inference (the attention's projections, the LSTM,
//! the word classifier) multiply a few rows (images x beams) by large matrices, so they are
//! bound by reading the weights. candle's CPU matmul packs the transposed weights again on
//! every call and runs AVX2 only; packed once, and in bf16 half the bytes, they are read
//! straight from the panels.

use super::bf16::to_bf16;
use super::gemm::{ConvGemm, GemmInput, PackedWeights, WeightFormat};
use super::isa::KernelKind;

/// A linear layer packed for the GEMM.
#[derive(Debug, Clone)]
pub struct Dense {
    weights: PackedWeights,
    in_features: usize,
}

impl Dense {
    /// From PyTorch's `(out, in)` row-major weight and its `(out,)` bias, packed in `format`.
    /// Panics when the sizes disagree.
    pub fn pack(format: WeightFormat, weight: &[f32], bias: &[f32], in_features: usize) -> Self {
        let out_features = bias.len();
        assert_eq!(weight.len(), out_features * in_features, "weight size");
        // The GEMM takes `(in, out)`: row k holds input feature k's weight for every output.
        let mut transposed = vec![0f32; weight.len()];
        for (o, row) in weight.chunks_exact(in_features.max(1)).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                transposed[k * out_features + o] = v;
            }
        }
        Dense {
            weights: PackedWeights::pack_as(
                format,
                &transposed,
                1,
                in_features,
                out_features,
                bias,
            ),
            in_features,
        }
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.weights.out_channels()
    }

    pub fn format(&self) -> WeightFormat {
        self.weights.format()
    }

    /// Bytes the packed weights and bias take.
    pub fn bytes(&self) -> usize {
        let per_value = match self.format() {
            WeightFormat::Bf16 => 2,
            WeightFormat::F32 | WeightFormat::F32Wide => 4,
        };
        self.weights.len() * per_value
    }

    /// `out[r, :] = x[r, :] W^T + b` for `rows` rows of `x` (`rows * in` floats) into `out`
    /// (`rows * out` floats). `scratch` holds the bf16 copy of `x` when the weights are bf16.
    /// Panics when the buffers are too short.
    pub fn run(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        kernel: KernelKind,
        scratch: &mut Vec<u16>,
    ) {
        let (k, n) = (self.in_features, self.out_features());
        assert!(x.len() >= rows * k, "dense input shorter than {rows} x {k}");
        assert!(
            out.len() >= rows * n,
            "dense output shorter than {rows} x {n}"
        );
        if rows == 0 {
            return;
        }
        let x = &x[..rows * k];
        let input = match self.format() {
            WeightFormat::F32 | WeightFormat::F32Wide => GemmInput::F32(x),
            WeightFormat::Bf16 => {
                // One zero past the end: an odd row's last pair reads it against a zero weight.
                scratch.clear();
                scratch.resize(x.len() + 1, 0);
                to_bf16(x, scratch);
                GemmInput::Bf16(scratch)
            }
        };
        ConvGemm::matrix(input, rows, &self.weights).run(&mut out[..rows * n], kernel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16::{round, widen};
    use crate::kernels::testing::lcg;

    fn values(seed: &mut u64, len: usize) -> Vec<f32> {
        (0..len).map(|_| lcg(seed)).collect()
    }

    /// `x W^T + b` in f64, the inputs first rounded by `q`.
    fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        k: usize,
        q: impl Fn(f32) -> f32,
    ) -> Vec<f32> {
        let n = b.len();
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let mut s = b[o] as f64;
                for i in 0..k {
                    s += q(x[r * k + i]) as f64 * q(w[o * k + i]) as f64;
                }
                out[r * n + o] = s as f32;
            }
        }
        out
    }

    fn kernels() -> Vec<KernelKind> {
        let mut kinds = vec![KernelKind::Portable];
        if KernelKind::detect() != KernelKind::Portable {
            kinds.push(KernelKind::detect());
        }
        kinds
    }

    /// Every format against the plain sum on odd shapes: 1, 7 and 13 input features, 1, 3 and
    /// more rows than a tile, outputs narrower and wider than a panel.
    #[test]
    fn dense_matches_the_plain_product_on_odd_shapes() {
        let mut seed = 7;
        for &(rows, k, n) in &[
            (1, 1, 1),
            (3, 7, 5),
            (1, 13, 33),
            (3, 13, 70),
            (13, 7, 17),
            (5, 512, 97),
            (40, 385, 64),
        ] {
            let x = values(&mut seed, rows * k);
            let w = values(&mut seed, n * k);
            let b = values(&mut seed, n);
            let exact = reference(&x, &w, &b, rows, k, |v| v);
            let rounded = reference(&x, &w, &b, rows, k, |v| widen(round(v)));
            for kernel in kernels() {
                let mut formats = vec![WeightFormat::F32];
                if kernel == KernelKind::Avx512 {
                    formats.push(WeightFormat::F32Wide);
                }
                // Without AVX-512 BF16 the bf16 tile is the portable emulation.
                formats.push(WeightFormat::Bf16);
                for format in formats {
                    let layer = Dense::pack(format, &w, &b, k);
                    let mut out = vec![f32::NAN; rows * n];
                    layer.run(&x, rows, &mut out, kernel, &mut Vec::new());
                    // bf16 products are exact in f32, so the reference is the rounded inputs'.
                    let want = if format == WeightFormat::Bf16 {
                        &rounded
                    } else {
                        &exact
                    };
                    for (i, (g, e)) in out.iter().zip(want).enumerate() {
                        let tol = 1e-5 * (1.0 + k as f32).sqrt() * (1.0 + e.abs());
                        assert!(
                            (g - e).abs() <= tol,
                            "{format:?} {kernel:?} rows {rows} k {k} n {n} at {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
