//! Caption metrics computed the way the reference scorers compute them.
//!
//! Every number here is meant to be comparable with what people publish, so each scorer
//! follows one reference implementation exactly, quirks included (see each module):
//! - [`bleu_nltk`]: NLTK 3.10.4 `corpus_bleu` (the PyTorch tutorial's BLEU), any weights;
//! - [`bleu_coco`]: coco-caption (pycocoevalcap 1.2) BLEU-1..4, corpus and per image;
//! - [`cider`]: pycocoevalcap's CIDEr-D, corpus and per image;
//! - [`rouge`]: pycocoevalcap's ROUGE-L, corpus and per image;
//! - [`meteor`]: **METEOR (exact+stem)**, a port of METEOR 1.5 without its synonym and
//!   paraphrase modules, so not the published "METEOR" (distances in
//!   `docs/METRICS-IMPLEMENTATION.md`);
//! - [`ptb`]: the part of coco-caption's PTB tokenisation caption text needs.
//!
//! SPICE is **not computed**: it needs Stanford CoreNLP's statistical parser (Java, models of
//! hundreds of MB), which cannot be ported or shipped here.
//!
//! [`score_corpus`] (raw text) and [`score_karpathy`] (Karpathy token lists) are the entry
//! points for evaluation code: NLTK BLEU sees the tokens as given, as the tutorial passes
//! them to NLTK; the coco-caption metrics see them after coco-caption's PTB step. Both return
//! every metric, corpus-wide and per image, as [`CorpusScores`] (serialisable with stable keys
//! at full `f64` precision). [`score_tokenized`] skips tokenisation for every column.

pub mod bleu_coco;
pub mod bleu_nltk;
pub mod cider;
mod fsum;
pub mod meteor;
mod ngram;
pub mod ptb;
pub mod rouge;

#[cfg(test)]
mod golden_tests;

use serde::Serialize;

pub use fsum::{fsum, numpy_mean};

/// Errors from the metric functions: inputs that do not describe a corpus.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("corpus has {references} reference lists but {hypotheses} hypotheses; they must pair up one to one")]
    LengthMismatch {
        references: usize,
        hypotheses: usize,
    },
    #[error("image {index} (0-based, in corpus order) has no reference captions")]
    NoReferences { index: usize },
    #[error("bad BLEU weights: {0}")]
    BadWeights(String),
}

/// The check every corpus metric makes first: one reference list per hypothesis, and none
/// of them empty.
pub(crate) fn check_corpus<X, R: AsRef<[X]>, H>(
    references: &[R],
    hypotheses: &[H],
) -> Result<(), MetricsError> {
    if references.len() != hypotheses.len() {
        return Err(MetricsError::LengthMismatch {
            references: references.len(),
            hypotheses: hypotheses.len(),
        });
    }
    match references.iter().position(|r| r.as_ref().is_empty()) {
        Some(index) => Err(MetricsError::NoReferences { index }),
        None => Ok(()),
    }
}

/// Corpus-level values of every computed metric. Field names are the stable JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusMetrics {
    /// NLTK `corpus_bleu` with weights (1,), (1/2,1/2), (1/3,)*3, (1/4,)*4, over the tokens as
    /// given (Karpathy tokens, whitespace-split captions), not the PTB tokens.
    pub bleu_1_nltk: f64,
    pub bleu_2_nltk: f64,
    pub bleu_3_nltk: f64,
    pub bleu_4_nltk: f64,
    /// coco-caption BLEU-1..4. This and the metrics below run on the PTB tokens.
    pub bleu_1_coco: f64,
    pub bleu_2_coco: f64,
    pub bleu_3_coco: f64,
    pub bleu_4_coco: f64,
    /// METEOR (exact+stem), from summed statistics. Not the jar's full METEOR.
    pub meteor_exact_stem: f64,
    pub rouge_l: f64,
    pub cider_d: f64,
}

/// Per-image values of the metrics whose reference scorers report them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageMetrics {
    pub bleu_1_coco: f64,
    pub bleu_2_coco: f64,
    pub bleu_3_coco: f64,
    pub bleu_4_coco: f64,
    pub meteor_exact_stem: f64,
    pub rouge_l: f64,
    pub cider_d: f64,
}

