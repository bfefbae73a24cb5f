//! Fused CPU kernels for soft attention, where candle would make several passes over large
//! temporaries or compute gradients nobody asked for.
//!
//! Attention scores `full_att(relu(proj_p + att2_q))` for every pixel p and decoder state q
//! would otherwise build a `(B, Q, P, A)` tensor three times (add, ReLU, product), and as many
//! again for their gradients; here each score is one pass over `A` values held in cache, and
//! the backward pass is one more that recomputes the ReLU mask.
//!
//! The attention-weighted encoding `alpha x encoder_out` is a batched matrix product, but
//! candle's backward pass of a product always computes the gradient of both operands. With a
//! frozen encoder, `encoder_out` needs none, and its `(B, P, E)` gradient (an outer product
//! plus an accumulation, at every decoding step) was most of a training step's work.
//! [`attention_weighted_sum`] computes the same product and skips that gradient unless
//! `encoder_out` is tracked (fine-tuning).
//!
//! GPU path: these ops have only a CPU implementation and run for f32 on the CPU only
//! ([`crate::kernels::eligible`]); on every other device (CUDA) the same results come from
//! candle ops (broadcast add, ReLU, matmul), which run on the GPU.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::operands::{contiguous_f32, eligible};

/// `scores[b, q, p] = sum_a w[a] * max(proj[b, p, a] + att2[b, q, a], 0)`, for `proj`
/// `(B, P, A)`, `att2` `(B, Q, A)` and `w` `(A)`. On the CPU in f32, one fused pass instead of
/// three over `(B, Q, P, A)`, and a backward pass that recomputes the ReLU mask in one pass
/// instead of keeping `(B, Q, P, A)` temporaries; elsewhere the same through candle's ops.
pub fn attention_scores(proj: &Tensor, att2: &Tensor, w: &Tensor) -> Result<Tensor> {
    if eligible(&[proj, att2, w]) {
        proj.contiguous()?
            .apply_op3(&att2.contiguous()?, &w.contiguous()?, AttentionScores)
    } else {
        let (b, p, a) = proj.dims3()?;
        let q = att2.dim(1)?;
        let sum = proj
            .unsqueeze(1)?
            .broadcast_add(&att2.unsqueeze(2)?)?
            .relu()?; // (B, Q, P, A)
        sum.reshape((b * q * p, a))?
            .matmul(&w.reshape((a, 1))?)?
            .reshape((b, q, p))
    }
}

struct AttentionScores;

/// The name the attention ops give in their errors.
const OP: &str = "attention";

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
        let (proj, att2, w) = (
            contiguous_f32(s1, l1, OP)?,
            contiguous_f32(s2, l2, OP)?,
            contiguous_f32(s3, l3, OP)?,
        );
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

    fn bwd(
        &self,
        proj: &Tensor,
        att2: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, p, a) = proj.dims3()?;
        let q = att2.dim(1)?;
        let xs: Vec<f32> = proj.flatten_all()?.to_vec1()?;
        let ys: Vec<f32> = att2.flatten_all()?.to_vec1()?;
        let ws: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let gs: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        let mut d_proj = vec![0f32; b * p * a];
        let mut d_att2 = vec![0f32; b * q * a];
        // Each image owns its rows of d_proj and d_att2; d_w is summed over images.
        let d_w = d_proj
            .par_chunks_mut(p * a)
            .zip(d_att2.par_chunks_mut(q * a))
            .enumerate()
            .map(|(bi, (dx_img, dy_img))| {
                let mut d_w = vec![0f32; a];
                for qi in 0..q {
                    let y = &ys[(bi * q + qi) * a..][..a];
                    let dy = &mut dy_img[qi * a..][..a];
                    let g_row = &gs[(bi * q + qi) * p..][..p];
                    for (pi, &g) in g_row.iter().enumerate() {
                        let x = &xs[(bi * p + pi) * a..][..a];
                        let dx = &mut dx_img[pi * a..][..a];
                        for ai in 0..a {
                            let sum = x[ai] + y[ai];
                            let on = if sum > 0.0 { 1.0 } else { 0.0 };
                            let gw = g * ws[ai] * on;
                            dx[ai] += gw;
                            dy[ai] += gw;
                            d_w[ai] += g * sum.max(0.0);
                        }
                    }
                }
                d_w
            })
            .reduce(
                || vec![0f32; a],
                |mut acc, part| {
                    acc.iter_mut().zip(part).for_each(|(t, v)| *t += v);
                    acc
                },
            );
        let device = proj.device();
        Ok((
            Some(Tensor::from_vec(d_proj, (b, p, a), device)?),
            Some(Tensor::from_vec(d_att2, (b, q, a), device)?),
            Some(Tensor::from_vec(d_w, w.shape(), device)?),
        ))
    }
}

