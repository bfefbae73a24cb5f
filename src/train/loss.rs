//! The tutorial's training loss on one batch: cross-entropy over the real (unpadded) steps of
//! every caption, plus doubly stochastic attention regularisation
//! `alpha_c * mean_{b,p}((1 - sum_t alpha_{b,t,p})^2)`, and its top-5 accuracy.

use candle_core::{DType, Result, Tensor, D};

use crate::model::decoder::{Decoder, TeacherOptions};

/// A batch's loss (a scalar tensor for `backward`) and its parts for reporting.
pub struct BatchLoss {
    pub loss: Tensor,
    /// Mean cross-entropy per predicted word.
    pub cross_entropy: f32,
    /// The attention regularisation term (already multiplied by `alpha_c`).
    pub attention_reg: f32,
    /// Predicted words (sum of decode lengths).
    pub words: usize,
    /// Words whose target was among the five highest scores.
    pub top5_correct: usize,
}

impl BatchLoss {
    pub fn value(&self) -> f32 {
        self.cross_entropy + self.attention_reg
    }
}

/// Runs the teacher-forced pass over `features` (`(B, P, E)` or `(B, S, S, E)`) and computes
/// the loss. `captions` is `(B, L)` u32, `lengths` include `<start>` and `<end>`.
pub fn batch_loss(
    decoder: &Decoder,
    features: &Tensor,
    captions: &Tensor,
    lengths: &[usize],
    alpha_c: f64,
    opts: &mut TeacherOptions,
) -> Result<BatchLoss> {
    let b = features.dim(0)?;
    let mut ce_sum: Option<Tensor> = None;
    let mut top5: Option<Tensor> = None;
    let mut alpha_sum: Option<Tensor> = None;
    let sorted = decoder.teacher_forced_steps(features, captions, lengths, opts, |step| {
        let targets = step.targets.unsqueeze(1)?;
        let log_probs = candle_nn::ops::log_softmax(step.logits, D::Minus1)?;
        let nll = log_probs.gather(&targets, 1)?.sum_all()?.neg()?;
        ce_sum = Some(match ce_sum.take() {
            Some(acc) => (acc + nll)?,
            None => nll,
        });
        // A target is in the top 5 when fewer than five scores exceed it.
        let target_score = step.logits.gather(&targets, 1)?.detach();
        let above = step
            .logits
            .detach()
            .broadcast_gt(&target_score)?
            .to_dtype(DType::F32)?
            .sum(1)?;
        let hits = above.lt(5f64)?.to_dtype(DType::F32)?.sum_all()?;
        top5 = Some(match top5.take() {
            Some(acc) => (acc + hits)?,
            None => hits,
        });
        let alpha = step.alpha.pad_with_zeros(0, 0, b - step.bt)?;
        alpha_sum = Some(match alpha_sum.take() {
            Some(acc) => (acc + alpha)?,
            None => alpha,
        });
        Ok(())
    })?;
    let words: usize = sorted.decode_lengths.iter().sum();
    let (Some(ce_sum), Some(top5), Some(alpha_sum)) = (ce_sum, top5, alpha_sum) else {
        candle_core::bail!("a batch with no words to predict (every caption length < 2)");
    };
    let ce = (ce_sum / words as f64)?;
    let reg = ((1.0 - alpha_sum)?.sqr()?.mean_all()? * alpha_c)?;
    let loss = (&ce + &reg)?;
    Ok(BatchLoss {
        cross_entropy: ce.to_scalar::<f32>()?,
        attention_reg: reg.to_scalar::<f32>()?,
        top5_correct: top5.to_scalar::<f32>()? as usize,
        words,
        loss,
    })
}
