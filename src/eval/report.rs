//! What an [`Evaluation`] leaves behind: the JSON report (every number at full precision, the
//! model and data files identified by their BLAKE3 hashes), one COCO-style results file per
//! beam size, and the people-facing table.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{BeamEvaluation, EvalOptions, Evaluation, RowDecoding};
use crate::data::PreparedSplit;
use crate::metrics::{CorpusMetrics, ImageMetrics};
use crate::model::{CaptionModel, LengthPenalty, ModelConfig};

/// Why a report or results file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the {what} {path}")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A file and its BLAKE3 hash, so a report says exactly what was evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct HashedFile {
    pub path: PathBuf,
    pub blake3: String,
}

impl HashedFile {
    /// Hashes `path` ([`crate::files::content_hash`]) and records it as an absolute path
    /// where it can be resolved.
    pub fn of(path: &Path) -> Result<Self, ReportError> {
        let blake3 = crate::files::content_hash(path).map_err(|source| ReportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(HashedFile {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            blake3,
        })
    }
}

#[derive(Serialize)]
pub struct ModelReport {
    #[serde(flatten)]
    pub file: HashedFile,
    /// The word map given beside the model, if any.
    pub word_map: Option<HashedFile>,
    pub config: ModelConfig,
    pub vocabulary: usize,
}

impl ModelReport {
    /// The model, its file and the separate word map it was loaded with (if one was given).
    pub fn of(model: &CaptionModel, word_map: Option<&Path>) -> Result<Self, ReportError> {
        Ok(ModelReport {
            file: HashedFile::of(&model.source)?,
            word_map: word_map.map(HashedFile::of).transpose()?,
            config: model.config.clone(),
            vocabulary: model.word_map.len(),
        })
    }
}

#[derive(Serialize)]
pub struct DataReport {
    pub folder: PathBuf,
    pub name: String,
    pub split: String,
    pub images: usize,
    pub references_per_image: usize,
    pub word_map: PathBuf,
    pub word_maps_match: bool,
}

impl DataReport {
    /// The prepared split `name` in `folder` as `evaluation` used it.
    pub fn of(folder: &Path, name: &str, split: &PreparedSplit, evaluation: &Evaluation) -> Self {
        DataReport {
            folder: folder.to_path_buf(),
            name: name.to_string(),
            split: split.split().to_string().to_lowercase(),
            images: evaluation.images,
            references_per_image: evaluation.references_per_image,
            word_map: split.files().word_map(),
            word_maps_match: evaluation.word_maps_match,
        }
    }
}

#[derive(Serialize)]
pub struct SearchReport {
    pub beam_sizes: Vec<usize>,
    pub max_steps: usize,
    pub length_normalization: Option<f32>,
    /// The length penalty the final sequence was chosen by.
    pub length_penalty: String,
    pub forbid_unk: bool,
    pub block_repeated_trigrams: bool,
    pub temperature: f32,
    pub no_repeat: bool,
    /// Word ids a caption may not end on.
    pub bad_endings: Vec<u32>,
    /// Diverse beam search: groups (1: off) and the cost of a word per earlier group.
    pub diverse_groups: usize,
    pub diversity: f32,
    /// The sampled row, if any.
    pub sample: Option<SampleReport>,
    pub batch_size: usize,
}

#[derive(Serialize)]
pub struct SampleReport {
    /// multinomial, top-k:K or top-p:P.
    pub method: String,
    pub samples: usize,
    pub temperature: f32,
    pub seed: u64,
}

impl SearchReport {
    pub fn of(opts: &EvalOptions) -> Self {
        SearchReport {
            beam_sizes: opts.beam_sizes.clone(),
            max_steps: opts.search.max_steps,
            length_normalization: match opts.search.length_penalty {
                LengthPenalty::Power { alpha } => Some(alpha),
                _ => None,
            },
            length_penalty: opts.search.length_penalty.to_string(),
            forbid_unk: opts.search.forbid_unk,
            block_repeated_trigrams: opts.search.block_repeated_trigrams,
            temperature: opts.search.temperature,
            no_repeat: opts.search.no_repeat,
            bad_endings: opts.search.bad_endings.clone(),
            diverse_groups: opts.search.groups,
            diversity: opts.search.diversity,
            sample: opts.sample.as_ref().map(|s| SampleReport {
                method: s.options.truncation.to_string(),
                samples: s.options.samples,
                temperature: s.options.temperature,
                seed: s.seed,
            }),
            batch_size: opts.batch_size,
        }
    }
}

#[derive(Serialize)]
pub struct BeamMetrics<'a> {
    #[serde(flatten)]
    pub words: &'a CorpusMetrics,
    pub bleu_4_tutorial: f64,
}

