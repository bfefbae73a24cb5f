//! `gaze prepare`: Karpathy split JSON + images -> the tutorial's HDF5/JSON training files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Args;
use gaze::data::karpathy::Split;
use gaze::data::prepare::{prepare, PrepareConfig, PrepareProgress};
use gaze::data::DataError;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Dataset name: coco, flickr8k, flickr30k, or another name (used in the file names; coco
    /// images live under FILEPATH/FILENAME, the others under FILENAME).
    #[arg(long)]
    pub dataset: String,
    /// Karpathy's split JSON (dataset_coco.json, dataset_flickr8k.json, ...).
    #[arg(long)]
    pub karpathy_json: PathBuf,
    /// Folder holding the images.
    #[arg(long)]
    pub image_folder: PathBuf,
    /// Folder for the prepared files (created if missing).
    #[arg(long)]
    pub output_folder: PathBuf,
    /// Captions kept per image (topped up by random choice, or sampled).
    #[arg(long, default_value_t = 5)]
    pub captions_per_image: u32,
    /// Words seen this many times or fewer become <unk>.
    #[arg(long, default_value_t = 5)]
    pub min_word_freq: u32,
    /// Captions with more tokens than this are dropped.
    #[arg(long, default_value_t = 50)]
    pub max_len: usize,
    /// Seed of the caption sampling (the tutorial's is 123).
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
    /// Decoding threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
}

/// Progress bars per split; bad images are printed above the bar.
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl PrepareProgress for Bars {
    fn split_started(&self, split: Split, images: usize) {
        let bar = ProgressBar::new(images as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>5} [{bar:40}] {pos}/{len} images, {per_sec}, eta {eta}",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        bar.set_prefix(split.file_tag());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn image_written(&self, _split: Split) {
        if let Some(bar) = self.bar.lock().expect("progress lock").as_ref() {
            bar.inc(1);
        }
    }

    fn image_skipped(&self, split: Split, _path: &Path, error: &DataError) {
        let line = format!("skipped ({split}): {error}");
        match self.bar.lock().expect("progress lock").as_ref() {
            Some(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    fn split_finished(&self, _split: Split, _written: usize) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish();
        }
    }
}

pub fn run(args: PrepareArgs) -> Result<ExitCode> {
    let mut cfg = PrepareConfig::new(
        &args.dataset,
        &args.karpathy_json,
        &args.image_folder,
        &args.output_folder,
    );
    cfg.captions_per_image = args.captions_per_image;
    cfg.min_word_freq = args.min_word_freq;
    cfg.max_len = args.max_len;
    cfg.seed = args.seed;
    cfg.threads = args.threads;
    cfg.overwrite = args.force;
    let bars = Bars {
        bar: Mutex::new(None),
    };
    let report = match prepare(&cfg, &bars) {
        Err(DataError::Exists { path }) => {
            anyhow::bail!(
                "{}: already exists; pass --force to overwrite the prepared files",
                path.display()
            )
        }
        other => other.context("preparing the dataset")?,
    };

    let written = report.images_written();
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "wrote {} files with base name {} to {} (word map: {} entries)",
        report.files.len(),
        report.base,
        args.output_folder.display(),
        report.word_map_size
    );
    for s in &report.splits {
        eprintln!(
            "  {:>5}: {} images, {} captions",
            s.split.file_tag(),
            s.written,
            s.written * cfg.captions_per_image as usize
        );
    }
    if report.images_without_captions > 0 {
        eprintln!(
            "  {} images had no caption of at most {} tokens and were left out (as the tutorial does)",
            report.images_without_captions, cfg.max_len
        );
    }
    eprintln!(
        "  {written} images in {secs:.1} s ({:.1} images/s)",
        written as f64 / secs.max(1e-9)
    );
    if report.skipped.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{} images could not be read and were skipped with their captions:",
        report.skipped.len()
    );
    for s in report.skipped.iter().take(20) {
        // The reason names the file.
        eprintln!("  {} ({})", s.reason, s.split);
    }
    if report.skipped.len() > 20 {
        eprintln!("  ... and {} more", report.skipped.len() - 20);
    }
    Ok(ExitCode::from(2))
}
