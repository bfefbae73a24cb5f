//! BLEU exactly as NLTK 3.10.4's `corpus_bleu` computes it without smoothing.
//!
//! This is the number the PyTorch tutorial reports (over word ids, `<unk>` kept), so it must
//! agree with NLTK bit for bit, quirks included:
//! - the hypothesis n-gram total of every segment is floored at 1 (`max(1, |H|)`), so a
//!   hypothesis shorter than n, even an empty one, still adds 1 to the denominator;
//! - the reference length is the closest one, a tie going to the shorter reference;
//! - counts are summed as integers over the corpus (micro-average);
//! - brevity penalty: 1 when c > r, 0 when c = 0, else `exp(1 - r/c)`;
//! - no clipped unigram at all: NLTK returns the *integer* 0 (no warning), flagged here by
//!   [`NltkBleu::integer_zero`];
//! - an order with no clipped match gets `p_n = f64::MIN_POSITIVE` and one warning, so the
//!   score is tiny but not 0 (e.g. 1.2e-77 when only p4 is zero);
//! - `exp(fsum(w_i ln p_i))` with a correctly rounded sum.
//!
//! Tokens are whatever the caller passes (strings, `u32` ids): there is no tokenisation or
//! lowercasing here.

use std::hash::Hash;

use super::fsum::fsum;
use super::ngram::{
    bleu_image_stats, closest_reference_length, intern_corpus, max_reference_counts,
    BleuImageStats, NgramCounts, MAX_PACKED_ORDER,
};
use super::{check_corpus, MetricsError};

/// NLTK's weights for BLEU-1..4: `(1,)`, `(1/2, 1/2)`, `(1/3,)*3`, `(1/4,)*4`.
pub const BLEU_1_TO_4_WEIGHTS: [&[f64]; 4] = [&[1.0], &[0.5, 0.5], &[1.0 / 3.0; 3], &[0.25; 4]];

/// The outcome of one `corpus_bleu` call with one or several weight tuples.
#[derive(Debug, Clone, PartialEq)]
pub struct NltkBleu {
    /// One score per weight tuple, in the order given.
    pub scores: Vec<f64>,
    /// True when no hypothesis unigram matched: NLTK then returns the integer `0` (or a list
    /// of integer zeros) instead of a float, and emits no warning.
    pub integer_zero: bool,
    /// The orders n (1-based) whose clipped match count over the corpus is 0. NLTK emits one
    /// `UserWarning` for each and uses `p_n = f64::MIN_POSITIVE`.
    pub zero_count_orders: Vec<usize>,
}

impl NltkBleu {
    /// NLTK's warning text, one line per order with no matches.
    pub fn warnings(&self) -> Vec<String> {
        self.zero_count_orders
            .iter()
            .map(|n| {
                format!(
                    "The hypothesis contains 0 counts of {n}-gram overlaps. Therefore the BLEU score \
                     evaluates to 0, independently of how many N-gram overlaps of lower order it \
                     contains. Consider using lower n-gram order or use SmoothingFunction()"
                )
            })
            .collect()
    }
}

/// The integer statistics NLTK accumulates over a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NltkBleuCounts {
    /// Clipped matches per order (index n-1).
    pub numerators: Vec<u64>,
    /// Hypothesis n-gram totals per order, each segment floored at 1.
    pub denominators: Vec<u64>,
    /// Total hypothesis length c.
    pub hypothesis_length: u64,
    /// Total closest-reference length r.
    pub reference_length: u64,
}

/// NLTK's `corpus_bleu(references, hypotheses, weights)` for one or several weight tuples.
///
/// `references[i]` holds the references of segment i, `hypotheses[i]` its hypothesis.
pub fn corpus_bleu<T, S, R>(
    references: &[R],
    hypotheses: &[S],
    weights: &[&[f64]],
) -> Result<NltkBleu, MetricsError>
where
    T: Eq + Hash,
    S: AsRef<[T]>,
    R: AsRef<[S]>,
{
    if weights.is_empty() || weights.iter().any(|w| w.is_empty()) {
        return Err(MetricsError::BadWeights(
            "every BLEU weight tuple needs at least one weight".into(),
        ));
    }
    let max_order = weights.iter().map(|w| w.len()).max().unwrap_or(1);
    let counts = corpus_counts(references, hypotheses, max_order)?;
    Ok(score_from_counts(&counts, weights))
}

