//! METEOR (exact+stem): a port of METEOR 1.5's scoring restricted to its exact and stem
//! modules.
//!
//! coco-caption reports METEOR from `meteor-1.5.jar - - -stdio -l en -norm`, which also uses
//! WordNet synonyms and a 62 MB paraphrase table. Those two modules are **not** ported, so this
//! number is *not* "METEOR" and is always shown as `METEOR (exact+stem)`. It reproduces the jar
//! run with `-m "exact stem"`; how far both are from the full jar is measured in
//! `docs/METRICS-IMPLEMENTATION.md`.
//!
//! What is ported, step by step as the jar does it:
//! - normalisation: the jar's `-norm` tokeniser ([`normalize::normalize_line`]), then lowercase;
//!   words are split on Java's `StringTokenizer` whitespace;
//! - words are compared by Java `String.hashCode`, as the jar does (so its rare hash
//!   collisions are matches here too);
//! - modules: exact (weight 1.0), then stem (weight 0.6) with the Snowball English stemmer
//!   (`rust-stemmers`, identical to the jar's `englishStemmer` on 119,138 words of the jar's
//!   own word lists); identical sentences use the exact module only;
//! - alignment: one-to-one matches that no other match overlaps are fixed; the rest is the
//!   jar's left-to-right beam search (width 40) ordered by weighted match count (with the
//!   jar's search weights 1.0/0.5 truncated to integers, so a stem match counts 0 there), then
//!   fewer chunks, then smaller distance, including the jar's habit of charging a tried
//!   match's distance to the path that skips it; stable sorting as Java's `Collections.sort`;
//! - statistics: lengths, function words (the jar's 93-word English list), content and
//!   function matches per module and side, chunks;
//! - score: `Lt = d(|t| - ft) + (1 - d) ft`, `Mt = sum_m w_m (d content + (1 - d) function)`,
//!   `P = Mt/Lt`, `R = Mr/Lr`, `Fmean = 1 / ((1 - a)/P + a/R)`, fragmentation 0 for a
//!   single-chunk perfect match else `chunks / ((mt + mr)/2)`, `score = Fmean (1 - g frag^b)`,
//!   NaN -> 0, clamped at 0; a = 0.85, b = 0.2, g = 0.6, d = 0.75;
//! - several references: the one with the highest score (the first on ties);
//! - corpus: statistics summed over images (chunks of perfect single-chunk segments left
//!   out, as the jar's `addStats`), then scored once; not the mean of per-image scores.

mod function_words;
mod nonbreaking;
pub mod normalize;

use std::collections::HashSet;

use serde::Serialize;

pub use function_words::ENGLISH_FUNCTION_WORDS;

use super::ngram::FastMap;
use super::{check_corpus, MetricsError};

/// METEOR 1.5's English ranking-task parameters.
pub const ALPHA: f64 = 0.85;
pub const BETA: f64 = 0.2;
pub const GAMMA: f64 = 0.6;
pub const DELTA: f64 = 0.75;
/// Scoring weights of the exact and stem modules.
pub const MODULE_WEIGHTS: [f64; 2] = [1.0, 0.6];
/// The weights the jar's aligner ranks partial alignments with (exact 1.0, others 0.5).
const SEARCH_WEIGHTS: [f64; 2] = [1.0, 0.5];
/// The jar's default beam width.
pub const BEAM_SIZE: usize = 40;

const EXACT: usize = 0;
const STEM: usize = 1;
const MODULES: usize = 2;

/// The sufficient statistics of one segment (or, summed, of a corpus), as the jar keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MeteorStats {
    pub test_length: f64,
    pub reference_length: f64,
    pub test_function_words: f64,
    pub reference_function_words: f64,
    pub test_total_matches: f64,
    pub reference_total_matches: f64,
    /// Per module (exact, stem).
    pub test_content_matches: [f64; MODULES],
    pub reference_content_matches: [f64; MODULES],
    pub test_function_matches: [f64; MODULES],
    pub reference_function_matches: [f64; MODULES],
    pub chunks: f64,
    pub test_word_matches: f64,
    pub reference_word_matches: f64,
}

