//! `gaze demo`: the whole system in one run, on a synthetic dataset made on the spot.
//!
//! Synthetic data -> the tutorial's prepared files -> training on the built-in EfficientNet-Lite0
//! encoder (frozen, features cached) -> evaluation on the test split -> the daemon watching an
//! inbox, into which the test images are dropped, printing each caption as it lands in SQLite
//! -> attention pictures -> the commands to try next. Every step is the same library code the
//! other subcommands run; nothing here is special-cased for the demo except its settings.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use gaze::config::Config;
use gaze::daemon::{Daemon, DaemonOptions};
use gaze::data::karpathy::Split;
use gaze::data::prepare::{prepare, NoProgress, PrepareConfig};
use gaze::data::synth::{self, SynthOptions};
use gaze::data::PreparedSplit;
use gaze::eval::{evaluate, EvalOptions, EvalProgress};
use gaze::model::CaptionModel;
use gaze::store::read::{self, Selection};
use gaze::store::Store;
use gaze::train::features::CacheMode;
use gaze::train::{train, StandardObserver, StopReason, TrainConfig, TrainData, TrainOptions};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for everything the demo writes (data, model, database, pictures).
    #[arg(long, default_value = "gaze-demo")]
    pub dir: PathBuf,
    /// Training images in the synthetic dataset.
    #[arg(long, default_value_t = 1500)]
    pub train_images: usize,
    /// Validation and test images (each).
    #[arg(long, default_value_t = 100)]
    pub test_images: usize,
    /// Wall-clock budget for training, in minutes.
    #[arg(long, default_value_t = 5.0)]
    pub train_minutes: f64,
    /// Seed for the data and the training run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Attention pictures to draw.
    #[arg(long, default_value_t = 3)]
    pub pictures: usize,
}

/// Prints a numbered step header.
fn step(n: usize, what: &str) {
    println!("\n[{n}/6] {what}");
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;

    step(1, "Making a synthetic captioned dataset");
    let synth_dir = dir.join("synth");
    let synth_opts = SynthOptions {
        train: args.train_images,
        val: args.test_images,
        test: args.test_images,
        seed: args.seed,
        ..SynthOptions::new(&synth_dir)
    };
    let summary = synth::generate(&synth_opts)
        .with_context(|| format!("writing the synthetic dataset to {}", synth_dir.display()))?;
    println!(
        "  {} images ({} train, {} val, {} test), {} captions, {} words: {}",
        summary.images(),
        summary.train,
        summary.val,
        summary.test,
        summary.captions,
        summary.word_counts.len(),
        summary.json_path.display()
    );

    step(2, "Preparing the tutorial's HDF5/JSON training files");
    let prepared_dir = dir.join("prepared");
    let mut prep = PrepareConfig::new(
        "synth",
        &summary.json_path,
        &summary.image_dir,
        &prepared_dir,
    );
    prep.overwrite = true;
    prep.seed = args.seed;
    let report = prepare(&prep, &NoProgress).context("preparing the synthetic dataset")?;
    let base = report.base.clone();
    println!(
        "  {} files named *_{base}.* in {} (word map: {} entries)",
        report.files.len(),
        prepared_dir.display(),
        report.word_map_size
    );

    step(
        3,
        &format!(
            "Training on the built-in EfficientNet-Lite0 encoder (frozen, cached features), {} minutes at most",
            args.train_minutes
        ),
    );
    let data = TrainData::from_prepared(&prepared_dir, &base)?;
    let run_dir = dir.join("model");
    let cfg = demo_training_config(&args);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping (Ctrl-C again to quit at once)");
        });
    }
    let opts = TrainOptions {
        out_dir: run_dir.clone(),
        checkpoint: None,
        stop: stop.clone(),
    };
    let outcome = train(&cfg, &data, &opts, &mut StandardObserver::new(true))?;
    if outcome.stop == StopReason::Interrupted {
        bail!("interrupted");
    }
    let Some(model_path) = outcome.best else {
        bail!("training ended without a model (no epoch finished)");
    };
    println!(
        "  {} epochs, best validation BLEU-4 {:.4}: {}",
        outcome.history.len(),
        outcome.state.best_score,
        model_path.display()
    );

    step(4, "Evaluating on the test split");
    let device = gaze::device::open_device("cpu")?;
    let model = CaptionModel::load(&model_path, &Default::default(), &device)?;
    let test = PreparedSplit::open(&prepared_dir, &base, Split::Test)?;
    let eval_opts = EvalOptions {
        beam_sizes: vec![1, 3],
        ..EvalOptions::default()
    };
    let bar = super::eval::progress_bar(test.image_count());
    let evaluation = evaluate(&model, &test, &eval_opts, &mut |p| {
        if let EvalProgress::Captioned { done, .. } = p {
            bar.set_position(done as u64);
        }
    })?;
    bar.finish_and_clear();
    print!("{}", super::eval::table(&evaluation, &base, "test"));

    step(
        5,
        "Watching an inbox folder: the test images are dropped in one by one",
    );
    let inbox = dir.join("inbox");
    let db = dir.join("gaze.db");
    reset_daemon_state(&inbox, &db)?;
    let mut daemon_cfg = Config::default();
    daemon_cfg.watch.folders = vec![inbox.clone()];
    daemon_cfg.watch.stable_ms = 200;
    daemon_cfg.pipeline.max_wait_ms = 100;
    let daemon_opts = DaemonOptions::from_config(&daemon_cfg)?;
    let daemon = Daemon::start(&db, Arc::new(model), daemon_opts)?;
    let shutdown = daemon.shutdown_handle();
    let dropped = drop_test_images(&synth_opts, &inbox)?;
    let landed = print_captions_as_they_land(&db, &dropped, Duration::from_secs(180));
    shutdown.request();
    daemon.wait()?;
    let landed = landed?;
    println!(
        "  {landed} of {} images captioned into {}",
        dropped.len(),
        db.display()
    );

    step(6, "Drawing attention pictures");
    let pictures = dir.join("attention");
    std::fs::create_dir_all(&pictures)?;
    let store = Store::open_read_only(&db)?;
    for path in dropped.iter().take(args.pictures) {
        let rows = read::select(
            store.conn(),
            &Selection::Path(path.to_string_lossy().into_owned()),
            1,
        )?;
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        let target = pictures.join(format!("{name}.png"));
        super::query::draw_attention(&store, &rows, &target)?;
    }

    println!(
        "\nDone in {:.1} minutes. Try next:\n\n  \
         cargo run --release -- query --db {db} --recent 5\n  \
         cargo run --release -- query --db {db} --search red circle\n  \
         cargo run --release -- query --db {db} --path {first} --attention-png picture.png\n  \
         cargo run --release -- status --db {db}\n  \
         cargo run --release -- caption --model {model} --beam-size 3 {first}\n  \
         cargo run --release -- watch --db {db} --model {model} {inbox}\n  \
         sqlite3 {db} \"SELECT i.path, c.text FROM images i JOIN captions c USING (content_hash)\"",
        started.elapsed().as_secs_f64() / 60.0,
        db = db.display(),
        model = model_path.display(),
        inbox = inbox.display(),
        first = dropped
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    Ok(ExitCode::SUCCESS)
}

