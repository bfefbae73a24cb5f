//! Evaluation of a captioning model on a prepared split: batched beam search at one or more
//! beam sizes, every caption metric, and timings.
//!
//! `gaze eval`, the end of training and scheduled retraining must judge models the same way,
//! so they all call [`evaluate`] (or, with captions made elsewhere, [`References::score`]).
//!
//! What it guarantees:
//! - Images are read, normalised and encoded once per run; every beam size decodes the same
//!   encoder output, so beam sizes differ only in the search.
//! - Results come back in split order: `captions[i]` belongs to image `i` of the split. The
//!   prepared files keep no COCO ids, so that index is the only image id there is.
//! - References are every caption of the image in the prepared files, with `<start>`, `<end>`
//!   and `<pad>` removed.
//! - Two views of the same captions are scored:
//!   - the word metrics ([`crate::metrics::score_tokenized`]: BLEU (NLTK and coco),
//!     METEOR (exact+stem), ROUGE-L, CIDEr-D) over words. The prepared files replaced every
//!     rare word by `<unk>`, so a reference `<unk>` stands for a word nobody can name any more:
//!     it counts as a word (lengths stay right) but matches nothing, and so does a `<unk>` the
//!     model emits. Apart from tokenisation and the rare words' idf in CIDEr-D, this is what
//!     scoring against the original references gives, since the model cannot emit a rare word;
//!   - the PyTorch tutorial's own number (`eval.py`): NLTK corpus BLEU-4 over word ids with
//!     `<unk>` kept, where every rare word is the same token and can match.
//! - Timings: reading, normalising and encoding are shared ([`Evaluation::encode_seconds`]);
//!   each beam size has its own search time. [`Evaluation::images_per_second`] counts both,
//!   as if that beam size ran alone.
//!
//! [`report`] turns an evaluation into the JSON report, results files and table that
//! `gaze eval` writes; [`results`] matches COCO-format results files to a Karpathy split and
//! scores them (`gaze score`).

pub mod report;
pub mod results;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::hdf5::IMAGE_BYTES;
use crate::data::image::{normalize_chw, TUTORIAL_SIZE};
use crate::data::{DataError, PreparedSplit, WordMap};
use crate::metrics::{self, bleu_nltk, CorpusScores, MetricsError};
use crate::model::sample::{image_seed, SampleOptions};
use crate::model::{BeamOptions, Caption, CaptionModel, ModelError};

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("bad evaluation options: {0}")]
    Options(String),
    #[error("{path}: the split holds no images to evaluate")]
    EmptySplit { path: PathBuf },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("building an image batch: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("scoring the captions of {row}: {source}")]
    Metrics {
        row: String,
        #[source]
        source: MetricsError,
    },
}

/// What to evaluate and how.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Beam sizes to decode with, in report order (each at least 1, no repeats).
    pub beam_sizes: Vec<usize>,
    /// Images encoded and searched together.
    pub batch_size: usize,
    /// Search settings other than the beam size (the tutorial's by default).
    pub search: BeamOptions,
    /// Evaluate only the first `n` images of the split.
    pub max_images: Option<usize>,
    /// Also caption by sampling (one more row, after the beam sizes).
    pub sample: Option<SampledEval>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            beam_sizes: vec![1, 3, 5],
            batch_size: 16,
            search: BeamOptions::default(),
            max_images: None,
            sample: None,
        }
    }
}

/// Captions drawn instead of searched: per image the most likely of `options.samples` draws,
/// image `i` of the split drawing from stream `image_seed(seed, i)` (so the batch size does
/// not change them).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledEval {
    pub options: SampleOptions,
    pub seed: u64,
}

/// How one row of an evaluation was decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum RowDecoding {
    /// Beam search with this many beams and [`EvalOptions::search`]'s other settings.
    Beam(usize),
    /// Sampling.
    Sample(SampledEval),
}

impl RowDecoding {
    pub fn beam_size(&self) -> Option<usize> {
        match self {
            RowDecoding::Beam(k) => Some(*k),
            RowDecoding::Sample(_) => None,
        }
    }

    /// How the table and messages name the row: `beam 3`, `top-p:0.9 x5`.
    pub fn label(&self) -> String {
        match self {
            RowDecoding::Beam(k) => format!("beam {k}"),
            RowDecoding::Sample(s) => format!("{} x{}", s.options.truncation, s.options.samples),
        }
    }

    /// The row's part of a results file name: `beam3`, `sample`.
    pub fn file_tag(&self) -> String {
        match self {
            RowDecoding::Beam(k) => format!("beam{k}"),
            RowDecoding::Sample(_) => "sample".into(),
        }
    }
}

