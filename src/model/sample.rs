//! Sampled captions: words drawn from the decoder's distribution instead of searched.
//!
//! Used by self-critical training (multinomial samples of the policy) and by `--sample` in
//! `gaze caption` / `gaze eval`. Every image draws from its own seeded stream
//! ([`image_seed`]), one number per live sample per step in a fixed order, so a caption does
//! not depend on which other images share its batch.

use candle_core::{DType, Result, Tensor};

use super::beam::SpecialTokens;
use super::decoder::Decoder;
use crate::rng::{mix64, SplitMix64};

/// Which part of the distribution a word is drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Truncation {
    /// The whole vocabulary (plain multinomial sampling).
    None,
    /// The `k` most likely words (ties go to the lower id).
    TopK(usize),
    /// The smallest set of most likely words whose probability reaches `p` (nucleus sampling).
    TopP(f32),
}

impl std::str::FromStr for Truncation {
    type Err = String;

    /// `multinomial`, `top-k:K` or `top-p:P`, as the command line and config.toml write it.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{text:?}: expected multinomial, top-k:K or top-p:P");
        match text.split_once(':') {
            None if text == "multinomial" => Ok(Truncation::None),
            Some(("top-k", k)) => match k.parse::<usize>() {
                Ok(k) if k > 0 => Ok(Truncation::TopK(k)),
                _ => Err(format!("{text:?}: K must be a whole number of at least 1")),
            },
            Some(("top-p", p)) => match p.parse::<f32>() {
                Ok(p) if p > 0.0 && p <= 1.0 => Ok(Truncation::TopP(p)),
                _ => Err(format!("{text:?}: P must be in (0, 1]")),
            },
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Truncation::None => write!(f, "multinomial"),
            Truncation::TopK(k) => write!(f, "top-k:{k}"),
            Truncation::TopP(p) => write!(f, "top-p:{p}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    pub truncation: Truncation,
    /// Scores are divided by this before the softmax (1: the model's distribution).
    pub temperature: f32,
    /// Captions drawn per image.
    pub samples: usize,
    /// As in beam search: a caption stops after step `max_steps + 1` (at most that many
    /// tokens after `<start>`).
    pub max_steps: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            truncation: Truncation::None,
            temperature: 1.0,
            samples: 1,
            max_steps: 50,
        }
    }
}

/// One sampled caption.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledCaption {
    /// `<start>`, the words, and `<end>` if it was drawn.
    pub tokens: Vec<u32>,
    /// Sum over the drawn tokens of the model's log-probability (temperature 1, no
    /// truncation), so samples drawn with different settings compare on one scale.
    pub log_prob: f32,
    /// Attention weights per drawn token (empty unless asked for).
    pub alphas: Vec<Vec<f32>>,
    pub finished: bool,
}

/// The stream of image number `ordinal` (its position in the whole input, not in a batch).
pub fn image_seed(seed: u64, ordinal: u64) -> u64 {
    mix64(seed ^ mix64(ordinal.wrapping_add(0x005E_ED0F_1A6E)))
}

/// Draws `opts.samples` captions for every image of `encoder_out` (`(B, S, S, E)` or
/// `(B, P, E)`); `seeds[i]` is image i's stream. Returns, per image, its samples in draw order.
pub fn sample_captions(
    decoder: &Decoder,
    encoder_out: &Tensor,
    special: SpecialTokens,
    opts: &SampleOptions,
    seeds: &[u64],
    keep_alphas: bool,
) -> Result<Vec<Vec<SampledCaption>>> {
    let b = encoder_out.dim(0)?;
    if seeds.len() != b {
        candle_core::bail!("{} seeds for {b} images", seeds.len());
    }
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        candle_core::bail!("temperature must be positive, got {}", opts.temperature);
    }
    let n = opts.samples.max(1);
    let e = *encoder_out.dims().last().expect("rank >= 3");
    let device = encoder_out.device().clone();
    let enc = encoder_out
        .reshape((b, (), e))?
        .to_dtype(DType::F32)?
        .detach();
    let p = enc.dim(1)?;
    let vocab = decoder.vocab_size;
    let proj = decoder.project_encoder(&enc)?.detach();
    let (h0, c0) = decoder.init_hidden_state(&enc)?;
    let d = h0.dim(1)?;
    let mut h = h0.unsqueeze(1)?.repeat((1, n, 1))?;
    let mut c = c0.unsqueeze(1)?.repeat((1, n, 1))?;
    let mut rngs: Vec<SplitMix64> = seeds.iter().map(|&s| SplitMix64::new(s)).collect();
    let mut out: Vec<Vec<SampledCaption>> = (0..b)
        .map(|_| {
            (0..n)
                .map(|_| SampledCaption {
                    tokens: vec![special.start],
                    log_prob: 0.0,
                    alphas: Vec::new(),
                    finished: false,
                })
                .collect()
        })
        .collect();
    let mut prev = vec![special.start; b * n];
    let mut scratch = Scratch::default();
    for _step in 0..=opts.max_steps {
        let words = Tensor::from_vec(prev.clone(), (b, n), &device)?;
        let step = decoder.step(&enc, &proj, &words, &h, &c, None)?;
        let logits: Vec<f32> = step.logits.flatten_all()?.to_vec1()?;
        let alpha: Vec<f32> = if keep_alphas {
            step.alpha.flatten_all()?.to_vec1()?
        } else {
            Vec::new()
        };
        let mut live = false;
        for (img, rng) in rngs.iter_mut().enumerate() {
            for (s, caption) in out[img].iter_mut().enumerate() {
                let row = img * n + s;
                if caption.finished {
                    continue;
                }
                let scores = &logits[row * vocab..(row + 1) * vocab];
                let word = scratch.draw(scores, opts, rng.next_f64());
                caption.log_prob += log_softmax_at(scores, word);
                caption.tokens.push(word as u32);
                if keep_alphas {
                    caption.alphas.push(alpha[row * p..(row + 1) * p].to_vec());
                }
                if word as u32 == special.end {
                    caption.finished = true;
                } else {
                    live = true;
                }
                prev[row] = word as u32;
            }
        }
        if !live {
            break;
        }
        h = step.h.reshape((b, n, d))?;
        c = step.c.reshape((b, n, d))?;
    }
    Ok(out)
}