/// Everything [`score_corpus`] computes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusScores {
    /// Number of images scored.
    pub images: usize,
    pub corpus: CorpusMetrics,
    /// True when NLTK would have returned the integer 0 for BLEU (no unigram matched).
    pub nltk_bleu_integer_zero: bool,
    /// Orders n whose NLTK clipped count is 0 (NLTK warns for each; p_n = f64::MIN_POSITIVE).
    pub nltk_bleu_zero_count_orders: Vec<usize>,
    /// One entry per image, in input order.
    pub per_image: Vec<ImageMetrics>,
    /// Metrics that are reported elsewhere but not computed here (`["spice"]`).
    pub not_computed: Vec<&'static str>,
}

/// Display name, JSON key and value of each corpus metric, in report order.
pub type MetricRow = (&'static str, &'static str, f64);

impl CorpusScores {
    /// The corpus metrics as rows for tables, in a fixed order. SPICE is not among them.
    pub fn rows(&self) -> Vec<MetricRow> {
        let c = &self.corpus;
        vec![
            ("BLEU-1 (NLTK)", "bleu_1_nltk", c.bleu_1_nltk),
            ("BLEU-2 (NLTK)", "bleu_2_nltk", c.bleu_2_nltk),
            ("BLEU-3 (NLTK)", "bleu_3_nltk", c.bleu_3_nltk),
            ("BLEU-4 (NLTK)", "bleu_4_nltk", c.bleu_4_nltk),
            ("BLEU-1 (coco)", "bleu_1_coco", c.bleu_1_coco),
            ("BLEU-2 (coco)", "bleu_2_coco", c.bleu_2_coco),
            ("BLEU-3 (coco)", "bleu_3_coco", c.bleu_3_coco),
            ("BLEU-4 (coco)", "bleu_4_coco", c.bleu_4_coco),
            (
                "METEOR (exact+stem)",
                "meteor_exact_stem",
                c.meteor_exact_stem,
            ),
            ("ROUGE-L", "rouge_l", c.rouge_l),
            ("CIDEr-D", "cider_d", c.cider_d),
        ]
    }
}

/// Scores a corpus of captions with every metric.
///
/// `references[i]` are the reference captions of image i and `hypotheses[i]` its generated
/// caption, as raw text. The two families of columns see different tokens, as their reference
/// implementations do:
/// - NLTK BLEU-1..4 (the PyTorch tutorial's BLEU) gets the text as given, split on whitespace:
///   the tutorial calls `corpus_bleu` on tokens it never re-tokenises;
/// - coco-caption BLEU, CIDEr-D, ROUGE-L and METEOR (exact+stem) get both sides through the
///   PTB subset ([`ptb::tokenize`]), as coco-caption tokenises both (dropping `:` `,` `.`
///   `-` and other punctuation tokens, splitting `'s`).
///
/// For lowercase word captions the two agree. CIDEr-D's idf comes from these references only,
/// as in coco-caption. SPICE is not computed. Karpathy references (token lists) go through
/// [`score_karpathy`].
///
/// The tutorial's own BLEU (over word ids with `<unk>` merged) is not this NLTK BLEU over
/// words; compute it with [`bleu_nltk::corpus_bleu`] on ids.
pub fn score_corpus(
    references: &[Vec<String>],
    hypotheses: &[String],
) -> Result<CorpusScores, MetricsError> {
    let nltk_references: Vec<Vec<Vec<&str>>> = references
        .iter()
        .map(|refs| {
            refs.iter()
                .map(|r| r.split_whitespace().collect())
                .collect()
        })
        .collect();
    let ptb_references: Vec<Vec<String>> = references
        .iter()
        .map(|refs| ptb::tokenize_all(refs))
        .collect();
    score_with_nltk_tokens(
        &ptb_references,
        &ptb::tokenize_all(hypotheses),
        Some(NltkTokens {
            references: &nltk_references,
            hypotheses: &whitespace_tokens(hypotheses),
        }),
    )
}