/// Progress reports, in order: `Captioned` after every batch, then `Scoring` per beam size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalProgress {
    /// `done` of `total` images have been captioned at every beam size.
    Captioned { done: usize, total: usize },
    /// The captions of row `row` (in [`Evaluation::beams`] order) are being scored.
    Scoring { row: usize },
}

/// One image's caption from the search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluatedCaption {
    /// The words joined by spaces (`<unk>` kept as written).
    pub text: String,
    /// Token ids as beam search returned them (`<start>` ... `<end>`), in the model's word map.
    pub tokens: Vec<u32>,
    /// Summed log-probability.
    pub log_prob: f32,
    /// Whether the search reached `<end>`.
    pub finished: bool,
}

/// Scores of one set of captions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionScores {
    /// The word metrics, corpus-wide and per image.
    pub metrics: CorpusScores,
    /// The tutorial's `eval.py` number: NLTK corpus BLEU-4 over word ids, `<unk>` kept.
    pub bleu_4_tutorial: f64,
}

/// Results of one row: a beam size, or sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamEvaluation {
    pub decoding: RowDecoding,
    /// One caption per image, in split order.
    pub captions: Vec<EvaluatedCaption>,
    pub scores: CaptionScores,
    /// Beam search time for every image.
    pub search_seconds: f64,
    pub scoring_seconds: f64,
}

impl BeamEvaluation {
    /// Images whose search stopped before `<end>`.
    pub fn unfinished(&self) -> usize {
        self.captions.iter().filter(|c| !c.finished).count()
    }
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Images evaluated (the first `images` of the split).
    pub images: usize,
    pub references_per_image: usize,
    /// Whether the model's word map is the split's (same words at the same ids). When it is
    /// not, hypotheses are mapped to the split's ids through their words for the tutorial's
    /// BLEU-4, and the word metrics are unaffected.
    pub word_maps_match: bool,
    /// Reading, normalising and encoding every image (shared by all beam sizes).
    pub encode_seconds: f64,
    pub beams: Vec<BeamEvaluation>,
}

impl Evaluation {
    /// Images per second at `beam`, counting the shared encoding and that beam's search.
    pub fn images_per_second(&self, beam: &BeamEvaluation) -> f64 {
        let seconds = self.encode_seconds + beam.search_seconds;
        if seconds > 0.0 {
            self.images as f64 / seconds
        } else {
            f64::INFINITY
        }
    }
}

/// The references of the first images of a split, ready to score captions against.
#[derive(Debug, Clone)]
pub struct References {
    word_map: Arc<WordMap>,
    /// Per image, each reference as space-joined words with `<unk>` made unmatchable.
    text: Vec<Vec<String>>,
    /// Per image, each reference as word ids (`<unk>` kept).
    ids: Vec<Vec<Vec<u32>>>,
}

impl References {
    /// The references of images `0..images` of `split`.
    pub fn from_split(split: &PreparedSplit, images: usize) -> Self {
        let ids = (0..images.min(split.image_count()))
            .map(|image| split.reference_ids(image))
            .collect();
        Self::from_ids(split.word_map().clone(), ids)
    }