impl MeteorStats {
    fn is_perfect_single_chunk(&self) -> bool {
        self.test_total_matches == self.test_length
            && self.reference_total_matches == self.reference_length
            && self.chunks == 1.0
    }

    /// Adds another segment's statistics (the jar's `addStats`).
    pub fn add(&mut self, other: &MeteorStats) {
        self.test_length += other.test_length;
        self.reference_length += other.reference_length;
        self.test_function_words += other.test_function_words;
        self.reference_function_words += other.reference_function_words;
        self.test_total_matches += other.test_total_matches;
        self.reference_total_matches += other.reference_total_matches;
        for m in 0..MODULES {
            self.test_content_matches[m] += other.test_content_matches[m];
            self.reference_content_matches[m] += other.reference_content_matches[m];
            self.test_function_matches[m] += other.test_function_matches[m];
            self.reference_function_matches[m] += other.reference_function_matches[m];
        }
        if !other.is_perfect_single_chunk() {
            self.chunks += other.chunks;
        }
        self.test_word_matches += other.test_word_matches;
        self.reference_word_matches += other.reference_word_matches;
    }

    /// The METEOR score of these statistics (the jar's `computeMetrics`). The four loops
    /// keep the jar's summation order.
    #[allow(clippy::needless_range_loop)]
    pub fn score(&self) -> f64 {
        let test_weighted_length = (DELTA * (self.test_length - self.test_function_words))
            + ((1.0 - DELTA) * self.test_function_words);
        let reference_weighted_length = (DELTA
            * (self.reference_length - self.reference_function_words))
            + ((1.0 - DELTA) * self.reference_function_words);
        let mut test_weighted = 0.0;
        let mut reference_weighted = 0.0;
        for m in 0..MODULES {
            test_weighted += self.test_content_matches[m] * MODULE_WEIGHTS[m] * DELTA;
        }
        for m in 0..MODULES {
            reference_weighted += self.reference_content_matches[m] * MODULE_WEIGHTS[m] * DELTA;
        }
        for m in 0..MODULES {
            test_weighted += self.test_function_matches[m] * MODULE_WEIGHTS[m] * (1.0 - DELTA);
        }
        for m in 0..MODULES {
            reference_weighted +=
                self.reference_function_matches[m] * MODULE_WEIGHTS[m] * (1.0 - DELTA);
        }
        let precision = test_weighted / test_weighted_length;
        let recall = reference_weighted / reference_weighted_length;
        let f_mean = 1.0 / (((1.0 - ALPHA) / precision) + (ALPHA / recall));
        let frag = if self.is_perfect_single_chunk() {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.reference_word_matches) / 2.0)
        };
        let score = f_mean * (1.0 - GAMMA * frag.powf(BETA));
        if score.is_nan() {
            0.0
        } else {
            score.max(0.0)
        }
    }
}

/// Corpus and per-image METEOR (exact+stem).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeteorScores {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

/// Java's `String.hashCode` (over UTF-16 code units).
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// A normalised, lowercased sentence ready for alignment: per word its hash, its stem's hash
/// and whether it is a function word.
struct Sentence {
    keys: Vec<i32>,
    stem_keys: Vec<i32>,
    function: Vec<bool>,
}

impl Sentence {
    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// What alignment needs to know about one word.
#[derive(Debug, Clone, Copy)]
struct WordFacts {
    key: i32,
    stem_key: i32,
    function: bool,
}

/// Facts of words already seen, so that each distinct word is stemmed once. A cache only
/// saves work: results are the same with or without one.
#[derive(Default)]
pub struct WordCache(FastMap<String, WordFacts>);

/// One candidate word match: reference position `start`, hypothesis position `match_start`.
#[derive(Debug, Clone, Copy)]
struct WordMatch {
    start: usize,
    match_start: usize,
    module: usize,
}

#[derive(Clone)]
struct PartialAlignment {
    matches: Vec<Option<WordMatch>>,
    weighted1: i32,
    weighted2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: Option<usize>,
    distance: i32,
    used1: Vec<bool>,
    used2: Vec<bool>,
}

impl PartialAlignment {
    fn is_used(&self, m: &WordMatch) -> bool {
        self.used2[m.start] || self.used1[m.match_start]
    }

