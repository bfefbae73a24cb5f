//! `gaze synth`: write the captioned synthetic dataset (Karpathy JSON plus JPEG images).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gaze::data::synth::{self, SynthOptions};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder: gets dataset_synth.json and images/.
    #[arg(long)]
    pub out: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = 2000)]
    pub train: usize,
    /// Validation images.
    #[arg(long, default_value_t = 200)]
    pub val: usize,
    /// Test images.
    #[arg(long, default_value_t = 200)]
    pub test: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Random seed; the same arguments always give the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 92)]
    pub quality: u8,
}

pub fn run(args: SynthArgs) -> Result<ExitCode> {
    let opts = SynthOptions {
        out_dir: args.out.clone(),
        train: args.train,
        val: args.val,
        test: args.test,
        size: args.size,
        seed: args.seed,
        jpeg_quality: args.quality,
    };
    let start = Instant::now();
    let summary = synth::generate(&opts)
        .with_context(|| format!("writing the synthetic dataset to {}", args.out.display()))?;
    println!(
        "wrote {} images (train {}, val {}, test {}) of {}x{} with {} captions, vocabulary {} words, seed {}, in {:.1} s",
        summary.images(),
        summary.train,
        summary.val,
        summary.test,
        args.size,
        args.size,
        summary.captions,
        summary.word_counts.len(),
        args.seed,
        start.elapsed().as_secs_f64()
    );
    println!("captions: {}", summary.json_path.display());
    println!("images:   {}/", summary.image_dir.display());
    Ok(ExitCode::SUCCESS)
}