#[derive(Serialize)]
pub struct ImageReport<'a> {
    pub image_id: usize,
    pub caption: &'a str,
    pub log_prob: f32,
    pub finished: bool,
    #[serde(flatten)]
    pub metrics: &'a ImageMetrics,
}

#[derive(Serialize)]
pub struct BeamReport<'a> {
    /// Null for the sampled row.
    pub beam_size: Option<usize>,
    /// `beam N` or the sampling method and count.
    pub decoding: String,
    pub metrics: BeamMetrics<'a>,
    pub nltk_bleu_integer_zero: bool,
    pub nltk_bleu_zero_count_orders: &'a [usize],
    pub unfinished: usize,
    pub search_seconds: f64,
    pub scoring_seconds: f64,
    pub images_per_second: f64,
    pub results_file: Option<PathBuf>,
    pub per_image: Vec<ImageReport<'a>>,
}

impl<'a> BeamReport<'a> {
    /// One beam size of `evaluation`, with the results file written for it (if any).
    pub fn of(
        evaluation: &Evaluation,
        beam: &'a BeamEvaluation,
        results_file: Option<PathBuf>,
    ) -> Self {
        let scores = &beam.scores.metrics;
        BeamReport {
            beam_size: beam.decoding.beam_size(),
            decoding: beam.decoding.label(),
            metrics: BeamMetrics {
                words: &scores.corpus,
                bleu_4_tutorial: beam.scores.bleu_4_tutorial,
            },
            nltk_bleu_integer_zero: scores.nltk_bleu_integer_zero,
            nltk_bleu_zero_count_orders: &scores.nltk_bleu_zero_count_orders,
            unfinished: beam.unfinished(),
            search_seconds: beam.search_seconds,
            scoring_seconds: beam.scoring_seconds,
            images_per_second: evaluation.images_per_second(beam),
            results_file,
            per_image: beam
                .captions
                .iter()
                .zip(&scores.per_image)
                .enumerate()
                .map(|(image_id, (caption, metrics))| ImageReport {
                    image_id,
                    caption: &caption.text,
                    log_prob: caption.log_prob,
                    finished: caption.finished,
                    metrics,
                })
                .collect(),
        }
    }
}

/// The whole report, as `gaze eval --report` writes it.
#[derive(Serialize)]
pub struct Report<'a> {
    pub model: ModelReport,
    pub data: DataReport,
    pub search: SearchReport,
    pub image_id: &'static str,
    pub not_computed: &'static [&'static str],
    pub encode_seconds: f64,
    pub beams: Vec<BeamReport<'a>>,
}

impl<'a> Report<'a> {
    /// The report of `evaluation`; `results_files[i]` is the results file of beam `i`.
    pub fn new(
        model: ModelReport,
        data: DataReport,
        opts: &EvalOptions,
        evaluation: &'a Evaluation,
        results_files: Vec<Option<PathBuf>>,
    ) -> Self {
        Report {
            model,
            data,
            search: SearchReport::of(opts),
            image_id: "index of the image in the split (0-based)",
            not_computed: &["spice"],
            encode_seconds: evaluation.encode_seconds,
            beams: evaluation
                .beams
                .iter()
                .zip(results_files)
                .map(|(beam, results_file)| BeamReport::of(evaluation, beam, results_file))
                .collect(),
        }
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let json = serde_json::to_string_pretty(self)?;
        write(path, json + "\n", "report")
    }
}