/// The integer statistics of `corpus_bleu` for orders 1..=max_order.
pub fn corpus_counts<T, S, R>(
    references: &[R],
    hypotheses: &[S],
    max_order: usize,
) -> Result<NltkBleuCounts, MetricsError>
where
    T: Eq + Hash,
    S: AsRef<[T]>,
    R: AsRef<[S]>,
{
    check_corpus(references, hypotheses)?;
    if max_order <= MAX_PACKED_ORDER {
        // Integer n-grams: the same counts, much faster.
        let corpus = intern_corpus(references, hypotheses);
        let stats: Vec<BleuImageStats> = corpus
            .references
            .iter()
            .zip(&corpus.hypotheses)
            .map(|(refs, hyp)| bleu_image_stats(refs, hyp, max_order))
            .collect();
        return Ok(counts_from_image_stats(&stats, max_order));
    }
    let mut counts = NltkBleuCounts {
        numerators: vec![0; max_order],
        denominators: vec![0; max_order],
        hypothesis_length: 0,
        reference_length: 0,
    };
    for (refs, hyp) in references.iter().zip(hypotheses) {
        let refs = refs.as_ref();
        let hyp = hyp.as_ref();
        let max_ref = max_reference_counts(refs, max_order);
        let hyp_counts = NgramCounts::new(hyp, max_order);
        for (n, order) in hyp_counts.orders.iter().enumerate() {
            let mut clipped = 0u64;
            let mut total = 0u64;
            for &(gram, count) in order {
                total += count as u64;
                clipped += count.min(max_ref.get(gram).copied().unwrap_or(0)) as u64;
            }
            counts.numerators[n] += clipped;
            // The floor of 1 is applied per segment.
            counts.denominators[n] += total.max(1);
        }
        counts.hypothesis_length += hyp.len() as u64;
        counts.reference_length +=
            closest_reference_length(refs.iter().map(|r| r.as_ref().len()), hyp.len()) as u64;
    }
    Ok(counts)
}

/// [`corpus_counts`] from per-image statistics (orders 1..=`max_order`, at most 4).
pub(crate) fn counts_from_image_stats(
    stats: &[BleuImageStats],
    max_order: usize,
) -> NltkBleuCounts {
    let mut counts = NltkBleuCounts {
        numerators: vec![0; max_order],
        denominators: vec![0; max_order],
        hypothesis_length: 0,
        reference_length: 0,
    };
    for s in stats {
        for n in 0..max_order {
            counts.numerators[n] += s.clipped[n];
            // The hypothesis has max(0, len - n + 1) n-grams; NLTK floors each segment at 1.
            counts.denominators[n] +=
                ((s.hypothesis_length + 1).saturating_sub(n + 1) as u64).max(1);
        }
        counts.hypothesis_length += s.hypothesis_length as u64;
        counts.reference_length += s.reference_length as u64;
    }
    counts
}

/// NLTK's brevity penalty from total hypothesis length c and reference length r.
pub fn brevity_penalty(reference_length: u64, hypothesis_length: u64) -> f64 {
    if hypothesis_length > reference_length {
        1.0
    } else if hypothesis_length == 0 {
        0.0
    } else {
        (1.0 - reference_length as f64 / hypothesis_length as f64).exp()
    }
}

