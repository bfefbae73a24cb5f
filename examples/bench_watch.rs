//! Daemon throughput: images per second from file drop to committed caption row, beside what
//! `gaze caption` reaches on the same model, images and batch size.
//!
//! Builds a random model the size of the tutorial's decoder on a ResNet-18 encoder, starts the
//! daemon on an empty temporary folder for each batch size, writes N images into the folder
//! and times until every row has committed. The `caption` column runs `gaze caption`'s loop on
//! the same files (each batch decoded on every core, then captioned; nothing stored), so the
//! last column says how much of that rate the daemon keeps. Random weights never emit `<end>`, so every
//! caption runs the full `--max-steps` (20 by default, a little longer than a real caption).
//!
//! ```text
//! cargo run --release --example bench_watch -- [--images 96] [--batch-sizes 1,8,32]
//!     [--beam-size 3] [--max-steps 20] [--decode-threads 2] [--precision f32|bf16|auto]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use gaze::config::Config;
use gaze::daemon::{Daemon, DaemonOptions};
use gaze::data::WordMap;
use gaze::model::config::{EncoderConfig, ModelConfig};
use gaze::model::encoder::cpu::Precision;
use gaze::model::{CaptionModel, LoadOptions};

struct Args {
    images: usize,
    batch_sizes: Vec<usize>,
    beam_size: usize,
    max_steps: usize,
    decode_threads: usize,
    precision: Precision,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        images: 96,
        batch_sizes: vec![1, 8, 32],
        beam_size: 3,
        max_steps: 20,
        decode_threads: 2,
        precision: Precision::F32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--images" => args.images = value.parse()?,
            "--batch-sizes" => {
                args.batch_sizes = value
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--beam-size" => args.beam_size = value.parse()?,
            "--max-steps" => args.max_steps = value.parse()?,
            "--decode-threads" => args.decode_threads = value.parse()?,
            "--precision" => {
                args.precision = Precision::parse(&value).map_err(anyhow::Error::msg)?
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// A 320x240 PNG with content depending on `seed`.
fn image_bytes(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        let v = seed.wrapping_mul(2654435761) ^ (x * 7 + y * 13);
        image::Rgb([(v & 255) as u8, (x / 2) as u8, (y + seed) as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("PNG encodes");
    out
}

fn done_count(db: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM images WHERE status = 'done'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // Before the model loads: its encoder and decoder engines take the precision from here.
    gaze::model::encoder::set_default_precision(args.precision);
    let tmp = tempfile::tempdir()?;
    let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    let word_map = WordMap::from_counts(words.iter().map(|w| (w.as_str(), 10)), 5);
    let cfg = ModelConfig {
        encoder: EncoderConfig::named("resnet18").expect("known"),
        ..ModelConfig::tutorial(word_map.len())
    };
    let tensors = gaze::model::init::random_tensors(&cfg, 7, &Device::Cpu)?;
    let params: usize = tensors.values().map(|t| t.elem_count()).sum();
    let mut named: Vec<_> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let model_path = tmp.path().join("resnet18-random.safetensors");
    gaze::model::file::write_model_file(
        &model_path,
        &named,
        &cfg,
        &word_map,
        &serde_json::json!({"name": "resnet18-random"}),
    )?;
    drop(named);
    let model = Arc::new(CaptionModel::load(
        &model_path,
        &LoadOptions::default(),
        &Device::Cpu,
    )?);
    let pictures: Vec<Vec<u8>> = (0..args.images as u32).map(image_bytes).collect();
    println!(
        "model: resnet18 encoder + 512-wide decoder, {} words, {:.1}M parameters; \
         {} images of 320x240 per run; beam {}, {} steps; {} decode threads; {}",
        word_map.len(),
        params as f64 / 1e6,
        args.images,
        args.beam_size,
        args.max_steps,
        args.decode_threads,
        args.precision.name()
    );
    println!(
        "| batch size | images | daemon seconds | daemon images/s | caption images/s | daemon / caption |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files)?;
    let paths: Vec<std::path::PathBuf> = pictures
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let p = files.join(format!("img{i:04}.png"));
            std::fs::write(&p, bytes).map(|_| p)
        })
        .collect::<Result<_, _>>()?;
    for &batch_size in &args.batch_sizes {
        let caption_rate = caption_rate(&model, &paths, batch_size, &args)?;
        let run = tmp.path().join(format!("batch{batch_size}"));
        let folder = run.join("in");
        std::fs::create_dir_all(&folder)?;
        let db = run.join("gaze.db");
        let mut config = Config::default();
        config.watch.folders = vec![folder.clone()];
        config.watch.stable_ms = 200;
        config.pipeline.batch_size = batch_size;
        config.pipeline.max_wait_ms = 100;
        config.pipeline.decode_threads = args.decode_threads;
        config.model.beam_size = args.beam_size;
        config.model.max_steps = args.max_steps;
        let location = gaze::store::Location::Sqlite(db.clone());
        let daemon = Daemon::start(
            &location,
            Some(model.clone()),
            DaemonOptions::from_config(&config)?,
        )?;
        std::thread::sleep(Duration::from_millis(300)); // the start-up scan of an empty folder
        let started = Instant::now();
        for (i, bytes) in pictures.iter().enumerate() {
            std::fs::write(folder.join(format!("img{i:04}.png")), bytes)?;
        }
        while done_count(&db) < args.images as i64 {
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("batch {batch_size}: not done after 30 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let seconds = started.elapsed().as_secs_f64();
        daemon.shutdown_handle().request();
        let summary = daemon.wait()?;
        if summary.captioned != args.images as u64 {
            bail!(
                "batch {batch_size}: captioned {} of {}",
                summary.captioned,
                args.images
            );
        }
        let rate = args.images as f64 / seconds;
        println!(
            "| {batch_size} | {} | {seconds:.1} | {rate:.2} | {caption_rate:.2} | {:.0}% |",
            args.images,
            100.0 * rate / caption_rate
        );
    }
    Ok(())
}

/// Images per second of `gaze caption`'s loop over `paths`: each batch decoded in parallel,
/// then captioned with the same search the daemon runs.
fn caption_rate(
    model: &CaptionModel,
    paths: &[std::path::PathBuf],
    batch_size: usize,
    args: &Args,
) -> Result<f64> {
    use rayon::prelude::*;
    // The search the daemon runs with these settings.
    let mut config = Config::default();
    config.model.beam_size = args.beam_size;
    config.model.max_steps = args.max_steps;
    let (opts, _) = config.search()?;
    let started = Instant::now();
    for chunk in paths.chunks(batch_size) {
        let pixels: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|p| {
                gaze::data::image::load_normalized(p, 256, &Default::default()).map(|(px, _, _)| px)
            })
            .collect::<Result<_, _>>()?;
        let batch = gaze::model::encoder::images_to_tensor(&pixels, 256, &model.device)?;
        let captions = model.caption_images(&batch, &opts)?;
        assert_eq!(captions.len(), chunk.len());
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}
