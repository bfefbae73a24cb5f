//! `gaze eval`: caption a prepared split at several beam sizes and score every result.
//!
//! The work is `gaze::eval::evaluate`; this file loads the inputs, draws the progress bar,
//! prints the table and writes the JSON report and the COCO-style results files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use gaze::data::karpathy::Split;
use gaze::data::PreparedSplit;
use gaze::eval::{self, BeamEvaluation, EvalOptions, EvalProgress, Evaluation};
use gaze::metrics::{CorpusMetrics, ImageMetrics};
use gaze::model::BeamOptions;
use indicatif::ProgressBar;
use serde::Serialize;

use super::ModelSource;

#[derive(Args, Debug)]
#[command(after_help = "\
Image ids: the prepared files keep no COCO ids, so the results files and the report name each \
image by its index in the split (0-based, in the order of the prepared files).

Columns: BLEU-1..4 are NLTK's corpus_bleu over words; BLEU-4c is coco-caption's BLEU-4; METEOR \
is METEOR (exact+stem), not the METEOR jar's number; BLEU-4t is the tutorial's eval.py number \
(NLTK BLEU-4 over word ids, <unk> kept, so rare words match each other). In the word metrics a \
<unk> matches nothing. SPICE is not computed.")]
pub struct EvalArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// Folder holding the prepared files (WORDMAP_*.json, *_IMAGES_*.hdf5, *_CAPTIONS_*.json, ...).
    #[arg(long)]
    pub data_folder: PathBuf,
    /// Base name of the prepared files, e.g. coco_5_cap_per_img_5_min_word_freq.
    #[arg(long)]
    pub data_name: String,
    /// Which prepared split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Beam sizes, comma-separated; one table row and one results file each.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    pub beam_sizes: Vec<usize>,
    /// Images encoded and searched together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Stop the search after this many steps (the tutorial's 50).
    #[arg(long, default_value_t = 50)]
    pub max_steps: usize,
    /// Evaluate only the first N images of the split.
    #[arg(long, value_name = "N")]
    pub max_images: Option<usize>,
    /// Write every number at full precision, with model and data details, to this JSON file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write one COCO-style results file per beam size ([{"image_id", "caption"}]) here.
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
}

/// A file and its BLAKE3 hash, so a report says exactly what was evaluated.
#[derive(Serialize)]
struct HashedFile {
    path: PathBuf,
    blake3: String,
}

#[derive(Serialize)]
struct ModelReport {
    #[serde(flatten)]
    file: HashedFile,
    /// The word map given with --word-map, if any.
    word_map: Option<HashedFile>,
    config: gaze::model::ModelConfig,
    vocabulary: usize,
}

#[derive(Serialize)]
struct DataReport {
    folder: PathBuf,
    name: String,
    split: String,
    images: usize,
    references_per_image: usize,
    word_map: PathBuf,
    word_maps_match: bool,
}

#[derive(Serialize)]
struct SearchReport {
    beam_sizes: Vec<usize>,
    max_steps: usize,
    length_normalization: Option<f32>,
    forbid_unk: bool,
    block_repeated_trigrams: bool,
    batch_size: usize,
}

#[derive(Serialize)]
struct BeamMetrics<'a> {
    #[serde(flatten)]
    words: &'a CorpusMetrics,
    bleu_4_tutorial: f64,
}

#[derive(Serialize)]
struct ImageReport<'a> {
    image_id: usize,
    caption: &'a str,
    log_prob: f32,
    finished: bool,
    #[serde(flatten)]
    metrics: &'a ImageMetrics,
}

#[derive(Serialize)]
struct BeamReport<'a> {
    beam_size: usize,
    metrics: BeamMetrics<'a>,
    nltk_bleu_integer_zero: bool,
    nltk_bleu_zero_count_orders: &'a [usize],
    unfinished: usize,
    search_seconds: f64,
    scoring_seconds: f64,
    images_per_second: f64,
    results_file: Option<PathBuf>,
    per_image: Vec<ImageReport<'a>>,
}

#[derive(Serialize)]
struct Report<'a> {
    model: ModelReport,
    data: DataReport,
    search: SearchReport,
    image_id: &'static str,
    not_computed: &'static [&'static str],
    encode_seconds: f64,
    beams: Vec<BeamReport<'a>>,
}