/// `log_softmax(scores)[word]`, in f64 for a stable sum.
fn log_softmax_at(scores: &[f32], word: usize) -> f32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = scores.iter().map(|&s| (s as f64 - max).exp()).sum();
    (scores[word] as f64 - max - sum.ln()) as f32
}

/// Buffers reused across draws.
#[derive(Default)]
struct Scratch {
    probs: Vec<f64>,
    order: Vec<usize>,
}

impl Scratch {
    /// The word that uniform draw `u` in [0, 1) selects from `scores` under `opts`.
    fn draw(&mut self, scores: &[f32], opts: &SampleOptions, u: f64) -> usize {
        let t = opts.temperature as f64;
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        self.probs.clear();
        self.probs
            .extend(scores.iter().map(|&s| ((s as f64 - max) / t).exp()));
        let kept: usize = match opts.truncation {
            Truncation::None => {
                return pick(&self.probs, 0..self.probs.len(), u);
            }
            Truncation::TopK(k) => k.clamp(1, self.probs.len()),
            Truncation::TopP(_) => self.probs.len(),
        };
        self.order.clear();
        self.order.extend(0..self.probs.len());
        let probs = &self.probs;
        self.order
            .sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut kept = kept;
        if let Truncation::TopP(top_p) = opts.truncation {
            let total: f64 = probs.iter().sum();
            let target = (top_p as f64).clamp(0.0, 1.0) * total;
            let mut acc = 0.0;
            kept = self.order.len();
            for (i, &w) in self.order.iter().enumerate() {
                acc += probs[w];
                if acc >= target {
                    kept = i + 1;
                    break;
                }
            }
        }
        // Draw in id order over the kept words, so that the same set gives the same word
        // whatever order the sort left ties in.
        let chosen = &mut self.order[..kept];
        chosen.sort_unstable();
        pick(&self.probs, chosen.iter().copied(), u)
    }
}

/// The word of `candidates` (in order) where the cumulative weight passes `u` times the total.
fn pick(weights: &[f64], candidates: impl Iterator<Item = usize> + Clone, u: f64) -> usize {
    let total: f64 = candidates.clone().map(|w| weights[w]).sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for w in candidates {
        acc += weights[w];
        if acc > target {
            return w;
        }
        last = w;
    }
    last
}

