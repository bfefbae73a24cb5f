//! `gaze bench`: throughput measurements (speed lives in benchmarks, not in tests).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use gaze::bench;
use gaze::model::{BeamOptions, CaptionModel};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Caption throughput (images/s) of a randomly initialised model, per beam and batch size.
    Caption(CaptionBench),
    /// Encoder forward throughput (images/s) per batch size.
    Encoder(EncoderBench),
    /// Training throughput (captions/s) on synthetic data: decoder stage or fine-tuning.
    Train(super::bench_train::TrainBench),
    /// Queue throughput of a store without a model: claims, fenced commits of captions with
    /// attention, per worker count (PostgreSQL) or for the one writer (SQLite).
    Store(StoreBench),
    /// The PyTorch parity fixtures on a device (e.g. to check a CUDA build), CPU for comparison.
    Parity(super::parity::ParityArgs),
}

#[derive(Args, Debug)]
pub struct CommonBench {
    /// Encoder backbone: resnet18, resnet34, resnet50, resnet101, resnet152.
    #[arg(long, default_value = "resnet101")]
    pub encoder: String,
    /// Input side in pixels.
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Images per measurement (rounded up to whole batches).
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The CPU encoder's precision: f32, bf16 (CPUs with AVX-512 BF16) or auto.
    #[arg(long, default_value = "f32", value_name = "P")]
    pub precision: String,
}