/// `out[b, q, :] = sum_p alpha[b, q, p] * values[b, p, :]` for `alpha` `(B, Q, P)` and
/// `values` `(B, P, E)`: `alpha.matmul(values)`, with a backward pass that leaves out the
/// gradient of `values` when `values` does not track gradients. f32 on the CPU; elsewhere a
/// plain matmul.
pub fn attention_weighted_sum(alpha: &Tensor, values: &Tensor) -> Result<Tensor> {
    if eligible(&[alpha, values]) {
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
        let (alpha, values) = (contiguous_f32(s1, l1, OP)?, contiguous_f32(s2, l2, OP)?);
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
    use crate::kernels::testing::max_diff;
    use candle_core::Device;

    #[test]
    fn matches_the_unfused_computation() {
        let dev = Device::Cpu;
        let proj = Tensor::randn(0f32, 1.0, (2, 7, 37), &dev).unwrap();
        let att2 = Tensor::randn(0f32, 1.0, (2, 3, 37), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, 37, &dev).unwrap();
        let fused = attention_scores(&proj, &att2, &w).unwrap();
        let diff = max_diff(&fused, &unfused_scores(&proj, &att2, &w));
        assert!(diff < 1e-4, "{diff}");
    }

    /// The scores through candle's ops: the `(B, Q, P, A)` broadcast, ReLU, product and sum.
    fn unfused_scores(proj: &Tensor, att2: &Tensor, w: &Tensor) -> Tensor {
        let a = w.dim(0).unwrap();
        proj.unsqueeze(1)
            .unwrap()
            .broadcast_add(&att2.unsqueeze(2).unwrap())
            .unwrap()
            .relu()
            .unwrap()
            .broadcast_mul(&w.reshape((1, 1, 1, a)).unwrap())
            .unwrap()
            .sum(3)
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

    #[test]
    fn attention_score_gradients_match_the_unfused_computation() {
        let dev = Device::Cpu;
        let proj_var = candle_core::Var::randn(0f32, 1.0, (2, 7, 37), &dev).unwrap();
        let att2_var = candle_core::Var::randn(0f32, 1.0, (2, 3, 37), &dev).unwrap();
        let w_var = candle_core::Var::randn(0f32, 1.0, 37, &dev).unwrap();
        let (proj, att2, w) = (
            proj_var.as_tensor(),
            att2_var.as_tensor(),
            w_var.as_tensor(),
        );
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 7), &dev).unwrap();
        let loss = |t: &Tensor| (t * &weights).unwrap().sum_all().unwrap();

        let fused = attention_scores(proj, att2, w).unwrap();
        let plain = unfused_scores(proj, att2, w);
        let g_fused = loss(&fused).backward().unwrap();
        let g_plain = loss(&plain).backward().unwrap();
        for t in [proj, att2, w] {
            let (a, b) = (g_fused.get(t).unwrap(), g_plain.get(t).unwrap());
            assert_eq!(a.dims(), b.dims());
            assert!(max_diff(a, b) < 1e-4, "{}", max_diff(a, b));
        }
    }
}