#[derive(Serialize)]
struct ResultEntry<'a> {
    image_id: usize,
    caption: &'a str,
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let model = args.source.load()?;
    let split = PreparedSplit::open(&args.data_folder, &args.data_name, args.split)?;
    let split_name = args.split.to_string().to_lowercase();
    let opts = EvalOptions {
        beam_sizes: args.beam_sizes.clone(),
        batch_size: args.batch_size,
        search: BeamOptions {
            max_steps: args.max_steps,
            ..BeamOptions::default()
        },
        max_images: args.max_images,
    };
    if model.word_map.words() != split.word_map().words() {
        eprintln!(
            "warning: the model's word map differs from {}; captions are matched to the references by their words",
            split.files().word_map().display()
        );
    }
    if let Some(dir) = &args.results_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let total = opts
        .max_images
        .map_or(split.image_count(), |m| m.min(split.image_count()));
    let bar = progress_bar(total);
    bar.set_message(format!("beams {:?}", opts.beam_sizes));
    let evaluation = eval::evaluate(&model, &split, &opts, &mut |p| match p {
        EvalProgress::Captioned { done, .. } => bar.set_position(done as u64),
        EvalProgress::Scoring { beam_size } => bar.set_message(format!("scoring beam {beam_size}")),
    });
    bar.finish_and_clear();
    let evaluation = evaluation.with_context(|| {
        format!(
            "evaluating {} on {} {}",
            model.source.display(),
            args.data_name,
            split_name
        )
    })?;

    let mut results_files = Vec::new();
    for beam in &evaluation.beams {
        let Some(dir) = &args.results_dir else {
            results_files.push(None);
            continue;
        };
        let path = dir.join(format!(
            "{}_{}_beam{}.json",
            args.data_name, split_name, beam.beam_size
        ));
        write_results(&path, beam)?;
        results_files.push(Some(path));
    }
    print!("{}", table(&evaluation, &args.data_name, &split_name));
    for path in results_files.iter().flatten() {
        println!("results: {}", path.display());
    }

    if let Some(path) = &args.report {
        let report = Report {
            model: model_report(&args.source, &model)?,
            data: DataReport {
                folder: args.data_folder.clone(),
                name: args.data_name.clone(),
                split: split_name.clone(),
                images: evaluation.images,
                references_per_image: evaluation.references_per_image,
                word_map: split.files().word_map(),
                word_maps_match: evaluation.word_maps_match,
            },
            search: SearchReport {
                beam_sizes: opts.beam_sizes.clone(),
                max_steps: opts.search.max_steps,
                length_normalization: opts.search.length_normalization,
                forbid_unk: opts.search.forbid_unk,
                block_repeated_trigrams: opts.search.block_repeated_trigrams,
                batch_size: opts.batch_size,
            },
            image_id: "index of the image in the split (0-based)",
            not_computed: &["spice"],
            encode_seconds: evaluation.encode_seconds,
            beams: evaluation
                .beams
                .iter()
                .zip(results_files)
                .map(|(beam, results_file)| beam_report(&evaluation, beam, results_file))
                .collect(),
        };
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write the report {}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn beam_report<'a>(
    evaluation: &Evaluation,
    beam: &'a BeamEvaluation,
    results_file: Option<PathBuf>,
) -> BeamReport<'a> {
    let scores = &beam.scores.metrics;
    BeamReport {
        beam_size: beam.beam_size,
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

fn write_results(path: &Path, beam: &BeamEvaluation) -> Result<()> {
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
    std::fs::write(path, json + "\n")
        .with_context(|| format!("cannot write the results file {}", path.display()))
}

fn hashed(path: &Path) -> Result<HashedFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(HashedFile {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        blake3: blake3::hash(&bytes).to_hex().to_string(),
    })
}

fn model_report(source: &ModelSource, model: &gaze::model::CaptionModel) -> Result<ModelReport> {
    Ok(ModelReport {
        file: hashed(&model.source)?,
        word_map: source.word_map.as_deref().map(hashed).transpose()?,
        config: model.config.clone(),
        vocabulary: model.word_map.len(),
    })
}

/// The people-facing table: one row per beam size, metrics rounded to 4 digits.
/// The results table, one row per beam size.
pub(crate) fn table(evaluation: &Evaluation, data_name: &str, split: &str) -> String {
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
            beam.beam_size,
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
        let unfinished = beam.unfinished();
        if unfinished > 0 {
            out.push_str(&format!(
                "note: beam {}: {unfinished} caption(s) did not reach <end> within the step limit\n",
                beam.beam_size
            ));
        }
        if beam.scores.metrics.nltk_bleu_integer_zero {
            out.push_str(&format!(
                "note: beam {}: no unigram matched; NLTK would return the integer 0 for BLEU\n",
                beam.beam_size
            ));
        }
    }
    out
}

/// The evaluation progress bar (images captioned).
pub(crate) fn progress_bar(total: usize) -> ProgressBar {
    gaze::progress::bar(total as u64, "eval images")
}
