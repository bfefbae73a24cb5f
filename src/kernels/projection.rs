//! The encoder projection of soft attention, `encoder_att(encoder_out)` without its bias, as a
//! CPU kernel whose backward pass skips work nobody needs.
//!
//! The projection runs once per batch, and candle's backward pass of a product computes the
//! gradient of both operands: the `(B, P, E)` input gradient is as much work as the projection
//! itself, and with a frozen encoder nobody reads it. [`project`] skips it for an untracked
//! input.
//!
//! GPU path: the custom op runs for f32 on the CPU only ([`crate::kernels::eligible`]); on
//! every other device (CUDA) the same result comes from candle's broadcast matmul.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::kernels::operands::{contiguous_f32, eligible};

/// The name the projection gives in its errors.
const OP: &str = "projection";

/// `x W^T` for `x` `(B, P, K)` and `weight` `(N, K)`: a linear layer without its bias, whose
/// backward pass computes the gradient of `x` only when `x` tracks gradients. f32 on the CPU;
/// elsewhere a plain broadcast matmul.
pub fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if eligible(&[x, weight]) {
        x.contiguous()?.apply_op2(&weight.contiguous()?, Projection)
    } else {
        x.broadcast_matmul(&weight.t()?)
    }
}

struct Projection;

impl CustomOp2 for Projection {
    fn name(&self) -> &'static str {
        "projection"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (contiguous_f32(s1, l1, OP)?, contiguous_f32(s2, l2, OP)?);
        let (&[b, p, k], &[n, k2]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!("projection: expected (B, P, K) and (N, K)");
        };
        if k != k2 {
            candle_core::bail!(
                "projection: shapes {:?} and {:?} do not agree",
                l1.dims(),
                l2.dims()
            );
        }
        let m = b * p;
        let mut out = vec![0f32; m * n];
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // out (m x n, row-major) = x (m x k, row-major) times W^T (k x n: W read column-wise).
        // SAFETY: the pointers cover m*n, m*k and n*k floats, as the strides say.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((b, p, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, p, k) = x.dims3()?;
        let n = weight.dim(0)?;
        let grad2 = grad.reshape((b * p, n))?;
        // d W = grad^T x; d x = grad W, only when someone needs it.
        let weight_grad = grad2.t()?.matmul(&x.reshape((b * p, k))?)?;
        let x_grad = if x.track_op() {
            Some(grad2.matmul(weight)?.reshape((b, p, k))?)
        } else {
            None
        };
        Ok((x_grad, Some(weight_grad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::max_diff;
    use candle_core::Device;

    #[test]
    fn projection_and_its_gradients_match_broadcast_matmul() {
        let dev = Device::Cpu;
        let x_var = candle_core::Var::randn(0f32, 1.0, (3, 5, 19), &dev).unwrap();
        let w_var = candle_core::Var::randn(0f32, 1.0, (11, 19), &dev).unwrap();
        let (x, w) = (x_var.as_tensor(), w_var.as_tensor());
        let weights = Tensor::randn(0f32, 1.0, (3, 5, 11), &dev).unwrap();

        let fused = project(x, w).unwrap();
        let plain = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        assert_eq!(fused.dims(), &[3, 5, 11]);
        assert!(max_diff(&fused, &plain) < 1e-4);

        let loss = |t: &Tensor| (t * &weights).unwrap().sum_all().unwrap();
        let g_fused = loss(&fused).backward().unwrap();
        let g_plain = loss(&plain).backward().unwrap();
        for t in [x, w] {
            let (a, b) = (g_fused.get(t).unwrap(), g_plain.get(t).unwrap());
            assert!(max_diff(a, b) < 1e-4);
        }

        // A frozen input: the weight's gradient is the same and the input gets none.
        let frozen = x.detach();
        let out = project(&frozen, w).unwrap();
        let grads = loss(&out).backward().unwrap();
        assert!(max_diff(grads.get(w).unwrap(), g_plain.get(w).unwrap()) < 1e-4);
        assert!(grads.get(&frozen).is_none());
    }
}
