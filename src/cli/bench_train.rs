//! `gaze bench train`: training throughput (captions/s) of the real training loop on synthetic
//! in-memory data (`gaze::bench::train`, which describes the data and the measurement), for the
//! decoder stage or fine-tuning, on any device. Needs no dataset, so it runs from the binary
//! alone (on a GPU machine without Rust, for instance).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use gaze::bench::train::{self, TrainBenchOptions};

#[derive(Args, Debug)]
pub struct TrainBench {
    /// Encoder backbone: resnet18, resnet34, resnet50, resnet101, resnet152, efficientnet-lite0.
    #[arg(long, default_value = "resnet101")]
    pub encoder: String,
    /// Image side in pixels (the tutorial's prepared images are 256).
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Training captions per epoch (five per image).
    #[arg(long, default_value_t = 320)]
    pub captions: usize,
    /// Vocabulary size (COCO's tutorial word map has 9490 entries).
    #[arg(long, default_value_t = 9490)]
    pub vocab: usize,
    /// Fine-tune the encoder (layer2..layer4) too: the tutorial's second stage.
    #[arg(long)]
    pub fine_tune: bool,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(b: TrainBench) -> Result<ExitCode> {
    let opts = TrainBenchOptions {
        encoder: b.encoder.clone(),
        image_size: b.image_size,
        batch_size: b.batch_size,
        captions: b.captions,
        vocab: b.vocab,
        fine_tune: b.fine_tune,
        device: b.device.clone(),
    };
    opts.check()?;
    println!(
        "train: {}; {} at {}x{}, vocabulary {}, batch {}, {} captions per epoch, {}",
        opts.stage(),
        b.encoder,
        b.image_size,
        b.image_size,
        b.vocab,
        b.batch_size,
        b.captions,
        b.device
    );
    let [warm, timed] = train::run(&opts)?;
    println!(
        "{:>8} {:>12} {:>10} {:>10}",
        "epoch", "captions/s", "s/batch", "seconds"
    );
    for (label, rec) in [("warm-up", warm), ("timed", timed)] {
        let cps = rec.captions_per_second;
        println!(
            "{label:>8} {cps:>12.1} {:>10.3} {:>10.2}",
            b.batch_size as f64 / cps,
            rec.train_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
