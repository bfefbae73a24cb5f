//! Fused CPU kernels for the attention, where candle would make several passes over large
//! temporaries or compute gradients nobody asked for.
//!
//! Attention scores `full_att(relu(proj_p + att2_q))` for every pixel p and decoder state q
//! would otherwise build a `(B, Q, P, A)` tensor three times (add, ReLU, product); here each
//! score is one pass over `A` values held in cache (inference).
//!
//! The attention-weighted encoding `alpha x encoder_out` is a batched matrix product, but
//! candle's backward pass of a product always computes the gradient of both operands. With a
//! frozen encoder, `encoder_out` needs none, and its `(B, P, E)` gradient (an outer product
//! plus an accumulation, at every decoding step) was most of a training step's work.
//! [`attention_weighted_sum`] computes the same product and skips that gradient unless
//! `encoder_out` is tracked (fine-tuning).
//!
//! GPU path: both ops have only a CPU implementation and are called for f32 on the CPU only;
//! on every other device (CUDA) the same results come from candle ops (broadcast add, ReLU,
//! matmul), which run on the GPU.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
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

/// `out[b, q, :] = sum_p alpha[b, q, p] * values[b, p, :]` for `alpha` `(B, Q, P)` and
/// `values` `(B, P, E)`: `alpha.matmul(values)`, with a backward pass that leaves out the
/// gradient of `values` when `values` does not track gradients. f32 on the CPU; elsewhere a
/// plain matmul.
pub fn attention_weighted_sum(alpha: &Tensor, values: &Tensor) -> Result<Tensor> {
    let cpu_f32 = alpha.device().is_cpu()
        && alpha.dtype() == candle_core::DType::F32
        && values.dtype() == candle_core::DType::F32;
    if cpu_f32 {
        alpha
            .contiguous()?
            .apply_op2(&values.contiguous()?, WeightedSum)
    } else {
        alpha.matmul(values)
    }
}

struct WeightedSum;

impl CustomOp2 for WeightedSum {
    fn name(&self) -> &'static str {
        "attention-weighted-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (alpha, values) = (slice(s1, l1)?, slice(s2, l2)?);
        let (&[b, q, p], &[b2, p2, e]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!("attention weighted sum: expected (B, Q, P) and (B, P, E)");
        };
        if b != b2 || p != p2 {
            candle_core::bail!(
                "attention weighted sum: shapes {:?} and {:?} do not agree",
                l1.dims(),
                l2.dims()
            );
        }
        let mut out = vec![0f32; b * q * e];
        out.par_chunks_mut(e).enumerate().for_each(|(row, dst)| {
            let bi = row / q;
            let weights = &alpha[row * p..][..p];
            let img = &values[bi * p * e..][..p * e];
            for (pi, &w) in weights.iter().enumerate() {
                for (d, &v) in dst.iter_mut().zip(&img[pi * e..][..e]) {
                    *d += w * v;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, q, e))))
    }

    fn bwd(
        &self,
        alpha: &Tensor,
        values: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d alpha = grad x values^T; d values = alpha^T x grad, only when someone needs it.
        let alpha_grad = grad.matmul(&values.t()?)?;
        let values_grad = if values.track_op() {
            Some(alpha.t()?.matmul(grad)?)
        } else {
            None
        };
        Ok((Some(alpha_grad), values_grad))
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn weighted_sum_and_its_gradients_match_matmul() {
        let dev = Device::Cpu;
        let alpha_var = candle_core::Var::randn(0f32, 1.0, (3, 2, 7), &dev).unwrap();
        let values_var = candle_core::Var::randn(0f32, 1.0, (3, 7, 19), &dev).unwrap();
        let (alpha, values) = (alpha_var.as_tensor(), values_var.as_tensor());
        let weights = Tensor::randn(0f32, 1.0, (3, 2, 19), &dev).unwrap();

        let fused = attention_weighted_sum(alpha, values).unwrap();
        let plain = alpha.matmul(values).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);

        let loss = |t: &Tensor| (t * &weights).unwrap().sum_all().unwrap();
        let g_fused = loss(&fused).backward().unwrap();
        let g_plain = loss(&plain).backward().unwrap();
        for t in [alpha, values] {
            let (a, b) = (g_fused.get(t).unwrap(), g_plain.get(t).unwrap());
            assert!(max_diff(a, b) < 1e-5);
        }

        // Frozen values: the gradient of alpha is the same and values get none.
        let frozen = values.detach();
        let out = attention_weighted_sum(alpha, &frozen).unwrap();
        let grads = loss(&out).backward().unwrap();
        assert!(max_diff(grads.get(alpha).unwrap(), g_plain.get(alpha).unwrap()) < 1e-5);
        assert!(grads.get(&frozen).is_none());
    }
}