/// The decoder's probabilities for the first word of every image, `(B, V)`.
#[cfg(test)]
fn first_word_probabilities(
    decoder: &Decoder,
    encoder_out: &Tensor,
    special: SpecialTokens,
) -> Result<Tensor> {
    let b = encoder_out.dim(0)?;
    let e = *encoder_out.dims().last().expect("rank >= 3");
    let enc = encoder_out.reshape((b, (), e))?.to_dtype(DType::F32)?;
    let proj = decoder.project_encoder(&enc)?;
    let (h, c) = decoder.init_hidden_state(&enc)?;
    let words = Tensor::from_vec(vec![special.start; b], (b, 1), enc.device())?;
    let step = decoder.step(
        &enc,
        &proj,
        &words,
        &h.unsqueeze(1)?,
        &c.unsqueeze(1)?,
        None,
    )?;
    candle_nn::ops::softmax(&step.logits.squeeze(1)?, candle_core::D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::testing::{features, tiny_decoder};

    fn tiny(vocab: usize, seed: u64) -> (Decoder, Tensor) {
        // Larger output weights than the initialisation's, so the distribution is far from
        // uniform and the tests below can tell words apart.
        let (_, decoder, cfg) = tiny_decoder(4, (6, 5, 7), vocab, seed, 20.0, |_| false);
        (decoder, features(3, &cfg, seed ^ 77))
    }

    const SPECIAL: SpecialTokens = SpecialTokens {
        start: 0,
        end: 1,
        unk: None,
    };

    #[test]
    fn same_seed_same_captions_and_batch_size_does_not_matter() {
        let (decoder, enc) = tiny(9, 3);
        let opts = SampleOptions {
            samples: 4,
            max_steps: 8,
            ..Default::default()
        };
        let seeds: Vec<u64> = (0..3).map(|i| image_seed(42, i)).collect();
        let all = sample_captions(&decoder, &enc, SPECIAL, &opts, &seeds, true).unwrap();
        let again = sample_captions(&decoder, &enc, SPECIAL, &opts, &seeds, true).unwrap();
        assert_eq!(all, again);
        for i in 0..3 {
            let one = enc.narrow(0, i, 1).unwrap();
            let alone =
                sample_captions(&decoder, &one, SPECIAL, &opts, &seeds[i..i + 1], true).unwrap();
            // The same words; the floats may differ in the last bit (other batch shapes sum
            // in other orders).
            for (a, b) in alone[0].iter().zip(&all[i]) {
                assert_eq!(a.tokens, b.tokens, "image {i}");
                assert!((a.log_prob - b.log_prob).abs() < 1e-4, "image {i}");
            }
        }
        let other: Vec<u64> = (0..3).map(|i| image_seed(43, i)).collect();
        let different = sample_captions(&decoder, &enc, SPECIAL, &opts, &other, true).unwrap();
        assert_ne!(different, all);
        for caption in all.iter().flatten() {
            assert_eq!(caption.tokens[0], 0);
            assert_eq!(caption.alphas.len(), caption.tokens.len() - 1);
            assert!(caption.tokens.len() <= opts.max_steps + 2);
            assert_eq!(caption.finished, caption.tokens.last() == Some(&1));
            assert!(caption.log_prob < 0.0);
        }
    }

    /// Chi-square test of the first word's histogram against the decoder's softmax.
    #[test]
    fn draws_follow_the_softmax() {
        let (decoder, enc) = tiny(6, 5);
        let enc = enc.narrow(0, 0, 1).unwrap();
        let probs: Vec<f32> = first_word_probabilities(&decoder, &enc, SPECIAL)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let draws = 20_000;
        let opts = SampleOptions {
            samples: draws,
            max_steps: 0,
            ..Default::default()
        };
        let got = sample_captions(&decoder, &enc, SPECIAL, &opts, &[7], false).unwrap();
        let mut counts = vec![0usize; 6];
        for c in &got[0] {
            assert_eq!(c.tokens.len(), 2);
            counts[c.tokens[1] as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&probs)
            .map(|(&o, &p)| {
                let e = p as f64 * draws as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum();
        // 5 degrees of freedom: P(chi2 > 20.5) = 0.001.
        assert!(
            chi2 < 20.5,
            "chi2 {chi2}, counts {counts:?}, probs {probs:?}"
        );
        assert!(
            probs.iter().all(|&p| p > 0.01),
            "a usable test distribution"
        );
    }

    #[test]
    fn truncation_keeps_only_the_likely_words() {
        let scores = [0.0f32, 3.0, 1.0, 2.9, -5.0];
        let mut s = Scratch::default();
        let top2 = SampleOptions {
            truncation: Truncation::TopK(2),
            ..Default::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = SplitMix64::new(1);
        for _ in 0..2000 {
            seen.insert(s.draw(&scores, &top2, rng.next_f64()));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
        // p(1) ~ 0.46 and p(3) ~ 0.42 of the whole: a nucleus of 0.5 needs both, 0.4 one.
        for (p, want) in [(0.4f32, vec![1usize]), (0.5, vec![1, 3])] {
            let opts = SampleOptions {
                truncation: Truncation::TopP(p),
                ..Default::default()
            };
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..2000 {
                seen.insert(s.draw(&scores, &opts, rng.next_f64()));
            }
            assert_eq!(seen.into_iter().collect::<Vec<_>>(), want, "top-p {p}");
        }
        // A tiny temperature is greedy; u just below 1 picks the last candidate.
        let cold = SampleOptions {
            temperature: 1e-3,
            ..Default::default()
        };
        assert_eq!(s.draw(&scores, &cold, 0.999_999), 1);
        assert_eq!(pick(&[1.0, 1.0], 0..2, 0.0), 0);
        assert_eq!(pick(&[1.0, 1.0], 0..2, 0.75), 1);
    }

    #[test]
    fn bad_settings_are_errors() {
        let (decoder, enc) = tiny(9, 3);
        let opts = SampleOptions {
            temperature: 0.0,
            ..Default::default()
        };
        assert!(sample_captions(&decoder, &enc, SPECIAL, &opts, &[1, 2, 3], false).is_err());
        assert!(
            sample_captions(&decoder, &enc, SPECIAL, &Default::default(), &[1], false).is_err()
        );
    }
}
