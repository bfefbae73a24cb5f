//! CIDEr-D as pycocoevalcap 1.2 computes it (`cider_scorer.py`, which it calls "CIDEr").
//!
//! What is kept exactly:
//! - document frequency df(g) = the number of images whose references (the union over that
//!   image's references) contain g, counted over **the evaluated corpus only**; N = images;
//! - weights `tf(g) * (ln N - ln max(1, df(g)))`: an n-gram absent from every reference gets
//!   the full `ln N`, one present in every image gets 0; N = 1 therefore scores 0;
//! - per order, `v = sum min(w_h, w_r) * w_r` (clipping), divided by `|w_h| |w_r|` when both
//!   norms are non-zero, times the Gaussian length penalty `E.powf(-(d^2) / (2 * 6^2))`
//!   (`np.e ** x`, not `exp`, to keep the same rounding);
//! - the "length" d compares is the number of **bigrams** (`max(0, words - 1)`), a quirk of
//!   the reference code;
//! - image score = mean over the 4 orders of the sum over references, divided by the number
//!   of references, times 10; corpus score = numpy's mean over images.
//!
//! Sums run in the reference code's order (dict insertion order, numpy's pairwise mean), so
//! the values agree bit for bit apart from `ln` rounding differences between numpy and libm.
//! Evaluating a subset of images changes the idf, as it does in the reference.

use std::hash::Hash;

use serde::Serialize;

use super::fsum::numpy_mean;
use super::ngram::{FastMap, NgramCounts};
use super::MetricsError;

const ORDERS: usize = 4;
const SIGMA: f64 = 6.0;

/// Corpus and per-image CIDEr-D.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cider {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

/// One sentence as TF-IDF vectors per order, its norms and its bigram "length".
struct Vector<'a, T> {
    weights: Vec<Vec<(&'a [T], f64)>>,
    lookup: FastMap<&'a [T], f64>,
    norms: [f64; ORDERS],
    length: i64,
}

fn to_vector<'a, T: Eq + Hash>(counts: &NgramCounts<'a, T>, df: &FastMap<&'a [T], (u32, usize)>, log_n: f64) -> Vector<'a, T> {
    let mut weights = Vec::with_capacity(ORDERS);
    let mut lookup = FastMap::default();
    let mut norms = [0.0; ORDERS];
    let mut length = 0i64;
    for (n, order) in counts.orders.iter().enumerate() {
        let mut list = Vec::with_capacity(order.len());
        for &(gram, tf) in order {
            let doc_freq = df.get(gram).map(|&(d, _)| d).unwrap_or(0) as f64;
            let w = tf as f64 * (log_n - doc_freq.max(1.0).ln());
            norms[n] += w * w;
            if n == 1 {
                length += tf as i64;
            }
            list.push((gram, w));
            lookup.insert(gram, w);
        }
        weights.push(list);
    }
    for norm in &mut norms {
        *norm = norm.sqrt();
    }
    Vector { weights, lookup, norms, length }
}

fn similarity<T: Eq + Hash>(hyp: &Vector<'_, T>, reference: &Vector<'_, T>) -> [f64; ORDERS] {
    let delta = (hyp.length - reference.length) as f64;
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    let mut val = [0.0; ORDERS];
    for n in 0..ORDERS {
        for &(gram, w_h) in &hyp.weights[n] {
            let w_r = reference.lookup.get(gram).copied().unwrap_or(0.0);
            val[n] += w_h.min(w_r) * w_r;
        }
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            val[n] /= hyp.norms[n] * reference.norms[n];
        }
        val[n] *= penalty;
    }
    val
}

/// pycocoevalcap's `Cider().compute_score`: CIDEr-D over the corpus and per image.
pub fn cider_d<T, S, R>(references: &[R], hypotheses: &[S]) -> Result<Cider, MetricsError>
where
    T: Eq + Hash,
    S: AsRef<[T]>,
    R: AsRef<[S]>,
{
    if references.len() != hypotheses.len() {
        return Err(MetricsError::LengthMismatch { references: references.len(), hypotheses: hypotheses.len() });
    }
    let ref_counts: Vec<Vec<NgramCounts<'_, T>>> = references
        .iter()
        .map(|refs| refs.as_ref().iter().map(|r| NgramCounts::new(r.as_ref(), ORDERS)).collect())
        .collect();
    // df(g): images whose references contain g. The second field remembers the last image
    // counted, so an n-gram shared by several references of one image counts once.
    let mut df: FastMap<&[T], (u32, usize)> = FastMap::default();
    for (image, refs) in ref_counts.iter().enumerate() {
        if refs.is_empty() {
            return Err(MetricsError::NoReferences { index: image });
        }
        for counts in refs {
            for order in &counts.orders {
                for &(gram, _) in order {
                    let entry = df.entry(gram).or_insert((0, usize::MAX));
                    if entry.1 != image {
                        entry.0 += 1;
                        entry.1 = image;
                    }
                }
            }
        }
    }
    let log_n = (references.len() as f64).ln();
    let mut per_image = Vec::with_capacity(hypotheses.len());
    for (hyp, refs) in hypotheses.iter().zip(&ref_counts) {
        let hyp_vec = to_vector(&NgramCounts::new(hyp.as_ref(), ORDERS), &df, log_n);
        let mut score = [0.0; ORDERS];
        for counts in refs {
            let sim = similarity(&hyp_vec, &to_vector(counts, &df, log_n));
            for n in 0..ORDERS {
                score[n] += sim[n];
            }
        }
        // np.mean over the 4 orders (a plain running sum below 8 elements).
        let mut avg = numpy_mean(&score);
        avg /= refs.len() as f64;
        avg *= 10.0;
        per_image.push(avg);
    }
    let corpus = if per_image.is_empty() { 0.0 } else { numpy_mean(&per_image) };
    Ok(Cider { corpus, per_image })
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
        let refs: Vec<Vec<Vec<&str>>> = refs.iter().map(|r| r.iter().map(|s| split(s)).collect()).collect();
        let hyps: Vec<Vec<&str>> = hyps.iter().map(|h| split(h)).collect();
        let out = cider_d(&refs, &hyps).unwrap();
        assert!((out.corpus - 1.5092759066992405).abs() < 1e-12, "{}", out.corpus);
        let expected = [3.325054345428058, 0.46985054102700197, 1.5036985005405903, 0.7385002398013121];
        for (got, want) in out.per_image.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn one_image_scores_zero_and_empty_hypothesis_scores_zero() {
        let refs = vec![vec![split("a dog runs")]];
        assert_eq!(cider_d(&refs, &[split("a dog runs")]).unwrap().corpus, 0.0);
        let refs = vec![vec![split("a dog runs")], vec![split("a cat sits")]];
        let out = cider_d(&refs, &[vec![], split("a cat sits")]).unwrap();
        assert_eq!(out.per_image[0], 0.0);
        assert!(out.per_image[1] > 0.0);
    }
}
