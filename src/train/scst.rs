//! Self-critical sequence training (Rennie et al. 2017): REINFORCE on sampled captions with
//! CIDEr-D as the reward and a baseline that needs no learned critic.
//!
//! For every image, `N` captions are drawn from the decoder ([`crate::model::sample`]), each
//! rewarded with CIDEr-D against the image's training references (document frequencies of the
//! whole training split, counted once: [`crate::metrics::cider::CiderD`], the implementation
//! `gaze eval` reports). The baseline is the greedy caption's reward, or the mean reward of
//! the image's other samples (Luo 2020). The loss is
//!
//! `-(1 / W) * sum over samples s, words t of (r_s - b_s) * log p(w_{s,t} | w_{s,<t})`
//!
//! with `W` the number of sampled words (`<end>` included, nothing after it), minus an
//! optional entropy bonus `beta * (1 / W) * sum H(p_t)`. The log-probabilities come from a
//! teacher-forced pass over the samples without dropout, so they are exactly those of the
//! distribution the words were drawn from.

use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::model::decoder::{Decoder, TeacherOptions};

/// What a sample's reward is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScstBaseline {
    /// The reward of the greedy caption of the same image (Rennie et al.).
    Greedy,
    /// The mean reward of the image's other samples (needs at least two samples).
    Mean,
}

/// Per sample, the baseline its reward is compared with. `rewards` holds `per_image` samples
/// of each image in turn; `greedy` one reward per image (needed for [`ScstBaseline::Greedy`]).
pub fn baselines(
    rewards: &[f64],
    per_image: usize,
    kind: ScstBaseline,
    greedy: Option<&[f64]>,
) -> std::result::Result<Vec<f64>, String> {
    if per_image == 0 || !rewards.len().is_multiple_of(per_image) {
        return Err(format!(
            "{} rewards do not divide into images of {per_image} samples",
            rewards.len()
        ));
    }
    let images = rewards.len() / per_image;
    match kind {
        ScstBaseline::Greedy => {
            let greedy = greedy.ok_or("the greedy baseline needs the greedy captions' rewards")?;
            if greedy.len() != images {
                return Err(format!(
                    "{} greedy rewards for {images} images",
                    greedy.len()
                ));
            }
            Ok(rewards
                .iter()
                .enumerate()
                .map(|(i, _)| greedy[i / per_image])
                .collect())
        }
        ScstBaseline::Mean => {
            if per_image < 2 {
                return Err(
                    "the mean baseline needs at least two samples per image (--scst-samples)"
                        .into(),
                );
            }
            let mut out = Vec::with_capacity(rewards.len());
            for image in rewards.chunks(per_image) {
                let total: f64 = image.iter().sum();
                for &r in image {
                    out.push((total - r) / (per_image - 1) as f64);
                }
            }
            Ok(out)
        }
    }
}

/// The SCST loss of one batch and what the log reports of it.
pub struct ScstLoss {
    /// Scalar tensor for `backward`.
    pub loss: Tensor,
    pub value: f32,
    /// Sampled words the loss is averaged over (`<end>` included).
    pub words: usize,
    /// Mean entropy per word of the decoder's distributions (nats).
    pub entropy: f32,
}