/// A small model that learns the synthetic captions in a few minutes on two cores.
fn demo_training_config(args: &DemoArgs) -> TrainConfig {
    TrainConfig {
        encoder: "efficientnet-lite0".into(),
        encoded_image_size: 8,
        emb_dim: 128,
        attention_dim: 128,
        decoder_dim: 256,
        decoder_lr: 1e-3,
        epochs: 100,
        max_minutes: Some(args.train_minutes),
        val_images: Some(args.test_images.min(100)),
        feature_cache: CacheMode::Memory,
        seed: args.seed,
        ..TrainConfig::default()
    }
}

/// Starts the inbox and database afresh, so a second demo run shows the same thing.
fn reset_daemon_state(inbox: &Path, db: &Path) -> Result<()> {
    if inbox.exists() {
        std::fs::remove_dir_all(inbox).with_context(|| format!("clearing {}", inbox.display()))?;
    }
    std::fs::create_dir_all(inbox).with_context(|| format!("creating {}", inbox.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Copies the test split's image files into the inbox, as a user would, and returns their
/// paths there.
fn drop_test_images(opts: &SynthOptions, inbox: &Path) -> Result<Vec<PathBuf>> {
    let mut dropped = Vec::new();
    for item in synth::plan(opts)
        .into_iter()
        .filter(|i| i.split == Split::Test)
    {
        let from = opts.out_dir.join("images").join(&item.filename);
        let to = inbox.join(&item.filename);
        // Written under a hidden name and renamed, so the watcher sees whole files only.
        let partial = inbox.join(format!(".{}", item.filename));
        std::fs::copy(&from, &partial)
            .with_context(|| format!("copying {} to {}", from.display(), inbox.display()))?;
        std::fs::rename(&partial, &to)?;
        dropped.push(to);
    }
    Ok(dropped)
}

/// Polls the database (read-only, beside the daemon) and prints each caption as it commits,
/// until every dropped image has one or `timeout` passes. Returns how many landed.
fn print_captions_as_they_land(db: &Path, dropped: &[PathBuf], timeout: Duration) -> Result<usize> {
    let wanted: HashSet<String> = dropped
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + timeout;
    while seen.len() < wanted.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let Ok(store) = Store::open_read_only(db) else {
            continue; // the daemon has not created it yet
        };
        for row in read::select(store.conn(), &Selection::Recent(wanted.len()), wanted.len())? {
            if wanted.contains(&row.path) && seen.insert(row.path.clone()) {
                let name = Path::new(&row.path)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                println!(
                    "  {name:<16} {}",
                    row.caption.as_deref().unwrap_or("(no caption)")
                );
            }
        }
    }
    Ok(seen.len())
}