/// Scores generated captions against a Karpathy split's references, as `gaze score` does.
///
/// `reference_tokens[i]` holds image i's sentences, each as its Karpathy `tokens` list;
/// `hypotheses[i]` is the generated caption as raw text. NLTK BLEU-1..4 runs on the tokens as
/// they are and on the hypotheses split on whitespace (what the PyTorch tutorial passes to
/// `corpus_bleu`); the coco-caption columns run on the tokens joined by spaces and the raw
/// hypotheses, both through the PTB subset. See [`score_corpus`].
pub fn score_karpathy(
    reference_tokens: &[Vec<Vec<String>>],
    hypotheses: &[String],
) -> Result<CorpusScores, MetricsError> {
    let nltk_references: Vec<Vec<Vec<&str>>> = reference_tokens
        .iter()
        .map(|refs| {
            refs.iter()
                .map(|tokens| tokens.iter().map(String::as_str).collect())
                .collect()
        })
        .collect();
    let ptb_references: Vec<Vec<String>> = reference_tokens
        .iter()
        .map(|refs| {
            refs.iter()
                .map(|tokens| ptb::tokenize(&tokens.join(" ")))
                .collect()
        })
        .collect();
    score_with_nltk_tokens(
        &ptb_references,
        &ptb::tokenize_all(hypotheses),
        Some(NltkTokens {
            references: &nltk_references,
            hypotheses: &whitespace_tokens(hypotheses),
        }),
    )
}

/// [`score_corpus`] for text that is already tokenised (tokens joined by single spaces): no
/// tokenisation is applied, and every column, NLTK's included, sees the same tokens.
pub fn score_tokenized(
    references: &[Vec<String>],
    hypotheses: &[String],
) -> Result<CorpusScores, MetricsError> {
    score_with_nltk_tokens(references, hypotheses, None)
}

/// The tokens of the NLTK columns, when they are not the other columns' tokens.
struct NltkTokens<'a> {
    references: &'a [Vec<Vec<&'a str>>],
    hypotheses: &'a [Vec<&'a str>],
}

fn whitespace_tokens(text: &[String]) -> Vec<Vec<&str>> {
    text.iter()
        .map(|t| t.split_whitespace().collect())
        .collect()
}