#[derive(Args, Debug)]
pub struct CaptionBench {
    #[command(flatten)]
    pub common: CommonBench,
    /// Beam sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    pub beam_sizes: Vec<usize>,
    /// Vocabulary size (COCO's tutorial word map has 9490 entries).
    #[arg(long, default_value_t = 9490)]
    pub vocab: usize,
    /// Decoding steps per caption: random weights rarely emit <end>, so each search runs to this limit.
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    /// Time the decoder alone (beam search on random encoder outputs).
    #[arg(long)]
    pub decoder_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct StoreBench {
    /// The store: a SQLite file, or a PostgreSQL URL (postgres://user@host/db). It must be
    /// empty unless --reset is given.
    #[arg(long, value_name = "FILE|URL")]
    pub db: PathBuf,
    /// Images queued per run.
    #[arg(long, default_value_t = 5000)]
    pub images: usize,
    /// Worker counts, one run each, each worker on its own connection (PostgreSQL only; SQLite
    /// runs one writer).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<usize>,
    /// Images per claim and per commit.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Attention maps per caption (14x14 each, as the tutorial's encoder).
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    /// Empty the store first (every row of every table; the schema stays). Without it a store
    /// that holds anything is refused. Between runs the store is emptied of the benchmark's
    /// own rows.
    #[arg(long)]
    pub reset: bool,
    /// Refresh PostgreSQL's statistics of the queue after queueing. Without it the run is
    /// planned on the statistics of what the table last held, as when a large batch of new
    /// images lands on a store whose images were all done.
    #[arg(long)]
    pub analyze: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct EncoderBench {
    #[command(flatten)]
    pub common: CommonBench,
    /// Also measure the reference path (candle ops) and report how far the outputs differ.
    #[arg(long)]
    pub reference: bool,
    /// Timed repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Caption(b) => caption(b),
        BenchCommand::Encoder(b) => encoder(b),
        BenchCommand::Train(b) => super::bench_train::run(b),
        BenchCommand::Store(b) => store(b),
        BenchCommand::Parity(a) => super::parity::run(a),
    }
}

fn build(common: &CommonBench, vocab: usize) -> Result<CaptionModel> {
    let device = gaze::device::open_device(&common.device)?;
    let precision = gaze::model::encoder::cpu::Precision::parse(&common.precision)
        .map_err(|e| anyhow::anyhow!("--precision: {e}"))?;
    super::use_precision(precision, &common.device);
    Ok(bench::random_model(&common.encoder, vocab, &device)?)
}

fn encoder(b: EncoderBench) -> Result<ExitCode> {
    let c = &b.common;
    let model = build(c, 100)?;
    println!(
        "encoder {} at {}x{}, {}, precision {} ({})",
        c.encoder,
        c.image_size,
        c.image_size,
        gaze::device::device_label(&c.device),
        model.encoder.precision(),
        bench::machine()
    );
    let t = Instant::now();
    let engine = model.encoder.prepare_inference()?;
    if engine {
        println!(
            "inference path: CPU engine (built in {:.2} s)",
            t.elapsed().as_secs_f64()
        );
    } else {
        println!("inference path: reference");
    }
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>14}",
        "batch", "path", "images/s", "s/image", "cpu-s/image"
    );
    for &bs in &c.batch_sizes {
        let x = bench::random_images(bs, c.image_size, &model)?;
        let rounds = c.images.div_ceil(bs).max(1);
        // The engine's row is named by its precision (f32 or bf16).
        let mut paths: Vec<(&str, bool)> = vec![(model.encoder.precision().name(), false)];
        if b.reference {
            paths.push(("reference", true));
        }
        let mut outputs = Vec::new();
        for (name, reference) in paths {
            let (output, timing) = bench::time(b.repeats, rounds, || -> Result<_> {
                let y = if reference {
                    model.encoder.forward_reference(&x)?
                } else {
                    model.encoder.forward(&x)?
                };
                y.device().synchronize()?;
                Ok(y)
            })?;
            outputs.push(output);
            let n = (rounds * bs) as f64;
            let cpu = timing
                .cpu_seconds
                .map(|c| format!("{:.4}", c / n))
                .unwrap_or_else(|| "-".into());
            println!(
                "{bs:>6} {name:>10} {:>10.2} {:>10.4} {cpu:>14}",
                n / timing.seconds,
                timing.seconds / n
            );
        }
        if let [fast, reference] = &outputs[..] {
            let (diff, scale) = bench::max_abs_diff(fast, reference)?;
            println!(
                "{bs:>6} max |default - reference| = {diff:.3e} (largest |reference| {scale:.3e}, ratio {:.1e})",
                diff / scale.max(f32::MIN_POSITIVE)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn caption(b: CaptionBench) -> Result<ExitCode> {
    let c = &b.common;
    let model = build(c, b.vocab)?;
    println!(
        "caption: {} at {}x{}, vocabulary {}, {} steps per caption, {} ({})",
        c.encoder,
        c.image_size,
        c.image_size,
        b.vocab,
        b.max_steps + 1,
        gaze::device::device_label(&c.device),
        bench::machine()
    );
    println!(
        "{:>5} {:>6} {:>10} {:>10}",
        "beam", "batch", "images/s", "s/image"
    );
    for &beam in &b.beam_sizes {
        for &bs in &c.batch_sizes {
            let opts = BeamOptions {
                beam_size: beam,
                max_steps: b.max_steps,
                ..Default::default()
            };
            let x = if b.decoder_only {
                bench::random_features(bs, &model)?
            } else {
                bench::random_images(bs, c.image_size, &model)?
            };
            let rounds = c.images.div_ceil(bs).max(1);
            let (_, timing) = bench::time(1, rounds, || -> Result<()> {
                if b.decoder_only {
                    model.caption_features(&x, &opts)?;
                } else {
                    model.caption_images(&x, &opts)?;
                }
                Ok(())
            })?;
            let (secs, n) = (timing.seconds, (rounds * bs) as f64);
            println!("{beam:>5} {bs:>6} {:>10.2} {:>10.4}", n / secs, secs / n);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn store(b: StoreBench) -> Result<ExitCode> {
    let location = gaze::store::Location::from_setting(&b.db);
    let opts = bench::store::StoreBenchOptions {
        location: location.clone(),
        images: b.images,
        workers: b.workers,
        batch: b.batch,
        steps: b.steps,
        reset: b.reset,
        analyze: b.analyze,
    };
    let runs = bench::store::run(&opts)?;
    if b.format == Format::Json {
        let report = serde_json::json!({
            "store": location.to_string(),
            "machine": bench::machine(),
            "runs": runs,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "store {location}: {} images, batch {}, {} attention maps of {g}x{g} per caption ({})",
        b.images,
        b.batch,
        b.steps,
        bench::machine(),
        g = bench::store::GRID,
    );
    println!(
        "{:>8} {:>7} {:>6} {:>8} {:>10} {:>11} {:>11} {:>10} {:>9}",
        "backend",
        "workers",
        "batch",
        "seconds",
        "images/s",
        "commit p50",
        "commit p99",
        "claim p50",
        "us/image"
    );
    for r in &runs {
        let claim = r
            .claim_p50_ms
            .map(|ms| format!("{ms:.2} ms"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>8} {:>7} {:>6} {:>8.2} {:>10.0} {:>8.2} ms {:>8.2} ms {claim:>10} {:>9.0}",
            r.backend,
            r.workers,
            r.batch,
            r.seconds,
            r.images_per_second,
            r.commit_p50_ms,
            r.commit_p99_ms,
            r.per_image_us
        );
    }
    Ok(ExitCode::SUCCESS)
}
