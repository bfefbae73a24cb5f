//! ROUGE-L as pycocoevalcap 1.2 computes it (`rouge.py`).
//!
//! Tokens come from `split(" ")`, so an empty caption is one empty token. For each reference
//! `P_j = LCS / |c|` and `R_j = LCS / |r_j|`; the maxima P and R are taken **independently**
//! (possibly from different references), then `F = (1 + b^2) P R / (R + b^2 P)` with b = 1.2
//! when both are non-zero, else 0. The corpus score is numpy's mean over images. No stemming.

use serde::Serialize;

use super::fsum::numpy_mean;
use super::{check_corpus, MetricsError};

const BETA: f64 = 1.2;

/// Corpus and per-image ROUGE-L.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RougeL {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

/// Length of the longest common subsequence.
pub fn lcs_length<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row = vec![0usize; short.len() + 1];
    for x in long {
        let mut diagonal = 0;
        for (j, y) in short.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[short.len()]
}

/// ROUGE-L of one candidate against its references (token lists from `split(" ")`).
pub fn sentence_rouge_l<T: PartialEq, S: AsRef<[T]>>(candidate: &[T], references: &[S]) -> f64 {
    let mut prec_max = f64::NEG_INFINITY;
    let mut rec_max = f64::NEG_INFINITY;
    for reference in references {
        let reference = reference.as_ref();
        let lcs = lcs_length(reference, candidate) as f64;
        prec_max = prec_max.max(lcs / candidate.len() as f64);
        rec_max = rec_max.max(lcs / reference.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let b2 = BETA * BETA;
        ((1.0 + b2) * prec_max * rec_max) / (rec_max + b2 * prec_max)
    } else {
        0.0
    }
}

/// Splits like Python's `str.split(" ")`: every single space separates, so `""` is `[""]`.
pub fn split_on_space(text: &str) -> Vec<&str> {
    text.split(' ').collect()
}

/// pycocoevalcap's `Rouge().compute_score` over strings.
pub fn rouge_l(references: &[Vec<String>], hypotheses: &[String]) -> Result<RougeL, MetricsError> {
    check_corpus(references, hypotheses)?;
    let mut per_image = Vec::with_capacity(hypotheses.len());
    for (refs, hyp) in references.iter().zip(hypotheses) {
        let ref_tokens: Vec<Vec<&str>> = refs.iter().map(|r| split_on_space(r)).collect();
        per_image.push(sentence_rouge_l(&split_on_space(hyp), &ref_tokens));
    }
    let corpus = if per_image.is_empty() {
        0.0
    } else {
        numpy_mean(&per_image)
    };
    Ok(RougeL { corpus, per_image })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_basics() {
        assert_eq!(lcs_length(&["a", "b", "c", "d"], &["a", "c", "d"]), 3);
        assert_eq!(lcs_length(&["x"], &["a", "c", "d"]), 0);
        assert_eq!(lcs_length::<&str>(&[], &["a"]), 0);
        assert_eq!(lcs_length(&[1, 2, 3, 2, 1], &[3, 2, 1, 2, 3]), 3);
    }

    #[test]
    fn golden_corpus() {
        let (refs, hyps) = crate::metrics::tests_support::gold_corpus();
        let refs: Vec<Vec<String>> = refs
            .iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect();
        let hyps: Vec<String> = hyps.iter().map(|s| s.to_string()).collect();
        let out = rouge_l(&refs, &hyps).unwrap();
        assert!(
            (out.corpus - 0.5453330229926415).abs() < 1e-15,
            "{}",
            out.corpus
        );
        let expected = [
            0.931297709923664,
            0.32360742705570295,
            0.6288659793814433,
            0.2975609756097561,
        ];
        for (got, want) in out.per_image.iter().zip(expected) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
    }

    #[test]
    fn empty_candidate_is_one_empty_token() {
        assert_eq!(split_on_space(""), vec![""]);
        let refs = vec![vec!["a dog".to_string()]];
        assert_eq!(rouge_l(&refs, &["".to_string()]).unwrap().corpus, 0.0);
    }
}
