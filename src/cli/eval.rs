//! `gaze eval`: caption a prepared split at several beam sizes and score every result.
//!
//! The work is `gaze::eval::evaluate` and the report `gaze::eval::report`; this file loads the
//! inputs, draws the progress bar and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use gaze::data::karpathy::Split;
use gaze::data::PreparedSplit;
use gaze::eval::report::{self, DataReport, ModelReport, Report};
use gaze::eval::{self, EvalOptions, EvalProgress};

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
    /// Beam sizes, comma-separated; one table row and one results file each [default: 1,3,5;
    /// none with --sample].
    #[arg(long, value_delimiter = ',')]
    pub beam_sizes: Option<Vec<usize>>,
    /// Images encoded and searched together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Stop the search after this many steps (the tutorial's 50).
    #[arg(long, default_value_t = 50)]
    pub max_steps: usize,
    /// Evaluate only the first N images of the split.
    #[arg(long, value_name = "N")]
    pub max_images: Option<usize>,
    #[command(flatten)]
    pub decoding: super::caption::DecodingArgs,
    // With --sample, one more row (s) of sampled captions: image i of the split draws from its
    // own stream of --seed.
    #[command(flatten)]
    pub sampling: super::caption::SamplingArgs,
    /// Write every number at full precision, with model and data details, to this JSON file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write one COCO-style results file per beam size ([{"image_id", "caption"}]) here.
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let model = args.source.load()?;
    let split = PreparedSplit::open(&args.data_folder, &args.data_name, args.split)?;
    let split_name = args.split.to_string().to_lowercase();
    let search = args
        .decoding
        .beam_options(1, args.max_steps, &model.word_map)?;
    let sample = args
        .sampling
        .options(search.temperature, args.max_steps)?
        .map(|options| eval::SampledEval {
            options,
            seed: args.sampling.seed,
        });
    let beam_sizes = match (&args.beam_sizes, &sample) {
        (Some(sizes), _) => sizes.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => vec![1, 3, 5],
    };
    let opts = EvalOptions {
        beam_sizes,
        batch_size: args.batch_size,
        search,
        max_images: args.max_images,
        sample,
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
    let bar = gaze::progress::bar(total as u64, "eval images");
    bar.set_message(format!("beams {:?}", opts.beam_sizes));
    let evaluation = eval::evaluate(&model, &split, &opts, &mut |p| match p {
        EvalProgress::Captioned { done, .. } => bar.set_position(done as u64),
        EvalProgress::Scoring { row } => bar.set_message(format!("scoring row {}", row + 1)),
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

    let results_files = match &args.results_dir {
        Some(dir) => report::write_results_files(dir, &args.data_name, &split_name, &evaluation)?
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None; evaluation.beams.len()],
    };
    print!(
        "{}",
        report::table(&evaluation, &args.data_name, &split_name)
    );
    for path in results_files.iter().flatten() {
        println!("results: {}", path.display());
    }

    if let Some(path) = &args.report {
        let model = ModelReport::of(&model, args.source.word_map.as_deref())?;
        let data = DataReport::of(&args.data_folder, &args.data_name, &split, &evaluation);
        Report::new(model, data, &opts, &evaluation, results_files).write(path)?;
        println!("report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
