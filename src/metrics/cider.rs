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

/// An n-gram that appears in no reference of the corpus (df = 0, so it never matches).
const ABSENT: u32 = u32::MAX;

/// One sentence as TF-IDF vectors per order (n-gram ids in first-appearance order), its
/// norms and its bigram "length".
struct Vector {
    weights: [Vec<(u32, f64)>; ORDERS],
    norms: [f64; ORDERS],
    length: i64,
}

/// The corpus-wide n-gram table. An n-gram's id is looked up by (id of its first n-1
/// tokens, id of its last token) packed in a `u64`, so the large table is keyed by integers
/// and lookups do not chase pointers into token storage.
struct IdfTable<'a, T> {
    tokens: FastMap<&'a T, u32>,
    grams: FastMap<u64, u32>,
    /// `ln(max(1, df))` per id (filled once df is known).
    log_df: Vec<f64>,
}

fn gram_key(prefix: u32, token: u32) -> u64 {
    ((prefix as u64) << 32) | token as u64
}

/// One sentence's n-grams as (id, tf) per order, in first-appearance order.
type IdCounts = [Vec<(u32, u32)>; ORDERS];

impl<'a, T: Eq + Hash> IdfTable<'a, T> {
    /// Ids of a sentence's n-grams; with `insert`, unseen n-grams get new ids, otherwise they
    /// are [`ABSENT`].
    fn ids(&mut self, counts: &NgramCounts<'a, T>, insert: bool) -> IdCounts {
        let mut out: IdCounts = Default::default();
        let mut local: FastMap<&'a [T], u32> = FastMap::default();
        for (n, order) in counts.orders.iter().enumerate() {
            out[n].reserve(order.len());
            for &(gram, tf) in order {
                let prefix = if n == 0 {
                    ABSENT
                } else {
                    local.get(&gram[..n]).copied().unwrap_or(ABSENT)
                };
                let last = &gram[n];
                let id = if insert {
                    let next = self.tokens.len() as u32;
                    let token = *self.tokens.entry(last).or_insert(next);
                    let next = self.grams.len() as u32;
                    *self.grams.entry(gram_key(prefix, token)).or_insert(next)
                } else if n > 0 && prefix == ABSENT {
                    ABSENT
                } else {
                    match self.tokens.get(last) {
                        Some(&token) => self
                            .grams
                            .get(&gram_key(prefix, token))
                            .copied()
                            .unwrap_or(ABSENT),
                        None => ABSENT,
                    }
                };
                local.insert(gram, id);
                out[n].push((id, tf));
            }
        }
        out
    }

    fn vector(&self, counts: &IdCounts, log_n: f64) -> Vector {
        let mut weights: [Vec<(u32, f64)>; ORDERS] = Default::default();
        let mut norms = [0.0; ORDERS];
        let mut length = 0i64;
        for (n, order) in counts.iter().enumerate() {
            weights[n].reserve(order.len());
            for &(id, tf) in order {
                let log_df = if id == ABSENT {
                    0.0
                } else {
                    self.log_df[id as usize]
                };
                let w = tf as f64 * (log_n - log_df);
                norms[n] += w * w;
                if n == 1 {
                    length += tf as i64;
                }
                weights[n].push((id, w));
            }
        }
        for norm in &mut norms {
            *norm = norm.sqrt();
        }
        Vector {
            weights,
            norms,
            length,
        }
    }
}

fn similarity(hyp: &Vector, reference: &Vector) -> [f64; ORDERS] {
    let delta = (hyp.length - reference.length) as f64;
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    let mut val = [0.0; ORDERS];
    #[allow(clippy::needless_range_loop)] // n indexes four parallel arrays
    for n in 0..ORDERS {
        for &(id, w_h) in &hyp.weights[n] {
            // Sentences are short: a scan beats a map here.
            let w_r = if id == ABSENT {
                0.0
            } else {
                reference.weights[n]
                    .iter()
                    .find(|&&(r, _)| r == id)
                    .map_or(0.0, |&(_, w)| w)
            };
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
        return Err(MetricsError::LengthMismatch {
            references: references.len(),
            hypotheses: hypotheses.len(),
        });
    }
    // df(g): images whose references contain g; `last_image` makes an n-gram shared by
    // several references of one image count once.
    let mut table = IdfTable {
        tokens: FastMap::default(),
        grams: FastMap::default(),
        log_df: Vec::new(),
    };
    let mut df: Vec<u32> = Vec::new();
    let mut last_image: Vec<usize> = Vec::new();
    let mut ref_ids: Vec<Vec<IdCounts>> = Vec::with_capacity(references.len());
    for (image, refs) in references.iter().enumerate() {
        let refs = refs.as_ref();
        if refs.is_empty() {
            return Err(MetricsError::NoReferences { index: image });
        }
        let mut image_ids = Vec::with_capacity(refs.len());
        for r in refs {
            let ids = table.ids(&NgramCounts::new(r.as_ref(), ORDERS), true);
            for order in &ids {
                for &(id, _) in order {
                    let id = id as usize;
                    if id >= df.len() {
                        df.resize(id + 1, 0);
                        last_image.resize(id + 1, usize::MAX);
                    }
                    if last_image[id] != image {
                        df[id] += 1;
                        last_image[id] = image;
                    }
                }
            }
            image_ids.push(ids);
        }
        ref_ids.push(image_ids);
    }
    table.log_df = df.iter().map(|&d| (d as f64).max(1.0).ln()).collect();
    let log_n = (references.len() as f64).ln();
    let mut per_image = Vec::with_capacity(hypotheses.len());
    for (hyp, refs) in hypotheses.iter().zip(&ref_ids) {
        let hyp_ids = table.ids(&NgramCounts::new(hyp.as_ref(), ORDERS), false);
        let hyp_vec = table.vector(&hyp_ids, log_n);
        let mut score = [0.0; ORDERS];
        for ids in refs {
            let sim = similarity(&hyp_vec, &table.vector(ids, log_n));
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
    let corpus = if per_image.is_empty() {
        0.0
    } else {
        numpy_mean(&per_image)
    };
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
        let refs: Vec<Vec<Vec<&str>>> = refs
            .iter()
            .map(|r| r.iter().map(|s| split(s)).collect())
            .collect();
        let hyps: Vec<Vec<&str>> = hyps.iter().map(|h| split(h)).collect();
        let out = cider_d(&refs, &hyps).unwrap();
        assert!(
            (out.corpus - 1.5092759066992405).abs() < 1e-12,
            "{}",
            out.corpus
        );
        let expected = [
            3.325054345428058,
            0.46985054102700197,
            1.5036985005405903,
            0.7385002398013121,
        ];
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
