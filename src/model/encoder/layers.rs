//! Convolution and batch normalisation built from named tensors.

use candle_core::{Module, Result, Tensor};
use candle_nn::ModuleT;

use crate::model::weights::WeightsView;

/// A bias-free 2-D convolution (PyTorch `Conv2d(bias=False)`), square kernel.
#[derive(Debug, Clone)]
pub struct Conv {
    pub weight: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl Conv {
    pub fn load(
        w: &WeightsView,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        let weight = w.get("weight", &[c_out, c_in, kernel, kernel]);
        Conv {
            weight,
            stride,
            padding,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)
    }
}

/// `BatchNorm2d` (eps 1e-5, momentum 0.1). Inference uses the running statistics as one
/// scale and shift; training uses batch statistics and updates the running ones.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    inner: candle_nn::BatchNorm,
    /// Full tensor-name prefix (e.g. `encoder.resnet.1`), to save the running statistics.
    name: String,
}

pub const BN_EPS: f64 = 1e-5;

impl BatchNorm {
    pub fn load(w: &WeightsView, channels: usize) -> Self {
        Self::load_eps(w, channels, BN_EPS)
    }

    pub fn load_eps(w: &WeightsView, channels: usize, eps: f64) -> Self {
        let weight = w.get("weight", &[channels]);
        let bias = w.get("bias", &[channels]);
        let mean = w.get("running_mean", &[channels]);
        let var = w.get("running_var", &[channels]);
        let inner = candle_nn::BatchNorm::new(channels, mean, var, weight, bias, eps)
            .expect("shapes were checked by Weights::get");
        BatchNorm {
            inner,
            name: w.prefix().to_string(),
        }
    }

    /// Per-channel `(scale, shift)` such that inference is `x * scale + shift`.
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let (weight, bias) = self
            .inner
            .weight_and_bias()
            .expect("built with weight and bias");
        let scale = (weight / (self.inner.running_var().detach() + self.inner.eps())?.sqrt()?)?;
        let shift = (bias - (self.inner.running_mean().detach() * &scale)?)?;
        Ok((scale, shift))
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            return self.inner.forward_t(x, true);
        }
        let (scale, shift) = self.scale_shift()?;
        let c = scale.dim(0)?;
        x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)
    }

    pub fn running_mean(&self) -> &Tensor {
        self.inner.running_mean()
    }

    pub fn running_var(&self) -> &Tensor {
        self.inner.running_var()
    }

    pub fn weight_and_bias(&self) -> (&Tensor, &Tensor) {
        self.inner
            .weight_and_bias()
            .expect("built with weight and bias")
    }

    pub fn eps(&self) -> f64 {
        self.inner.eps()
    }

    /// The running statistics under their tensor names (they change in training mode).
    pub fn buffers(&self) -> [(String, Tensor); 2] {
        [
            (
                format!("{}.running_mean", self.name),
                self.running_mean().clone(),
            ),
            (
                format!("{}.running_var", self.name),
                self.running_var().clone(),
            ),
        ]
    }
}

/// A linear layer `y = x W^T + b` with PyTorch's `weight` (out, in) and `bias` (out).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn load(w: &WeightsView, d_in: usize, d_out: usize) -> Self {
        Linear {
            weight: w.get("weight", &[d_out, d_in]),
            bias: w.get("bias", &[d_out]),
        }
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::Linear::new(self.weight.clone(), Some(self.bias.clone())).forward(x)
    }
}