    /// Java's `int += double` narrowing: the weighted counts stay integers.
    fn add_weighted(&mut self, m: &WordMatch) {
        let w = SEARCH_WEIGHTS[m.module];
        self.weighted1 = (self.weighted1 as f64 + w) as i32;
        self.weighted2 = (self.weighted2 as f64 + w) as i32;
    }

    fn rank_key(&self) -> (i32, i32, i32) {
        (
            -(self.weighted1 + self.weighted2),
            self.chunks,
            self.distance,
        )
    }
}

/// METEOR 1.5 restricted to the exact and stem modules, for English.
pub struct Meteor {
    function_words: HashSet<&'static str>,
    stemmer: rust_stemmers::Stemmer,
}

impl Default for Meteor {
    fn default() -> Self {
        Self::new()
    }
}

impl Meteor {
    pub fn new() -> Self {
        Meteor {
            function_words: ENGLISH_FUNCTION_WORDS.iter().copied().collect(),
            stemmer: rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English),
        }
    }

    fn facts(&self, word: &str) -> WordFacts {
        WordFacts {
            key: java_hash(word),
            stem_key: java_hash(&self.stemmer.stem(word)),
            function: self.function_words.contains(word.to_lowercase().as_str()),
        }
    }

    fn prepare(&self, text: &str, cache: &mut WordCache) -> Sentence {
        let normalized = normalize::normalize_line(text).to_lowercase();
        let mut sentence = Sentence {
            keys: Vec::new(),
            stem_keys: Vec::new(),
            function: Vec::new(),
        };
        for word in normalize::java_tokens(&normalized) {
            let facts = match cache.0.get(word) {
                Some(&facts) => facts,
                None => {
                    let facts = self.facts(word);
                    cache.0.insert(word.to_string(), facts);
                    facts
                }
            };
            sentence.keys.push(facts.key);
            sentence.stem_keys.push(facts.stem_key);
            sentence.function.push(facts.function);
        }
        sentence
    }

    /// The statistics of the best-scoring reference for one hypothesis (the jar's `SCORE`
    /// line). With no references the statistics are all zero.
    pub fn segment_stats<S: AsRef<str>>(&self, hypothesis: &str, references: &[S]) -> MeteorStats {
        self.segment_stats_cached(hypothesis, references, &mut WordCache::default())
    }

    /// [`Self::segment_stats`] with a cache of word facts kept between calls.
    pub fn segment_stats_cached<S: AsRef<str>>(
        &self,
        hypothesis: &str,
        references: &[S],
        cache: &mut WordCache,
    ) -> MeteorStats {
        let test = self.prepare(hypothesis, cache);
        let mut best: Option<(f64, MeteorStats)> = None;
        for reference in references {
            let stats = align_stats(&test, &self.prepare(reference.as_ref(), cache));
            let score = stats.score();
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, stats));
            }
        }
        best.map(|(_, s)| s).unwrap_or_default()
    }

    /// Corpus and per-image scores (the jar's `EVAL` over all images).
    pub fn score_corpus<S: AsRef<str>>(
        &self,
        references: &[Vec<S>],
        hypotheses: &[S],
    ) -> Result<MeteorScores, MetricsError> {
        check_corpus(references, hypotheses)?;
        let mut cache = WordCache::default();
        let stats: Vec<MeteorStats> = references
            .iter()
            .zip(hypotheses)
            .map(|(refs, hyp)| self.segment_stats_cached(hyp.as_ref(), refs, &mut cache))
            .collect();
        Ok(scores_from_stats(&stats))
    }
}

/// Per-image scores and the corpus score from summed statistics.
pub fn scores_from_stats(stats: &[MeteorStats]) -> MeteorScores {
    let mut total = MeteorStats::default();
    for s in stats {
        total.add(s);
    }
    MeteorScores {
        corpus: total.score(),
        per_image: stats.iter().map(MeteorStats::score).collect(),
    }
}

