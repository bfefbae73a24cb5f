//! `gaze score`: score a COCO-format results file against a Karpathy split.
//!
//! The matching and its policy are `gaze::eval::results`: results are
//! `[{"image_id": ..., "caption": "..."}]`; an `image_id` that appears twice or is not an image
//! of the split is an error (exit 2, nothing scored); images of the split without a result are
//! left out and reported, and the exit code is 2 unless `--allow-missing` is given. NLTK
//! BLEU-1..4 scores the Karpathy tokens as they are against the captions split on whitespace,
//! as the PyTorch tutorial calls NLTK; the coco-caption columns (BLEU, METEOR (exact+stem),
//! ROUGE-L, CIDEr-D) score the tokens joined by spaces and the captions, both through the PTB
//! subset, as coco-caption tokenises both (see `gaze::metrics::score_karpathy`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gaze::data::karpathy::{KarpathyDataset, Split};
use gaze::eval::results::{self, match_results, IdChoice, ScoreReport};

#[derive(Args, Debug)]
#[command(after_help = "\
Tokens: references are each sentence's Karpathy `tokens`. BLEU-1..4 (NLTK), the PyTorch \
tutorial's BLEU, uses those tokens as they are and the captions split on whitespace, as the \
tutorial passes them to NLTK's corpus_bleu. BLEU-1..4 (coco), METEOR (exact+stem), ROUGE-L and \
CIDEr-D use coco-caption's PTB tokenisation of the joined tokens and of the captions, which \
lowercases, splits clitics ('s) and drops punctuation tokens (: , . - ; ! ?), so the two BLEU \
families differ on punctuated captions. SPICE is not computed.")]
pub struct ScoreArgs {
    /// COCO-format results: a JSON array of {"image_id", "caption"}.
    #[arg(long)]
    pub results: PathBuf,
    /// Karpathy split JSON (dataset_coco.json, dataset_flickr8k.json, ...).
    #[arg(long)]
    pub karpathy_json: PathBuf,
    /// Which split's images to score (train includes restval).
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// table: rounded values for people; json: every metric at full precision, stable keys.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Exit 0 even when some images of the split have no caption in the results.
    #[arg(long)]
    pub allow_missing: bool,
    /// What the results' image_id is: auto (cocoid when every image of the split has one,
    /// else imgid), cocoid, imgid, or index: the image's position among the split's images in
    /// the Karpathy file, which is what `gaze eval --results-dir` writes (the prepared files
    /// keep that order, unless `gaze prepare` skipped unreadable images).
    #[arg(long, value_enum, default_value_t = IdChoice::Auto)]
    pub image_ids: IdChoice,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn run(args: ScoreArgs) -> Result<ExitCode> {
    let dataset = KarpathyDataset::load(&args.karpathy_json)?;
    let entries = results::read_results(&args.results)?;
    let matched =
        match_results(&dataset, args.split, args.image_ids, &entries).with_context(|| {
            format!(
                "{} against {}",
                args.results.display(),
                args.karpathy_json.display()
            )
        })?;
    let (scores, seconds) = matched.score()?;

    if !matched.missing.is_empty() {
        let shown: Vec<String> = matched.missing.iter().take(5).map(u64::to_string).collect();
        eprintln!(
            "warning: {} of {} {} images have no caption in {} (e.g. {} {}); scored the other {} only",
            matched.missing.len(),
            matched.missing.len() + matched.image_ids.len(),
            args.split,
            args.results.display(),
            matched.id_field.describe(),
            shown.join(", "),
            matched.image_ids.len(),
        );
    }
    match args.format {
        Format::Table => print!("{}", results::table(&scores, &matched, args.split, seconds)),
        Format::Json => {
            let report = ScoreReport::new(
                &args.results,
                &args.karpathy_json,
                args.split,
                &matched,
                &scores,
                seconds,
            );
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(if matched.missing.is_empty() || args.allow_missing {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
