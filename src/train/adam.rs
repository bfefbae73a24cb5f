//! Adam, as `torch.optim.Adam` computes it (no weight decay, no amsgrad), with its state
//! (moments and step counts) exposed for exact checkpoints, and the tutorial's gradient
//! clipping (each gradient element clamped to `[-clip, clip]`).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

pub struct AdamParam {
    pub name: String,
    pub var: Var,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: u64,
}

pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub params: Vec<AdamParam>,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, lr: f64) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(AdamParam {
                    name,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
                    var,
                    step: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            params,
        })
    }

    /// One update from `grads`, clamping each gradient element to `[-clip, clip]` first.
    /// Parameters without a gradient are left alone (their step count does not advance).
    pub fn step(&mut self, grads: &GradStore, clip: Option<f64>) -> Result<()> {
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detached: a gradient carries the graph of the step that made it, and moments
            // built from it would keep every step's activations alive.
            let grad = grad.detach();
            let grad = match clip {
                Some(c) => grad.clamp(-c, c)?,
                None => grad,
            };
            p.step += 1;
            p.exp_avg = ((&p.exp_avg * self.beta1)? + (&grad * (1.0 - self.beta1))?)?;
            p.exp_avg_sq = ((&p.exp_avg_sq * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let bias_correction1 = 1.0 - self.beta1.powi(p.step as i32);
            let bias_correction2 = 1.0 - self.beta2.powi(p.step as i32);
            let step_size = self.lr / bias_correction1;
            let denom = ((p.exp_avg_sq.sqrt()? / bias_correction2.sqrt())? + self.eps)?;
            let update = ((&p.exp_avg / denom)? * step_size)?;
            let next = (p.var.as_tensor().detach() - update)?;
            p.var.set(&next)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`{prefix}.exp_avg.{name}`, `{prefix}.exp_avg_sq.{name}`).
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            out.push((format!("{prefix}.exp_avg.{}", p.name), p.exp_avg.clone()));
            out.push((
                format!("{prefix}.exp_avg_sq.{}", p.name),
                p.exp_avg_sq.clone(),
            ));
        }
        out
    }

    /// Step counts by parameter name.
    pub fn steps(&self) -> HashMap<String, u64> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.step))
            .collect()
    }

    /// Restores moments and step counts saved by [`Adam::state_tensors`] / [`Adam::steps`].
    /// Returns the names of parameters that had no saved state (they start fresh).
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: &HashMap<String, u64>,
        prefix: &str,
    ) -> Result<Vec<String>> {
        let mut fresh = Vec::new();
        for p in &mut self.params {
            let m = tensors.get(&format!("{prefix}.exp_avg.{}", p.name));
            let v = tensors.get(&format!("{prefix}.exp_avg_sq.{}", p.name));
            match (m, v, steps.get(&p.name)) {
                (Some(m), Some(v), Some(&step))
                    if m.dims() == p.var.dims() && v.dims() == p.var.dims() =>
                {
                    p.exp_avg = m.to_device(p.var.device())?;
                    p.exp_avg_sq = v.to_device(p.var.device())?;
                    p.step = step;
                }
                _ => fresh.push(p.name.clone()),
            }
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_pytorch_adam_on_a_quadratic() {
        // torch: p = tensor([1., -2.]); Adam(lr=0.1); 3 steps of loss = sum(p^2)
        // gives p = [0.7015863, -1.7006234].
        let var = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("p".into(), var.clone())], 0.1).unwrap();
        for _ in 0..3 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            adam.step(&grads, Some(5.0)).unwrap();
        }
        let p: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        assert!(
            (p[0] - 0.701_586_3).abs() < 1e-6 && (p[1] + 1.700_623_4).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(adam.steps()["p"], 3);
        // The gradient of p^2 is built from p, so it carries a graph; the moments must not
        // (they would keep every step's graph alive).
        for (name, t) in adam.state_tensors("opt") {
            assert!(!t.track_op(), "{name} keeps a graph");
        }
    }

    #[test]
    fn clipping_clamps_each_element() {
        let var = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("p".into(), var.clone())], 1.0).unwrap();
        let loss = (var.as_tensor() * &Tensor::new(&[100f32, 0.5], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        adam.step(&loss.backward().unwrap(), Some(5.0)).unwrap();
        let m: Vec<f32> = adam.params[0].exp_avg.to_vec1().unwrap();
        assert!(
            (m[0] - 0.5).abs() < 1e-6 && (m[1] - 0.05).abs() < 1e-6,
            "{m:?}"
        );
    }
}