/// Aligns hypothesis `test` (the jar's line 1) with `reference` (line 2) and counts.
#[allow(clippy::needless_range_loop)] // indices mirror the jar's matcher loops
fn align_stats(test: &Sentence, reference: &Sentence) -> MeteorStats {
    let n1 = test.len();
    let n2 = reference.len();
    let mut candidates: Vec<Vec<WordMatch>> = vec![Vec::new(); n2];
    let mut coverage1 = vec![0u32; n1];
    let mut coverage2 = vec![0u32; n2];
    for j in 0..n2 {
        for i in 0..n1 {
            if test.keys[i] == reference.keys[j] {
                candidates[j].push(WordMatch {
                    start: j,
                    match_start: i,
                    module: EXACT,
                });
                coverage1[i] += 1;
                coverage2[j] += 1;
            }
        }
    }
    // Identical sentences need (and get) only exact matches.
    let identical = n1 == n2 && test.keys == reference.keys;
    if !identical {
        for j in 0..n2 {
            for i in 0..n1 {
                if test.stem_keys[i] == reference.stem_keys[j] && test.keys[i] != reference.keys[j]
                {
                    candidates[j].push(WordMatch {
                        start: j,
                        match_start: i,
                        module: STEM,
                    });
                    coverage1[i] += 1;
                    coverage2[j] += 1;
                }
            }
        }
    }

    let mut start = PartialAlignment {
        matches: vec![None; n2],
        weighted1: 0,
        weighted2: 0,
        chunks: 0,
        idx: 0,
        last_match_end: None,
        distance: 0,
        used1: vec![false; n1],
        used2: vec![false; n2],
    };
    // One-to-one matches that nothing overlaps are certain.
    for (j, list) in candidates.iter().enumerate() {
        if let [m] = list.as_slice() {
            if coverage2[j] == 1 && coverage1[m.match_start] == 1 {
                start.matches[j] = Some(*m);
                start.used2[j] = true;
                start.used1[m.match_start] = true;
            }
        }
    }
    let best = resolve(&candidates, start);

    let mut stats = MeteorStats {
        test_length: n1 as f64,
        reference_length: n2 as f64,
        test_function_words: test.function.iter().filter(|&&f| f).count() as f64,
        reference_function_words: reference.function.iter().filter(|&&f| f).count() as f64,
        ..MeteorStats::default()
    };
    let mut content1 = [0u32; MODULES];
    let mut content2 = [0u32; MODULES];
    let mut function1 = [0u32; MODULES];
    let mut function2 = [0u32; MODULES];
    for m in best.matches.iter().flatten() {
        if test.function[m.match_start] {
            function1[m.module] += 1;
        } else {
            content1[m.module] += 1;
        }
        if reference.function[m.start] {
            function2[m.module] += 1;
        } else {
            content2[m.module] += 1;
        }
    }
    for m in 0..MODULES {
        stats.test_content_matches[m] = content1[m] as f64;
        stats.reference_content_matches[m] = content2[m] as f64;
        stats.test_function_matches[m] = function1[m] as f64;
        stats.reference_function_matches[m] = function2[m] as f64;
        stats.test_total_matches += stats.test_content_matches[m];
        stats.test_total_matches += stats.test_function_matches[m];
        stats.reference_total_matches += stats.reference_content_matches[m];
        stats.reference_total_matches += stats.reference_function_matches[m];
        stats.test_word_matches += (content1[m] + function1[m]) as f64;
        stats.reference_word_matches += (content2[m] + function2[m]) as f64;
    }
    stats.chunks = count_chunks(&best.matches) as f64;
    stats
}