/// The scores NLTK derives from accumulated counts, one per weight tuple. Orders beyond
/// `counts.numerators.len()` are ignored, as `zip(weights, p_n)` does.
pub fn score_from_counts(counts: &NltkBleuCounts, weights: &[&[f64]]) -> NltkBleu {
    if counts.numerators.first().copied().unwrap_or(0) == 0 {
        return NltkBleu {
            scores: vec![0.0; weights.len()],
            integer_zero: true,
            zero_count_orders: Vec::new(),
        };
    }
    let bp = brevity_penalty(counts.reference_length, counts.hypothesis_length);
    let mut zero_count_orders = Vec::new();
    let precisions: Vec<f64> = counts
        .numerators
        .iter()
        .zip(&counts.denominators)
        .enumerate()
        .map(|(i, (&num, &den))| {
            if num == 0 {
                zero_count_orders.push(i + 1);
                f64::MIN_POSITIVE
            } else {
                // float(Fraction(num, den)) is the correctly rounded quotient.
                num as f64 / den as f64
            }
        })
        .collect();
    let scores = weights
        .iter()
        .map(|w| {
            bp * fsum(
                w.iter()
                    .zip(&precisions)
                    .filter(|(_, &p)| p > 0.0)
                    .map(|(&wi, &p)| wi * p.ln()),
            )
            .exp()
        })
        .collect();
    NltkBleu {
        scores,
        integer_zero: false,
        zero_count_orders,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    /// The 4-image golden corpus of METRICS.md section 8.
    pub(crate) fn gold() -> (Vec<Vec<Vec<&'static str>>>, Vec<Vec<&'static str>>) {
        let (refs, hyps) = crate::metrics::tests_support::gold_corpus();
        (
            refs.iter()
                .map(|r| r.iter().map(|s| split(s)).collect())
                .collect(),
            hyps.iter().map(|h| split(h)).collect(),
        )
    }

    #[test]
    fn golden_bleu_1_to_4() {
        let (refs, hyps) = gold();
        let out = corpus_bleu(&refs, &hyps, &BLEU_1_TO_4_WEIGHTS).unwrap();
        let expected = [
            0.564841315004542,
            0.5052094307402111,
            0.4161786392420379,
            0.35723701439579875,
        ];
        for (got, want) in out.scores.iter().zip(expected) {
            assert!((got - want).abs() <= 1e-15, "{got} vs {want}");
        }
        assert!(!out.integer_zero && out.zero_count_orders.is_empty());
        // Padding with zero weights gives the same values.
        let padded: [&[f64]; 2] = [&[1.0, 0.0, 0.0, 0.0], &[0.5, 0.5, 0.0, 0.0]];
        let p = corpus_bleu(&refs, &hyps, &padded).unwrap();
        assert_eq!(p.scores[0], out.scores[0]);
        assert_eq!(p.scores[1], out.scores[1]);
        // Ids instead of strings give the same numbers.
        let mut vocab = std::collections::HashMap::new();
        let mut id = |w: &str| {
            let n = vocab.len() as u32;
            *vocab.entry(w.to_string()).or_insert(n)
        };
        let id_refs: Vec<Vec<Vec<u32>>> = refs
            .iter()
            .map(|rs| {
                rs.iter()
                    .map(|r| r.iter().map(|w| id(w)).collect())
                    .collect()
            })
            .collect();
        let id_hyps: Vec<Vec<u32>> = hyps
            .iter()
            .map(|h| h.iter().map(|w| id(w)).collect())
            .collect();
        assert_eq!(
            corpus_bleu(&id_refs, &id_hyps, &BLEU_1_TO_4_WEIGHTS)
                .unwrap()
                .scores,
            out.scores
        );
    }

    #[test]
    fn repo_style_point_33_weights_differ_from_a_third() {
        let (refs, hyps) = gold();
        let out = corpus_bleu(&refs, &hyps, &[&[0.33, 0.33, 0.33, 0.0][..]]).unwrap();
        assert!((out.scores[0] - 0.41821).abs() < 5e-6, "{}", out.scores[0]);
    }

    #[test]
    fn golden_edge_case_is_tiny_with_two_warnings() {
        let refs = vec![
            vec![
                split("a cat sits on the mat"),
                split("there is a cat on a mat"),
            ],
            vec![split("a dog runs in the park")],
        ];
        let hyps = vec![split("the cat on mat sits"), split("dog runs park")];
        let out = corpus_bleu(&refs, &hyps, &[&[0.25; 4][..]]).unwrap();
        assert_eq!(out.scores[0], 6.8745561108800095e-155);
        assert_eq!(out.zero_count_orders, vec![3, 4]);
        assert_eq!(out.warnings().len(), 2);
        // Zero weights still warn for every order up to the tuple length.
        let w = corpus_bleu(&refs, &hyps, &[&[1.0, 0.0, 0.0, 0.0][..]]).unwrap();
        assert_eq!(w.zero_count_orders, vec![3, 4]);
    }

    #[test]
    fn no_unigram_match_is_integer_zero_and_empty_hypothesis_counts() {
        let refs = vec![vec![split("a b c")]];
        let out = corpus_bleu(&refs, &[split("x y")], &BLEU_1_TO_4_WEIGHTS).unwrap();
        assert!(out.integer_zero && out.zero_count_orders.is_empty());
        assert_eq!(out.scores, vec![0.0; 4]);
        // An empty hypothesis adds 1 to every denominator.
        let refs = vec![vec![split("a b")], vec![split("c d")]];
        let c = corpus_counts(&refs, &[split("a b"), vec![]], 2).unwrap();
        assert_eq!(c.denominators, vec![3, 2]);
        assert_eq!(c.numerators, vec![2, 1]);
        assert_eq!((c.hypothesis_length, c.reference_length), (2, 4));
    }

    #[test]
    fn mismatched_lengths_and_missing_references_are_errors() {
        let refs = vec![vec![split("a b")]];
        assert!(matches!(
            corpus_bleu(&refs, &[split("a"), split("b")], &BLEU_1_TO_4_WEIGHTS),
            Err(MetricsError::LengthMismatch { .. })
        ));
        let none: Vec<Vec<Vec<&str>>> = vec![vec![]];
        assert!(matches!(
            corpus_bleu(&none, &[split("a")], &BLEU_1_TO_4_WEIGHTS),
            Err(MetricsError::NoReferences { index: 0 })
        ));
        assert!(corpus_bleu(&refs, &[split("a")], &[]).is_err());
    }
}