    /// References given as word ids of `word_map` (`ids[i]`: the references of image i,
    /// without `<start>`, `<end>` and `<pad>`).
    pub fn from_ids(word_map: Arc<WordMap>, ids: Vec<Vec<Vec<u32>>>) -> Self {
        let unk = word_map.unk;
        let mut unknown = 0usize;
        let text = ids
            .iter()
            .map(|refs| {
                refs.iter()
                    .map(|r| {
                        let words: Vec<String> = r
                            .iter()
                            .map(|&id| {
                                if Some(id) == unk {
                                    // A distinct token per occurrence: it matches nothing.
                                    unknown += 1;
                                    format!("<unk#{unknown}>")
                                } else {
                                    word_map.word(id).unwrap_or("<unk>").to_string()
                                }
                            })
                            .collect();
                        words.join(" ")
                    })
                    .collect()
            })
            .collect();
        References {
            word_map,
            text,
            ids,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Scores one caption per image (`hypotheses[i]` for image i, as token ids in
    /// `word_map`, with or without `<start>`/`<end>`).
    pub fn score(
        &self,
        word_map: &WordMap,
        hypotheses: &[Vec<u32>],
    ) -> Result<CaptionScores, MetricsError> {
        let same_map = word_map.words() == self.word_map.words();
        let hyp_words: Vec<Vec<&str>> = hypotheses
            .iter()
            .map(|tokens| {
                tokens
                    .iter()
                    .filter(|&&t| !word_map.is_special(t))
                    .map(|&t| word_map.word(t).unwrap_or("<unk>"))
                    .collect()
            })
            .collect();
        let hyp_text: Vec<String> = hyp_words.iter().map(|w| w.join(" ")).collect();
        let hyp_ids: Vec<Vec<u32>> = if same_map {
            hypotheses
                .iter()
                .map(|tokens| {
                    tokens
                        .iter()
                        .copied()
                        .filter(|&t| !word_map.is_special(t))
                        .collect()
                })
                .collect()
        } else {
            // Through the words into the split's ids; a word it lacks is its `<unk>` (or,
            // without one, an id no reference holds).
            hyp_words
                .iter()
                .map(|words| {
                    words
                        .iter()
                        .map(|w| self.word_map.id_or_unk(w).unwrap_or(u32::MAX))
                        .collect()
                })
                .collect()
        };
        let metrics = metrics::score_tokenized(&self.text, &hyp_text)?;
        let tutorial = bleu_nltk::corpus_bleu(&self.ids, &hyp_ids, &[&[0.25; 4]])?;
        Ok(CaptionScores {
            metrics,
            bleu_4_tutorial: tutorial.scores[0],
        })
    }
}

/// Captions the first images of `split` with `model` at every beam size of `opts` and scores
/// them. `progress` hears about every batch and every scoring step.
pub fn evaluate(
    model: &CaptionModel,
    split: &PreparedSplit,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(EvalProgress),
) -> Result<Evaluation, EvalError> {
    check_options(opts)?;
    let total = opts
        .max_images
        .map_or(split.image_count(), |m| m.min(split.image_count()));
    if total == 0 {
        return Err(EvalError::EmptySplit {
            path: split.files().images(split.split()),
        });
    }
    let word_maps_match = model.word_map.words() == split.word_map().words();
    let mut rows: Vec<RowDecoding> = opts
        .beam_sizes
        .iter()
        .map(|&k| RowDecoding::Beam(k))
        .collect();
    rows.extend(opts.sample.clone().map(RowDecoding::Sample));
    let mut captions: Vec<Vec<EvaluatedCaption>> =
        rows.iter().map(|_| Vec::with_capacity(total)).collect();
    let mut search_seconds = vec![0.0f64; rows.len()];
    let mut encode_seconds = 0.0f64;

    let batch = opts.batch_size;
    let side = TUTORIAL_SIZE as usize;
    let mut raw = vec![0u8; batch * IMAGE_BYTES];
    let mut pixels = vec![0f32; batch * IMAGE_BYTES];
    for start in (0..total).step_by(batch) {
        let count = batch.min(total - start);
        let started = Instant::now();
        let (raw, pixels) = (
            &mut raw[..count * IMAGE_BYTES],
            &mut pixels[..count * IMAGE_BYTES],
        );
        split
            .images()
            .read_images_into(start, raw)
            .map_err(DataError::from)?;
        pixels
            .par_chunks_mut(IMAGE_BYTES)
            .zip(raw.par_chunks(IMAGE_BYTES))
            .for_each(|(out, chw)| normalize_chw(chw, out));
        let images = Tensor::from_slice(pixels, (count, 3, side, side), &model.device)?;
        let features = model.encoder.forward(&images)?;
        // Kernels on an accelerator run asynchronously: wait, so encoding is timed as such.
        model.device.synchronize()?;
        encode_seconds += started.elapsed().as_secs_f64();
        for (k, row) in rows.iter().enumerate() {
            let started = Instant::now();
            let found: Vec<Caption> = match row {
                RowDecoding::Beam(beam_size) => {
                    let search = BeamOptions {
                        beam_size: *beam_size,
                        ..opts.search.clone()
                    };
                    model.caption_features(&features, &search)?
                }
                RowDecoding::Sample(s) => {
                    let seeds: Vec<u64> = (start..start + count)
                        .map(|i| image_seed(s.seed, i as u64))
                        .collect();
                    model.sample_features(&features, &s.options, &seeds)?
                }
            };
            search_seconds[k] += started.elapsed().as_secs_f64();
            captions[k].extend(found.into_iter().map(|c| EvaluatedCaption {
                text: c.text,
                tokens: c.tokens,
                log_prob: c.score,
                finished: c.finished,
            }));
        }
        progress(EvalProgress::Captioned {
            done: start + count,
            total,
        });
    }

    let references = References::from_split(split, total);
    let mut beams = Vec::with_capacity(rows.len());
    for (row, ((decoding, captions), search_seconds)) in rows
        .into_iter()
        .zip(captions)
        .zip(search_seconds)
        .enumerate()
    {
        progress(EvalProgress::Scoring { row });
        let started = Instant::now();
        let tokens: Vec<Vec<u32>> = captions.iter().map(|c| c.tokens.clone()).collect();
        let scores = references
            .score(&model.word_map, &tokens)
            .map_err(|source| EvalError::Metrics {
                row: decoding.label(),
                source,
            })?;
        beams.push(BeamEvaluation {
            decoding,
            captions,
            scores,
            search_seconds,
            scoring_seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(Evaluation {
        images: total,
        references_per_image: split.captions_per_image(),
        word_maps_match,
        encode_seconds,
        beams,
    })
}

fn check_options(opts: &EvalOptions) -> Result<(), EvalError> {
    if opts.beam_sizes.is_empty() && opts.sample.is_none() {
        return Err(EvalError::Options("no beam sizes given".into()));
    }
    if let Some(s) = &opts.sample {
        if s.options.samples == 0 {
            return Err(EvalError::Options("at least one sample per image".into()));
        }
        if !(s.options.temperature > 0.0 && s.options.temperature.is_finite()) {
            return Err(EvalError::Options(format!(
                "the sampling temperature must be a positive number, got {}",
                s.options.temperature
            )));
        }
    }
    if opts.beam_sizes.contains(&0) {
        return Err(EvalError::Options("a beam size must be at least 1".into()));
    }
    let mut seen = opts.beam_sizes.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != opts.beam_sizes.len() {
        return Err(EvalError::Options(format!(
            "beam sizes {:?} repeat a size",
            opts.beam_sizes
        )));
    }
    if opts.batch_size == 0 {
        return Err(EvalError::Options(
            "the batch size must be at least 1".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let ok = EvalOptions::default();
        assert!(check_options(&ok).is_ok());
        for bad in [
            EvalOptions {
                beam_sizes: vec![],
                ..ok.clone()
            },
            EvalOptions {
                beam_sizes: vec![1, 0],
                ..ok.clone()
            },
            EvalOptions {
                beam_sizes: vec![3, 1, 3],
                ..ok.clone()
            },
            EvalOptions {
                batch_size: 0,
                ..ok.clone()
            },
        ] {
            assert!(matches!(check_options(&bad), Err(EvalError::Options(_))));
        }
    }

    fn word_map() -> Arc<WordMap> {
        let words = ["a", "cat", "sits", "on", "the", "mat", "dog", "runs"];
        Arc::new(WordMap::from_counts(words.iter().map(|w| (*w, 10)), 5))
    }

    fn ids(wm: &WordMap, text: &str) -> Vec<u32> {
        text.split(' ').map(|w| wm.id_or_unk(w).unwrap()).collect()
    }

    #[test]
    fn unk_matches_in_the_tutorial_bleu_only() {
        let wm = word_map();
        let refs = vec![
            vec![ids(&wm, "a cat sits on the zebra mat")],
            vec![ids(&wm, "the dog runs on a mat")],
        ];
        let references = References::from_ids(wm.clone(), refs.clone());
        // Hypotheses equal to the references, `<unk>` included, with `<start>`/`<end>`.
        let hyps: Vec<Vec<u32>> = refs
            .iter()
            .map(|r| {
                let mut t = vec![wm.start];
                t.extend(&r[0]);
                t.push(wm.end);
                t
            })
            .collect();
        let scores = references.score(&wm, &hyps).unwrap();
        assert_eq!(scores.bleu_4_tutorial, 1.0);
        let words = &scores.metrics.corpus;
        assert!(
            words.bleu_4_nltk < 1.0 && words.bleu_4_nltk > 0.3,
            "{words:?}"
        );
        // Unigram precision: the one `<unk>` of 13 words is the only miss.
        assert!((words.bleu_1_nltk - 12.0 / 13.0).abs() < 1e-12, "{words:?}");
        // The second image has no `<unk>`: a perfect caption.
        assert!((scores.metrics.per_image[1].bleu_4_coco - 1.0).abs() < 1e-6);
        assert!(scores.metrics.per_image[0].bleu_4_coco < 0.9);

        // A model with a different word map: mapped through the words, same tutorial score.
        let other = Arc::new(WordMap::from_counts(
            ["runs", "dog", "mat", "the", "on", "sits", "cat", "a"]
                .iter()
                .map(|w| (*w, 10)),
            5,
        ));
        let translated: Vec<Vec<u32>> = hyps
            .iter()
            .map(|t| {
                t.iter()
                    .map(|&id| {
                        if id == wm.start {
                            other.start
                        } else if id == wm.end {
                            other.end
                        } else {
                            other.id_or_unk(wm.word(id).unwrap()).unwrap()
                        }
                    })
                    .collect()
            })
            .collect();
        let again = references.score(&other, &translated).unwrap();
        assert_eq!(again, scores);
    }
}