/// Chunks of the final alignment: runs of matches contiguous in both sentences.
fn count_chunks(matches: &[Option<WordMatch>]) -> u32 {
    let mut chunks = 0;
    let mut last_match_end: Option<usize> = None;
    for m in matches {
        match m {
            None => {
                if last_match_end.take().is_some() {
                    chunks += 1;
                }
            }
            Some(m) => {
                if last_match_end.is_some_and(|end| m.match_start != end) {
                    chunks += 1;
                }
                last_match_end = Some(m.match_start + 1);
            }
        }
    }
    if last_match_end.is_some() {
        chunks += 1;
    }
    chunks
}

/// The jar's beam search over the remaining (ambiguous) matches, left to right over the
/// reference.
#[allow(clippy::needless_range_loop)]
fn resolve(candidates: &[Vec<WordMatch>], start: PartialAlignment) -> PartialAlignment {
    let n2 = candidates.len();
    let mut next_paths = vec![start];
    for current in 0..=n2 {
        let mut paths = std::mem::take(&mut next_paths);
        // Stable, like Collections.sort.
        paths.sort_by_key(PartialAlignment::rank_key);
        let fallback = paths[0].clone();
        for mut path in paths.into_iter().take(BEAM_SIZE) {
            if current == n2 {
                if path.last_match_end.is_some() {
                    path.chunks += 1;
                }
                next_paths.push(path);
                continue;
            }
            if path.used2[current] {
                if current < path.idx {
                    next_paths.push(path);
                } else if let Some(m) = path.matches[path.idx] {
                    // A fixed match.
                    path.add_weighted(&m);
                    if path.last_match_end.is_some_and(|end| m.match_start != end) {
                        path.chunks += 1;
                    }
                    path.idx = m.start + 1;
                    path.last_match_end = Some(m.match_start + 1);
                    path.distance += (m.start as i32 - m.match_start as i32).abs();
                    next_paths.push(path);
                }
                continue;
            }
            for m in &candidates[current] {
                if path.is_used(m) {
                    continue;
                }
                let mut extended = path.clone();
                extended.used2[m.start] = true;
                extended.used1[m.match_start] = true;
                extended.matches[current] = Some(*m);
                extended.add_weighted(m);
                if extended
                    .last_match_end
                    .is_some_and(|end| m.match_start != end)
                {
                    extended.chunks += 1;
                }
                extended.idx = m.start + 1;
                extended.last_match_end = Some(m.match_start + 1);
                // The jar adds this distance to the path being extended, not the new one.
                path.distance += (m.start as i32 - m.match_start as i32).abs();
                next_paths.push(extended);
            }
            // Skip this reference word.
            if path.last_match_end.take().is_some() {
                path.chunks += 1;
            }
            path.idx += 1;
            next_paths.push(path);
        }
        if next_paths.is_empty() {
            next_paths.push(fallback);
        }
    }
    next_paths.sort_by_key(PartialAlignment::rank_key);
    next_paths.swap_remove(0)
}

/// METEOR (exact+stem) of a corpus: `references[i]` are the references of hypothesis `i`.
pub fn meteor_exact_stem<S: AsRef<str>>(
    references: &[Vec<S>],
    hypotheses: &[S],
) -> Result<MeteorScores, MetricsError> {
    Meteor::new().score_corpus(references, hypotheses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_string_hashcode() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("hello"), 99162322);
        assert_eq!(java_hash("Aa"), java_hash("BB"));
        assert_eq!(java_hash("the quick brown fox"), 1302335171);
    }

    #[test]
    fn identical_sentences_score_the_perfect_match() {
        let m = Meteor::new();
        let stats = m.segment_stats("a man rides a horse", &["a man rides a horse"]);
        assert_eq!(stats.chunks, 1.0);
        assert_eq!(stats.test_total_matches, 5.0);
        // Perfect match: Fmean = 1, no fragmentation penalty.
        assert!((stats.score() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn empty_hypothesis_scores_zero() {
        let m = Meteor::new();
        assert_eq!(m.segment_stats("", &["a dog"]).score(), 0.0);
        let out = m
            .score_corpus(&[vec!["a dog"], vec!["a cat"]], &["", "a cat"])
            .unwrap();
        assert_eq!(out.per_image[0], 0.0);
        assert!(out.corpus > 0.0 && out.corpus < out.per_image[1]);
    }
}
