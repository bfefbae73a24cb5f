//! Fused CPU kernels for inference, where candle would make several passes over large
//! temporaries.
//!
//! Attention scores `full_att(relu(proj_p + att2_q))` for every pixel p and decoder state q
//! would otherwise build a `(B, Q, P, A)` tensor three times (add, ReLU, product); here each
//! score is one pass over `A` values held in cache.
//!
//! GPU path: the op has only a CPU implementation. [`super::attention::Attention::forward`]
//! calls it for f32 inference on the CPU only; on every other device (CUDA) and in training
//! the same scores come from candle ops (broadcast add, ReLU, matmul), which run on the GPU.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `scores[b, q, p] = sum_a w[a] * max(proj[b, p, a] + att2[b, q, a], 0)`, for `proj`
/// `(B, P, A)`, `att2` `(B, Q, A)` and `w` `(A)`. Forward only (no gradient); f32 on the CPU.
pub fn attention_scores(proj: &Tensor, att2: &Tensor, w: &Tensor) -> Result<Tensor> {
    proj.contiguous()?
        .apply_op3_no_bwd(&att2.contiguous()?, &w.contiguous()?, &AttentionScores)
}

struct AttentionScores;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("attention scores need contiguous inputs"),
    }
}

/// Dot product of `w` with `relu(x + y)`, in 16 independent lanes so it vectorises.
#[inline]
fn relu_sum_dot(x: &[f32], y: &[f32], w: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = x.len() / LANES;
    for c in 0..chunks {
        let (xs, ys, ws) = (
            &x[c * LANES..][..LANES],
            &y[c * LANES..][..LANES],
            &w[c * LANES..][..LANES],
        );
        for i in 0..LANES {
            acc[i] += ws[i] * (xs[i] + ys[i]).max(0.0);
        }
    }
    let mut total: f32 = acc.iter().sum();
    for i in chunks * LANES..x.len() {
        total += w[i] * (x[i] + y[i]).max(0.0);
    }
    total
}

impl CustomOp3 for AttentionScores {
    fn name(&self) -> &'static str {
        "attention-scores"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (proj, att2, w) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (&[b, p, a], &[b2, q, a2]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!("attention scores: expected (B, P, A) and (B, Q, A)");
        };
        if b != b2 || a != a2 || w.len() != a {
            candle_core::bail!(
                "attention scores: shapes {:?}, {:?}, {:?} do not agree",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut out = vec![0f32; b * q * p];
        out.par_chunks_mut(p).enumerate().for_each(|(row, dst)| {
            let (bi, qi) = (row / q, row % q);
            let y = &att2[(bi * q + qi) * a..][..a];
            let img = &proj[bi * p * a..][..p * a];
            for (pi, d) in dst.iter_mut().enumerate() {
                *d = relu_sum_dot(&img[pi * a..][..a], y, w);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, q, p))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_unfused_computation() {
        let dev = Device::Cpu;
        let proj = Tensor::randn(0f32, 1.0, (2, 7, 37), &dev).unwrap();
        let att2 = Tensor::randn(0f32, 1.0, (2, 3, 37), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, 37, &dev).unwrap();
        let fused = attention_scores(&proj, &att2, &w).unwrap();
        let sum = proj
            .unsqueeze(1)
            .unwrap()
            .broadcast_add(&att2.unsqueeze(2).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        let plain = sum
            .broadcast_mul(&w.reshape((1, 1, 1, 37)).unwrap())
            .unwrap()
            .sum(3)
            .unwrap();
        let diff: f32 = (fused - plain)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
