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
use rayon::prelude::*;

use super::ngram::{intern_corpus, DistinctGrams, FastMap, GramKey};
use super::{check_corpus, MetricsError};

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

/// One sentence's n-grams as (id, tf) per order, in first-appearance order.
type IdCounts = [Vec<(u32, u32)>; ORDERS];

/// A sentence's distinct n-grams of orders 1..=4 with their counts.
fn sentence_grams<K: GramKey>(tokens: &[u32]) -> [DistinctGrams<K>; ORDERS] {
    std::array::from_fn(|n| DistinctGrams::new(tokens, n + 1))
}

/// `log_df[id]` is `ln(max(1, df))` of the n-gram `id`.
fn vector(counts: &IdCounts, log_df: &[f64], log_n: f64) -> Vector {
    let mut weights: [Vec<(u32, f64)>; ORDERS] = Default::default();
    let mut norms = [0.0; ORDERS];
    let mut length = 0i64;
    for (n, order) in counts.iter().enumerate() {
        weights[n].reserve(order.len());
        for &(id, tf) in order {
            let log_df = if id == ABSENT {
                0.0
            } else {
                log_df[id as usize]
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
    check_corpus(references, hypotheses)?;
    let corpus = intern_corpus(references, hypotheses);
    Ok(cider_d_ids(&corpus.references, &corpus.hypotheses))
}

/// [`cider_d`] over token ids below `u32::MAX`, for a corpus already checked: as many
/// reference lists as hypotheses, none empty.
pub(crate) fn cider_d_ids(references: &[Vec<Vec<u32>>], hypotheses: &[Vec<u32>]) -> Cider {
    debug_assert_eq!(references.len(), hypotheses.len());
    let largest = references
        .iter()
        .flatten()
        .chain(hypotheses)
        .flatten()
        .copied()
        .max()
        .unwrap_or(0);
    if (largest as u64) < <u64 as GramKey>::ID_LIMIT {
        cider_d_keyed::<u64>(references, hypotheses)
    } else {
        cider_d_keyed::<u128>(references, hypotheses)
    }
}

/// Document frequencies of a reference corpus: every n-gram of its references gets an id (in
/// corpus order), and `log_df[id] = ln(max(1, df))`.
struct DfTable<K> {
    table: FastMap<K, u32>,
    log_df: Vec<f64>,
    log_n: f64,
}

impl<K: GramKey> DfTable<K> {
    /// The table of `references` and each reference's n-grams as ids.
    fn build(references: &[Vec<Vec<u32>>]) -> (Self, Vec<Vec<IdCounts>>) {
        // Counting n-grams is per sentence, so it runs in parallel; ids are then given in
        // corpus order, as the sums below need a fixed order.
        let ref_grams: Vec<Vec<[DistinctGrams<K>; ORDERS]>> = references
            .par_iter()
            .map(|refs| refs.iter().map(|r| sentence_grams(r)).collect())
            .collect();
        // df(g): images whose references contain g; `last_image` makes an n-gram shared by
        // several references of one image count once.
        let mut table: FastMap<K, u32> = FastMap::default();
        let mut df: Vec<u32> = Vec::new();
        let mut last_image: Vec<usize> = Vec::new();
        let mut ref_ids: Vec<Vec<IdCounts>> = Vec::with_capacity(references.len());
        for (image, refs) in ref_grams.iter().enumerate() {
            let mut image_ids = Vec::with_capacity(refs.len());
            for grams in refs {
                let mut ids: IdCounts = Default::default();
                for (n, order) in grams.iter().enumerate() {
                    ids[n].reserve(order.len());
                    for (&key, &tf) in order.keys.iter().zip(&order.counts) {
                        let next = table.len() as u32;
                        let id = *table.entry(key).or_insert(next);
                        if id == next {
                            df.push(0);
                            last_image.push(usize::MAX);
                        }
                        let i = id as usize;
                        if last_image[i] != image {
                            df[i] += 1;
                            last_image[i] = image;
                        }
                        ids[n].push((id, tf));
                    }
                }
                image_ids.push(ids);
            }
            ref_ids.push(image_ids);
        }
        let log_df: Vec<f64> = df.iter().map(|&d| (d as f64).max(1.0).ln()).collect();
        let log_n = (references.len() as f64).ln();
        (
            DfTable {
                table,
                log_df,
                log_n,
            },
            ref_ids,
        )
    }

    /// A sentence's n-grams as ids of this table (`ABSENT` for n-grams it lacks).
    fn ids(&self, tokens: &[u32]) -> IdCounts {
        let grams = sentence_grams::<K>(tokens);
        std::array::from_fn(|n| {
            grams[n]
                .keys
                .iter()
                .zip(&grams[n].counts)
                .map(|(key, &tf)| (self.table.get(key).copied().unwrap_or(ABSENT), tf))
                .collect()
        })
    }

    /// One image's CIDEr-D: the hypothesis against each reference, averaged, times 10.
    fn score(&self, hyp: &[u32], refs: &[IdCounts]) -> f64 {
        let hyp_vec = vector(&self.ids(hyp), &self.log_df, self.log_n);
        let mut score = [0.0; ORDERS];
        for ids in refs {
            let sim = similarity(&hyp_vec, &vector(ids, &self.log_df, self.log_n));
            for n in 0..ORDERS {
                score[n] += sim[n];
            }
        }
        // np.mean over the 4 orders (a plain running sum below 8 elements).
        let mut avg = numpy_mean(&score);
        avg /= refs.len() as f64;
        avg * 10.0
    }
}

fn cider_d_keyed<K: GramKey>(references: &[Vec<Vec<u32>>], hypotheses: &[Vec<u32>]) -> Cider {
    let (table, ref_ids) = DfTable::<K>::build(references);
    let per_image: Vec<f64> = hypotheses
        .par_iter()
        .zip(&ref_ids)
        .map(|(hyp, refs)| table.score(hyp, refs))
        .collect();
    let corpus = if per_image.is_empty() {
        0.0
    } else {
        numpy_mean(&per_image)
    };
    Cider { corpus, per_image }
}

/// CIDEr-D with document frequencies fixed by one reference corpus (self-critical training's
/// reward: the training split's references, counted once). For a hypothesis of an image of
/// that corpus, [`CiderD::score`] equals that image's [`cider_d`] score over the corpus.
pub struct CiderD {
    table: KeyedTable,
}

enum KeyedTable {
    Narrow(DfTable<u64>),
    Wide(DfTable<u128>),
}

impl CiderD {
    /// Counts the document frequencies of `references` (per image, its reference token ids);
    /// `vocab_size` bounds every id that will be scored.
    pub fn new(references: &[Vec<Vec<u32>>], vocab_size: usize) -> Self {
        let table = if (vocab_size as u64) < <u64 as GramKey>::ID_LIMIT {
            KeyedTable::Narrow(DfTable::build(references).0)
        } else {
            KeyedTable::Wide(DfTable::build(references).0)
        };
        CiderD { table }
    }

    /// Images in the corpus the frequencies came from.
    pub fn images(&self) -> usize {
        let log_n = match &self.table {
            KeyedTable::Narrow(t) => t.log_n,
            KeyedTable::Wide(t) => t.log_n,
        };
        log_n.exp().round() as usize
    }

    /// CIDEr-D of `hypothesis` against `references` (one image's; at least one).
    pub fn score<R: AsRef<[u32]>>(&self, references: &[R], hypothesis: &[u32]) -> f64 {
        if references.is_empty() {
            return 0.0;
        }
        fn score_in<K: GramKey, R: AsRef<[u32]>>(t: &DfTable<K>, refs: &[R], hyp: &[u32]) -> f64 {
            let refs: Vec<IdCounts> = refs.iter().map(|r| t.ids(r.as_ref())).collect();
            t.score(hyp, &refs)
        }
        match &self.table {
            KeyedTable::Narrow(t) => score_in(t, references, hypothesis),
            KeyedTable::Wide(t) => score_in(t, references, hypothesis),
        }
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
    fn narrow_and_wide_keys_give_the_same_scores() {
        let (refs, hyps) = crate::metrics::tests_support::gold_corpus();
        let refs: Vec<Vec<Vec<&str>>> = refs
            .iter()
            .map(|r| r.iter().map(|s| split(s)).collect())
            .collect();
        let hyps: Vec<Vec<&str>> = hyps.iter().map(|h| split(h)).collect();
        let corpus = intern_corpus(&refs, &hyps);
        let narrow = cider_d_keyed::<u64>(&corpus.references, &corpus.hypotheses);
        let wide = cider_d_keyed::<u128>(&corpus.references, &corpus.hypotheses);
        assert_eq!(narrow, wide);
        // Ids too large for 16-bit lanes take the wide keys.
        let shifted = |t: &Vec<u32>| t.iter().map(|&i| i + 70_000).collect::<Vec<u32>>();
        let big_refs: Vec<Vec<Vec<u32>>> = corpus
            .references
            .iter()
            .map(|rs| rs.iter().map(shifted).collect())
            .collect();
        let big_hyps: Vec<Vec<u32>> = corpus.hypotheses.iter().map(shifted).collect();
        assert_eq!(cider_d_ids(&big_refs, &big_hyps), wide);
    }

    #[test]
    fn fixed_frequencies_score_as_the_corpus_does() {
        let (refs, hyps) = crate::metrics::tests_support::gold_corpus();
        let refs: Vec<Vec<Vec<&str>>> = refs
            .iter()
            .map(|r| r.iter().map(|s| split(s)).collect())
            .collect();
        let hyps: Vec<Vec<&str>> = hyps.iter().map(|h| split(h)).collect();
        let corpus = intern_corpus(&refs, &hyps);
        let whole = cider_d_ids(&corpus.references, &corpus.hypotheses);
        let vocab = 1 + *corpus.references.iter().flatten().flatten().max().unwrap() as usize;
        for vocab in [vocab, 70_000] {
            let reward = CiderD::new(&corpus.references, vocab);
            assert_eq!(reward.images(), refs.len());
            for (i, hyp) in corpus.hypotheses.iter().enumerate() {
                assert_eq!(reward.score(&corpus.references[i], hyp), whole.per_image[i]);
            }
            // A hypothesis equal to a reference scores high, an unrelated one 0.
            let own = reward.score(&corpus.references[0], &corpus.references[0][0]);
            assert!(own > whole.per_image[0], "{own}");
            assert_eq!(reward.score(&corpus.references[0], &[60_000, 60_001]), 0.0);
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