/// The loss over `sequences` (each `<start>` then the drawn words; everything after the first
/// `end` is masked out) with per-sequence `advantages` (reward minus baseline). `features`
/// holds one row per sequence (`(S, P, E)` or `(S, g, g, E)`).
pub fn scst_loss(
    decoder: &Decoder,
    features: &Tensor,
    sequences: &[Vec<u32>],
    end: u32,
    advantages: &[f32],
    entropy_weight: f64,
) -> Result<ScstLoss> {
    let rows = sequences.len();
    if features.dim(0)? != rows || advantages.len() != rows {
        candle_core::bail!(
            "{} feature rows and {} advantages for {rows} sequences",
            features.dim(0)?,
            advantages.len()
        );
    }
    let device = features.device().clone();
    // A sequence counts up to and including its first `end` (the first token is `<start>`).
    let lengths: Vec<usize> = sequences
        .iter()
        .map(|s| match s.iter().skip(1).position(|&t| t == end) {
            Some(i) => i + 2,
            None => s.len(),
        })
        .collect();
    let width = lengths.iter().copied().max().unwrap_or(0);
    let mut padded = vec![0u32; rows * width];
    for (r, s) in sequences.iter().enumerate() {
        padded[r * width..r * width + lengths[r]].copy_from_slice(&s[..lengths[r]]);
    }
    let captions = Tensor::from_vec(padded, (rows, width), &device)?;
    // Per step, the chosen words' log-probabilities (and entropies), zero-padded to all rows,
    // in the loop's sorted row order.
    let mut chosen: Vec<Tensor> = Vec::new();
    let mut entropies: Vec<Tensor> = Vec::new();
    let sorted = decoder.teacher_forced_steps(
        features,
        &captions,
        &lengths,
        &mut TeacherOptions::default(),
        |step| {
            let log_probs = candle_nn::ops::log_softmax(step.logits, D::Minus1)?;
            let picked = log_probs
                .gather(&step.targets.unsqueeze(1)?, 1)?
                .squeeze(1)?;
            chosen.push(picked.pad_with_zeros(0, 0, rows - step.bt)?);
            // Entropy per row; it joins the loss only with a non-zero weight.
            let h = (log_probs.exp()? * &log_probs)?.sum(1)?.neg()?;
            entropies.push(h.pad_with_zeros(0, 0, rows - step.bt)?);
            Ok(())
        },
    )?;
    let words: usize = sorted.decode_lengths.iter().sum();
    if words == 0 {
        candle_core::bail!("no sampled words to learn from (every sequence is only <start>)");
    }
    let weights: Vec<f32> = sorted.sort_ind.iter().map(|&i| advantages[i]).collect();
    let weights = Tensor::from_vec(weights, (1, rows), &device)?;
    let log_probs = Tensor::stack(&chosen, 0)?; // (T, rows)
    let policy = log_probs
        .broadcast_mul(&weights)?
        .sum_all()?
        .neg()?
        .affine(1.0 / words as f64, 0.0)?;
    let mean_entropy = (Tensor::stack(&entropies, 0)?.sum_all()? / words as f64)?;
    let entropy = mean_entropy.to_scalar::<f32>()?;
    let loss = if entropy_weight == 0.0 {
        policy
    } else {
        (policy - (mean_entropy * entropy_weight)?)?
    };
    Ok(ScstLoss {
        value: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        loss,
        words,
        entropy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use crate::model::init::testing::tiny_decoder;
    use candle_core::{Device, Var};

    fn tiny() -> (Vec<(String, Var)>, Decoder, ModelConfig) {
        tiny_decoder(2, (3, 3, 4), 6, 9, 1.0, |n| {
            n == "decoder.fc.weight" || n == "decoder.fc.bias"
        })
    }

    fn features(rows: usize, cfg: &ModelConfig) -> Tensor {
        crate::model::init::testing::features(rows, cfg, 4)
    }

    /// Log-probabilities of each sequence's words from the plain teacher-forced forward.
    fn word_log_probs(decoder: &Decoder, feats: &Tensor, seqs: &[Vec<u32>]) -> Vec<Vec<f64>> {
        let mut out = Vec::new();
        for (r, s) in seqs.iter().enumerate() {
            let caps = Tensor::from_vec(s.clone(), (1, s.len()), &Device::Cpu).unwrap();
            let tf = decoder
                .forward_teacher(&feats.narrow(0, r, 1).unwrap(), &caps, &[s.len()])
                .unwrap();
            let lp = candle_nn::ops::log_softmax(&tf.predictions, D::Minus1).unwrap();
            let lp: Vec<Vec<f32>> = lp.squeeze(0).unwrap().to_vec2().unwrap();
            out.push(
                (1..s.len())
                    .map(|t| lp[t - 1][s[t] as usize] as f64)
                    .collect(),
            );
        }
        out
    }

    #[test]
    fn the_loss_is_the_advantage_weighted_log_likelihood() {
        let (_w, decoder, cfg) = tiny();
        let seqs = vec![vec![0, 2, 3, 1], vec![0, 4, 1], vec![0, 5, 5, 2, 3]];
        let adv = [0.5f32, -1.25, 2.0];
        let feats = features(3, &cfg);
        let got = scst_loss(&decoder, &feats, &seqs, 1, &adv, 0.0).unwrap();
        let lps = word_log_probs(&decoder, &feats, &seqs);
        let words: usize = lps.iter().map(Vec::len).sum();
        assert_eq!(got.words, words);
        assert_eq!(words, 3 + 2 + 4);
        let want: f64 = -lps
            .iter()
            .zip(adv)
            .map(|(l, a)| a as f64 * l.iter().sum::<f64>())
            .sum::<f64>()
            / words as f64;
        assert!(
            (got.value as f64 - want).abs() < 1e-5,
            "{} vs {want}",
            got.value
        );
        // Zero advantage, zero loss.
        let zero = scst_loss(&decoder, &feats, &seqs, 1, &[0.0; 3], 0.0).unwrap();
        assert_eq!(zero.value, 0.0);
    }

    #[test]
    fn nothing_after_end_counts() {
        let (_w, decoder, cfg) = tiny();
        let feats = features(2, &cfg);
        let adv = [1.0f32, -0.5];
        let short = vec![vec![0, 2, 1], vec![0, 3, 4, 1]];
        let a = scst_loss(&decoder, &feats, &short, 1, &adv, 0.0).unwrap();
        // Words after the first <end> are masked: they change neither the loss nor the count.
        let longer = vec![vec![0, 2, 1, 5, 5, 3], vec![0, 3, 4, 1, 1, 2]];
        let b = scst_loss(&decoder, &feats, &longer, 1, &adv, 0.0).unwrap();
        assert_eq!((a.value, a.words), (b.value, b.words));
        assert_eq!(a.words, 2 + 3);
        // Without the <end> (another end id), they do count.
        let c = scst_loss(&decoder, &feats, &longer, 99, &adv, 0.0).unwrap();
        assert_eq!(c.words, 5 + 5);
        assert_ne!(c.value, a.value);
        // A sequence's loss part does not depend on others: sum of single-row losses, each
        // weighted by its word count, is the batch loss times all words.
        let mut total = 0.0f64;
        for r in 0..2 {
            let one = scst_loss(
                &decoder,
                &feats.narrow(0, r, 1).unwrap(),
                &short[r..r + 1],
                1,
                &adv[r..r + 1],
                0.0,
            )
            .unwrap();
            total += one.value as f64 * one.words as f64;
        }
        assert!((total - a.value as f64 * a.words as f64).abs() < 1e-5);
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let (vars, decoder, cfg) = tiny();
        let seqs = vec![vec![0, 2, 3, 1], vec![0, 4, 1]];
        let adv = [0.75f32, -1.5];
        let feats = features(2, &cfg);
        let loss = scst_loss(&decoder, &feats, &seqs, 1, &adv, 0.1).unwrap();
        let grads = loss.loss.backward().unwrap();
        let var: &Var = &vars.iter().find(|(n, _)| n == "decoder.fc.bias").unwrap().1;
        let g: Vec<f32> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
        let base: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let eps = 1e-2f32;
        for i in 0..base.len() {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
                let l = scst_loss(&decoder, &feats, &seqs, 1, &adv, 0.1)
                    .unwrap()
                    .value;
                var.set(&Tensor::new(base.clone(), &Device::Cpu).unwrap())
                    .unwrap();
                l
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - g[i]).abs() < 2e-3,
                "bias {i}: analytic {} numeric {numeric}",
                g[i]
            );
        }
    }

    #[test]
    fn baselines_by_hand() {
        let rewards = [1.0, 2.0, 4.0, 0.5, 0.5, 2.0];
        let mean = baselines(&rewards, 3, ScstBaseline::Mean, None).unwrap();
        assert_eq!(mean, vec![3.0, 2.5, 1.5, 1.25, 1.25, 0.5]);
        let greedy = baselines(&rewards, 3, ScstBaseline::Greedy, Some(&[1.5, 0.0])).unwrap();
        assert_eq!(greedy, vec![1.5, 1.5, 1.5, 0.0, 0.0, 0.0]);
        assert!(baselines(&rewards, 1, ScstBaseline::Mean, None).is_err());
        assert!(baselines(&rewards, 3, ScstBaseline::Greedy, None).is_err());
        assert!(baselines(&rewards, 4, ScstBaseline::Mean, None).is_err());
    }
}