/// Every metric over `references`/`hypotheses` (space-separated tokens); NLTK BLEU over
/// `nltk` instead when given.
fn score_with_nltk_tokens(
    references: &[Vec<String>],
    hypotheses: &[String],
    nltk: Option<NltkTokens<'_>>,
) -> Result<CorpusScores, MetricsError> {
    check_corpus(references, hypotheses)?;
    // Computed first and apart: its inputs differ from the other columns'.
    let separate_nltk = nltk
        .map(|t| {
            bleu_nltk::corpus_bleu(t.references, t.hypotheses, &bleu_nltk::BLEU_1_TO_4_WEIGHTS)
        })
        .transpose()?;
    // Intern words once; BLEU and CIDEr-D then work on integer n-grams.
    let mut vocabulary: ngram::FastMap<&str, u32> = ngram::FastMap::default();
    fn intern<'a>(vocabulary: &mut ngram::FastMap<&'a str, u32>, text: &'a str) -> Vec<u32> {
        text.split_whitespace()
            .map(|w| {
                let next = vocabulary.len() as u32;
                *vocabulary.entry(w).or_insert(next)
            })
            .collect()
    }
    let ref_ids: Vec<Vec<Vec<u32>>> = references
        .iter()
        .map(|refs| refs.iter().map(|r| intern(&mut vocabulary, r)).collect())
        .collect();
    let hyp_ids: Vec<Vec<u32>> = hypotheses
        .iter()
        .map(|h| intern(&mut vocabulary, h))
        .collect();

    let ((bleu_stats, cider), (rouge, meteor)) = rayon::join(
        || {
            rayon::join(
                || {
                    use rayon::prelude::*;
                    // Both BLEU variants are built from the same per-image statistics.
                    ref_ids
                        .par_iter()
                        .zip(&hyp_ids)
                        .map(|(refs, hyp)| ngram::bleu_image_stats(refs, hyp, 4))
                        .collect::<Vec<_>>()
                },
                || cider::cider_d_ids(&ref_ids, &hyp_ids),
            )
        },
        || {
            rayon::join(
                || rouge::rouge_l(references, hypotheses),
                || meteor_parallel(references, hypotheses),
            )
        },
    );
    let nltk = separate_nltk.unwrap_or_else(|| {
        bleu_nltk::score_from_counts(
            &bleu_nltk::counts_from_image_stats(&bleu_stats, 4),
            &bleu_nltk::BLEU_1_TO_4_WEIGHTS,
        )
    });
    let coco = bleu_coco::from_image_stats(&bleu_stats);
    let rouge = rouge?;
    let per_image = (0..hypotheses.len())
        .map(|i| ImageMetrics {
            bleu_1_coco: coco.per_image[i][0],
            bleu_2_coco: coco.per_image[i][1],
            bleu_3_coco: coco.per_image[i][2],
            bleu_4_coco: coco.per_image[i][3],
            meteor_exact_stem: meteor.per_image[i],
            rouge_l: rouge.per_image[i],
            cider_d: cider.per_image[i],
        })
        .collect();
    Ok(CorpusScores {
        images: hypotheses.len(),
        corpus: CorpusMetrics {
            bleu_1_nltk: nltk.scores[0],
            bleu_2_nltk: nltk.scores[1],
            bleu_3_nltk: nltk.scores[2],
            bleu_4_nltk: nltk.scores[3],
            bleu_1_coco: coco.corpus[0],
            bleu_2_coco: coco.corpus[1],
            bleu_3_coco: coco.corpus[2],
            bleu_4_coco: coco.corpus[3],
            meteor_exact_stem: meteor.corpus,
            rouge_l: rouge.corpus,
            cider_d: cider.corpus,
        },
        nltk_bleu_integer_zero: nltk.integer_zero,
        nltk_bleu_zero_count_orders: nltk.zero_count_orders,
        per_image,
        not_computed: vec!["spice"],
    })
}

/// METEOR (exact+stem) with images spread over threads; the statistics are summed in image
/// order afterwards, so the result does not depend on the thread count.
fn meteor_parallel(references: &[Vec<String>], hypotheses: &[String]) -> meteor::MeteorScores {
    use rayon::prelude::*;
    let scorer = meteor::Meteor::new();
    let stats: Vec<meteor::MeteorStats> = references
        .par_iter()
        .zip(hypotheses)
        .map_init(meteor::WordCache::default, |cache, (refs, hyp)| {
            scorer.segment_stats_cached(hyp, refs, cache)
        })
        .collect();
    meteor::scores_from_stats(&stats)
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// The 4-image golden corpus of METRICS.md section 8: (references, hypotheses).
    pub fn gold_corpus() -> (Vec<Vec<&'static str>>, Vec<&'static str>) {
        let refs = vec![
            vec![
                "a man is riding a horse on the beach",
                "a person rides a brown horse along the shore",
                "a man on a horse near the ocean",
                "someone riding a horse on a sandy beach",
                "a horse and rider on the beach",
            ],
            vec![
                "two dogs playing with a ball in the grass",
                "a couple of dogs play in a grassy field",
                "two dogs are running after a ball",
                "dogs playing fetch on a lawn",
                "two brown dogs chase a ball on the grass",
            ],
            vec![
                "a plate of food with broccoli and rice",
                "a white plate topped with rice and vegetables",
                "a meal of rice chicken and broccoli",
                "food on a plate including broccoli",
                "a dish with rice and green broccoli",
            ],
            vec![
                "a red double decker bus on a city street",
                "a bus driving down the street",
                "a large red bus in the city",
                "a double decker bus parked by the road",
                "red bus on the street",
            ],
        ];
        let hyps = vec![
            "a man riding a horse on the beach",
            "two dogs dogs dogs dogs",
            "a plate of rice",
            "bus",
        ];
        (refs, hyps)
    }
}