#[derive(Serialize)]
struct ResultEntry<'a> {
    image_id: usize,
    caption: &'a str,
}

/// Writes one COCO-style results file per beam size into `dir`, named
/// `<data_name>_<split>_beam<N>.json`; returns their paths, in the order of the beams.
pub fn write_results_files(
    dir: &Path,
    data_name: &str,
    split: &str,
    evaluation: &Evaluation,
) -> Result<Vec<PathBuf>, ReportError> {
    let mut paths = Vec::with_capacity(evaluation.beams.len());
    for beam in &evaluation.beams {
        let path = dir.join(format!(
            "{data_name}_{split}_{}.json",
            beam.decoding.file_tag()
        ));
        write_results(&path, beam)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Writes one beam size's captions as a COCO-style results file: `[{"image_id", "caption"}]`,
/// the image id being the image's index in the split.
pub fn write_results(path: &Path, beam: &BeamEvaluation) -> Result<(), ReportError> {
    let entries: Vec<ResultEntry> = beam
        .captions
        .iter()
        .enumerate()
        .map(|(image_id, c)| ResultEntry {
            image_id,
            caption: &c.text,
        })
        .collect();
    let json = serde_json::to_string(&entries)?;
    write(path, json + "\n", "results file")
}

fn write(path: &Path, text: String, what: &'static str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The people-facing table: one row per beam size, metrics rounded to 4 digits, then notes.
pub fn table(evaluation: &Evaluation, data_name: &str, split: &str) -> String {
    let mut out = format!(
        "{data_name} {split}: {} images, {} references each\n",
        evaluation.images, evaluation.references_per_image
    );
    out.push_str(&format!(
        "{:>4} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}\n",
        "beam",
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
        "BLEU-4c",
        "METEOR",
        "ROUGE-L",
        "CIDEr-D",
        "BLEU-4t",
        "images/s"
    ));
    for beam in &evaluation.beams {
        let c = &beam.scores.metrics.corpus;
        out.push_str(&format!(
            "{:>4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>9.2}\n",
            match beam.decoding.beam_size() {
                Some(k) => k.to_string(),
                None => "s".into(),
            },
            c.bleu_1_nltk,
            c.bleu_2_nltk,
            c.bleu_3_nltk,
            c.bleu_4_nltk,
            c.bleu_4_coco,
            c.meteor_exact_stem,
            c.rouge_l,
            c.cider_d,
            beam.scores.bleu_4_tutorial,
            evaluation.images_per_second(beam),
        ));
    }
    out.push_str(
        "BLEU-1..4: NLTK over words; BLEU-4c: coco-caption; METEOR: exact+stem only; \
         BLEU-4t: the tutorial's (word ids, <unk> kept); SPICE: not computed\n",
    );
    for beam in &evaluation.beams {
        if let RowDecoding::Sample(s) = &beam.decoding {
            out.push_str(&format!(
                "note: row s: sampled, {}, temperature {}, seed {}; the most likely draw per image\n",
                beam.decoding.label(),
                s.options.temperature,
                s.seed
            ));
        }
        let unfinished = beam.unfinished();
        if unfinished > 0 {
            out.push_str(&format!(
                "note: {}: {unfinished} caption(s) did not reach <end> within the step limit\n",
                beam.decoding.label()
            ));
        }
        if beam.scores.metrics.nltk_bleu_integer_zero {
            out.push_str(&format!(
                "note: {}: no unigram matched; NLTK would return the integer 0 for BLEU\n",
                beam.decoding.label()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::data::WordMap;
    use crate::eval::{EvaluatedCaption, References};

    /// An evaluation of two images at beam size 3, the second caption unfinished.
    fn evaluation() -> Evaluation {
        let wm = Arc::new(WordMap::from_counts(
            ["a", "cat", "dog", "sits"].iter().map(|w| (*w, 10)),
            5,
        ));
        let ids = |text: &str| -> Vec<u32> {
            text.split(' ').map(|w| wm.id_or_unk(w).unwrap()).collect()
        };
        let references = References::from_ids(
            wm.clone(),
            vec![vec![ids("a cat sits")], vec![ids("a dog")]],
        );
        let captions: Vec<EvaluatedCaption> = [("a cat sits", true), ("a dog", false)]
            .iter()
            .map(|(text, finished)| EvaluatedCaption {
                text: text.to_string(),
                tokens: ids(text),
                log_prob: -1.5,
                finished: *finished,
            })
            .collect();
        let tokens: Vec<Vec<u32>> = captions.iter().map(|c| c.tokens.clone()).collect();
        let scores = references.score(&wm, &tokens).unwrap();
        Evaluation {
            images: 2,
            references_per_image: 1,
            word_maps_match: true,
            encode_seconds: 1.0,
            beams: vec![BeamEvaluation {
                decoding: RowDecoding::Beam(3),
                captions,
                scores,
                search_seconds: 1.0,
                scoring_seconds: 0.1,
            }],
        }
    }

    #[test]
    fn results_files_report_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let evaluation = evaluation();
        let paths = write_results_files(dir.path(), "synth", "test", &evaluation).unwrap();
        assert_eq!(paths, vec![dir.path().join("synth_test_beam3.json")]);
        let results: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&paths[0]).unwrap()).unwrap();
        assert_eq!(
            results,
            serde_json::json!([
                {"image_id": 0, "caption": "a cat sits"},
                {"image_id": 1, "caption": "a dog"}
            ])
        );

        let model_file = dir.path().join("model.safetensors");
        std::fs::write(&model_file, b"weights").unwrap();
        let model = ModelReport {
            file: HashedFile::of(&model_file).unwrap(),
            word_map: None,
            config: ModelConfig::tutorial(8),
            vocabulary: 8,
        };
        assert_eq!(
            model.file.blake3,
            blake3::hash(b"weights").to_hex().as_str()
        );
        assert!(HashedFile::of(&dir.path().join("missing")).is_err());
        let data = DataReport {
            folder: dir.path().to_path_buf(),
            name: "synth".into(),
            split: "test".into(),
            images: 2,
            references_per_image: 1,
            word_map: dir.path().join("WORDMAP_synth.json"),
            word_maps_match: true,
        };
        let opts = EvalOptions {
            beam_sizes: vec![3],
            ..EvalOptions::default()
        };
        let report = Report::new(
            model,
            data,
            &opts,
            &evaluation,
            paths.into_iter().map(Some).collect(),
        );
        let path = dir.path().join("report.json");
        report.write(&path).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let beam = &json["beams"][0];
        assert_eq!(beam["beam_size"], 3);
        assert_eq!(beam["unfinished"], 1);
        assert_eq!(beam["images_per_second"], 1.0);
        assert_eq!(beam["per_image"][1]["caption"], "a dog");
        assert!(beam["metrics"]["bleu_4_tutorial"].is_number());
        assert!(beam["metrics"]["cider_d"].is_number());
        assert_eq!(json["search"]["beam_sizes"], serde_json::json!([3]));
        assert_eq!(json["not_computed"], serde_json::json!(["spice"]));
        assert!(json["model"]["blake3"].is_string());

        let table = table(&evaluation, "synth", "test");
        assert!(
            table.starts_with("synth test: 2 images, 1 references each\n"),
            "{table}"
        );
        assert!(
            table.contains("note: beam 3: 1 caption(s) did not reach <end>"),
            "{table}"
        );
    }
}
