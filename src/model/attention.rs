//! Soft attention (Xu et al., "Show, Attend and Tell", 2015, section 4.2), with the tutorial's
//! parameter names: `encoder_att`, `decoder_att`, `full_att`.
//!
//! `alpha = softmax_p(full_att(relu(encoder_att(enc_p) + decoder_att(h))))`, and the
//! attention-weighted encoding is `sum_p alpha_p * enc_p`. The encoder projection
//! `encoder_att(enc)` does not depend on the decoding step, so callers compute it once per
//! image ([`Attention::project_encoder`]) instead of once per step as the tutorial does.

use candle_core::{Module, Result, Tensor, D};

use super::encoder::layers::Linear;
use super::weights::WeightsView;
use crate::kernels::attention::{attention_scores, attention_weighted_sum};
use crate::kernels::projection::project;

#[derive(Debug, Clone)]
pub struct Attention {
    pub encoder_att: Linear,
    pub decoder_att: Linear,
    pub full_att: Linear,
}

impl Attention {
    pub fn load(
        w: &WeightsView,
        encoder_dim: usize,
        decoder_dim: usize,
        attention_dim: usize,
    ) -> Self {
        Attention {
            encoder_att: Linear::load(&w.pp("encoder_att"), encoder_dim, attention_dim),
            decoder_att: Linear::load(&w.pp("decoder_att"), decoder_dim, attention_dim),
            full_att: Linear::load(&w.pp("full_att"), attention_dim, 1),
        }
    }

    /// `(B, P, E)` encoder output to its `(B, P, A)` projection.
    pub fn project_encoder(&self, encoder_out: &Tensor) -> Result<Tensor> {
        // Through the fused op, whose backward skips the (frozen) encoder output's gradient.
        let proj = project(encoder_out, &self.encoder_att.weight)?;
        proj.broadcast_add(&self.encoder_att.bias)
    }

    /// Attention for `Q` decoder states per image.
    ///
    /// `encoder_out` is `(B, P, E)`, `encoder_proj` its projection `(B, P, A)`, `h` is
    /// `(B, Q, D)`. Returns the weighted encoding `(B, Q, E)` and the weights `(B, Q, P)`.
    pub fn forward(
        &self,
        encoder_out: &Tensor,
        encoder_proj: &Tensor,
        h: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let att2 = self.decoder_att.forward(h)?; // (B, Q, A)
        let w = self.full_att.weight.flatten_all()?;
        // On the CPU one fused pass instead of three over (B, Q, P, A), and one for the
        // gradients when training.
        let scores = attention_scores(encoder_proj, &att2, &w)?;
        let scores = scores.broadcast_add(&self.full_att.bias.reshape((1, 1, 1))?)?;
        let alpha = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let awe = attention_weighted_sum(&alpha, encoder_out)?; // (B, Q, P) x (B, P, E)
        Ok((awe, alpha))
    }
}
