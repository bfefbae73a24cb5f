//! BLEU-1..4 as coco-caption (`pycocoevalcap` 1.2, `bleu_scorer.py`) computes it.
//!
//! The differences from NLTK ([`super::bleu_nltk`]) matter and are kept:
//! - the hypothesis n-gram total is `max(0, len - n + 1)` with no floor of 1, so an empty
//!   hypothesis adds nothing;
//! - precisions carry epsilons: `prod *= (C_k + 1e-15) / (G_k + 1e-9)`, `BLEU_k = prod^(1/k)`;
//! - the brevity ratio is `(T + 1e-15) / (R + 1e-9)` and the penalty `exp(1 - 1/ratio)` applies
//!   when the ratio is below 1, which it is even for T == R (a perfect corpus scores
//!   0.9999999996);
//! - the reference length is option `'closest'`, ties going to the shorter reference.
//!
//! Corpus scores come from counts summed over images; per-image scores use the same formula
//! on one image. Tokens are what the caller passes (coco-caption uses `str.split()` of the
//! PTB-tokenised text, see [`super::ptb`]).

use std::hash::Hash;

use serde::Serialize;

use super::ngram::{bleu_image_stats, intern_corpus, BleuImageStats};
use super::{check_corpus, MetricsError};

const SMALL: f64 = 1e-9;
const TINY: f64 = 1e-15;

/// Corpus and per-image BLEU-1..4 (index k-1 holds BLEU-k).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CocoBleu {
    pub corpus: [f64; 4],
    pub per_image: Vec<[f64; 4]>,
}

/// The statistics coco-caption keeps per image (and sums over the corpus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Comps {
    test_len: u64,
    ref_len: u64,
    guess: [u64; 4],
    correct: [u64; 4],
}

fn bleu_from(comps: &Comps) -> [f64; 4] {
    let mut out = [0.0; 4];
    let mut prod = 1.0f64;
    for (k, value) in out.iter_mut().enumerate() {
        prod *= (comps.correct[k] as f64 + TINY) / (comps.guess[k] as f64 + SMALL);
        *value = prod.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (comps.test_len as f64 + TINY) / (comps.ref_len as f64 + SMALL);
    if ratio < 1.0 {
        let penalty = (1.0 - 1.0 / ratio).exp();
        for v in &mut out {
            *v *= penalty;
        }
    }
    out
}

/// coco-caption's `Bleu(4).compute_score`: corpus BLEU-1..4 and the per-image values.
pub fn corpus_bleu<T, S, R>(references: &[R], hypotheses: &[S]) -> Result<CocoBleu, MetricsError>
where
    T: Eq + Hash,
    S: AsRef<[T]>,
    R: AsRef<[S]>,
{
    check_corpus(references, hypotheses)?;
    let corpus = intern_corpus(references, hypotheses);
    let stats: Vec<BleuImageStats> = corpus
        .references
        .iter()
        .zip(&corpus.hypotheses)
        .map(|(refs, hyp)| bleu_image_stats(refs, hyp, 4))
        .collect();
    Ok(from_image_stats(&stats))
}

/// [`corpus_bleu`] from per-image statistics.
pub(crate) fn from_image_stats(stats: &[BleuImageStats]) -> CocoBleu {
    let mut total = Comps::default();
    let mut per_image = Vec::with_capacity(stats.len());
    for s in stats {
        let mut comps = Comps {
            test_len: s.hypothesis_length as u64,
            ref_len: s.reference_length as u64,
            ..Comps::default()
        };
        for k in 0..4 {
            // coco-caption's guess: max(0, len - k) n-grams of order k + 1, no floor.
            comps.guess[k] = (s.hypothesis_length + 1).saturating_sub(k + 1) as u64;
            comps.correct[k] = s.clipped[k];
        }
        per_image.push(bleu_from(&comps));
        total.test_len += comps.test_len;
        total.ref_len += comps.ref_len;
        for k in 0..4 {
            total.guess[k] += comps.guess[k];
            total.correct[k] += comps.correct[k];
        }
    }
    CocoBleu {
        corpus: bleu_from(&total),
        per_image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn golden_corpus() {
        let (refs, hyps) = crate::metrics::tests_support::gold_corpus();
        let refs: Vec<Vec<Vec<&str>>> = refs
            .iter()
            .map(|r| r.iter().map(|s| split(s)).collect())
            .collect();
        let hyps: Vec<Vec<&str>> = hyps.iter().map(|h| split(h)).collect();
        let out = corpus_bleu(&refs, &hyps).unwrap();
        let expected = [
            0.5648413149417819,
            0.5229414425509095,
            0.4383931039074263,
            0.3825449980293719,
        ];
        for (got, want) in out.corpus.iter().zip(expected) {
            assert!((got - want).abs() <= 1e-15, "{got} vs {want}");
        }
        assert_eq!(out.per_image.len(), 4);
    }

    #[test]
    fn golden_edge_case() {
        let refs = vec![
            vec![
                split("a cat sits on the mat"),
                split("there is a cat on a mat"),
            ],
            vec![split("a dog runs in the park")],
        ];
        let hyps = vec![split("the cat on mat sits"), split("dog runs park")];
        let out = corpus_bleu(&refs, &hyps).unwrap();
        let expected = [
            0.6065306595610012,
            0.3501806395620099,
            2.6492666771333864e-06,
            8.665626141233947e-09,
        ];
        for (got, want) in out.corpus.iter().zip(expected) {
            assert!((got - want).abs() <= want * 1e-14, "{got} vs {want}");
        }
    }

    #[test]
    fn perfect_corpus_is_just_below_one_and_empty_adds_nothing() {
        let refs = vec![vec![split("a b c d e")]];
        let out = corpus_bleu(&refs, &[split("a b c d e")]).unwrap();
        // pycocoevalcap 1.2 on the same input.
        assert_eq!(
            out.corpus,
            [
                0.9999999996000004,
                0.9999999995750004,
                0.9999999995388893,
                0.9999999994791672
            ]
        );
        let refs2 = vec![vec![split("a b c d e")], vec![split("x y")]];
        let with_empty = corpus_bleu(&refs2, &[split("a b c d e"), vec![]]).unwrap();
        // The empty hypothesis changes only the reference length (7 vs 5).
        assert_eq!(
            with_empty.corpus,
            [
                0.6703200457675116,
                0.6703200457507535,
                0.6703200457265476,
                0.6703200456865146
            ]
        );
        assert!(with_empty.per_image[1][0] < 1e-15);
    }
}
