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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use gaze::daemon::Daemon;
use gaze::data::karpathy::Split;
use gaze::data::prepare::{prepare, NoProgress, PrepareConfig};
use gaze::data::synth::{self, SynthOptions};
use gaze::data::PreparedSplit;
use gaze::demo;
use gaze::eval::{evaluate, EvalOptions, EvalProgress};
use gaze::model::CaptionModel;
use gaze::store::query::{self as read, Selection};
use gaze::store::Store;
use gaze::train::{train, StandardObserver, StopReason, TrainData, TrainOptions};

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

    let (synth_opts, prepared_dir, base) = make_dataset(&args, &dir)?;
    let model_path = train_model(&args, &dir, &prepared_dir, &base)?;
    let model = evaluate_model(&model_path, &prepared_dir, &base)?;

    step(
        5,
        "Watching an inbox folder: the test images are dropped in one by one",
    );
    let inbox = dir.join("inbox");
    let db = dir.join("gaze.db");
    let dropped = watch_inbox(&inbox, &db, model, &synth_opts)?;

    step(6, "Drawing attention pictures");
    draw_pictures(&db, &dropped, &dir.join("attention"), args.pictures)?;

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

/// Steps 1 and 2: the synthetic dataset and its prepared files. Returns the dataset's options,
/// the prepared files' folder and their base name.
fn make_dataset(args: &DemoArgs, dir: &Path) -> Result<(SynthOptions, PathBuf, String)> {
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
    Ok((synth_opts, prepared_dir, base))
}

/// Step 3: trains within the time budget; returns the best model's file.
fn train_model(args: &DemoArgs, dir: &Path, prepared_dir: &Path, base: &str) -> Result<PathBuf> {
    step(
        3,
        &format!(
            "Training on the built-in EfficientNet-Lite0 encoder (frozen, cached features), {} minutes at most",
            args.train_minutes
        ),
    );
    let data = TrainData::from_prepared(prepared_dir, base)?;
    let cfg = demo::training_config(args.train_minutes, args.test_images, args.seed);
    let stop = super::signal::stop_flag("\ninterrupted: stopping (Ctrl-C again to quit at once)")?;
    let opts = TrainOptions {
        out_dir: dir.join("model"),
        checkpoint: None,
        stop,
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
    Ok(model_path)
}

/// Step 4: loads the model and prints its scores on the test split.
fn evaluate_model(model_path: &Path, prepared_dir: &Path, base: &str) -> Result<CaptionModel> {
    step(4, "Evaluating on the test split");
    let device = gaze::device::open_device("cpu")?;
    let model = CaptionModel::load(model_path, &Default::default(), &device)?;
    let test = PreparedSplit::open(prepared_dir, base, Split::Test)?;
    let eval_opts = EvalOptions {
        beam_sizes: vec![1, 3],
        ..EvalOptions::default()
    };
    let bar = gaze::progress::bar(test.image_count() as u64, "eval images");
    let evaluation = evaluate(&model, &test, &eval_opts, &mut |p| {
        if let EvalProgress::Captioned { done, .. } = p {
            bar.set_position(done as u64);
        }
    })?;
    bar.finish_and_clear();
    print!("{}", gaze::eval::report::table(&evaluation, base, "test"));
    Ok(model)
}

/// Step 5: runs the daemon on a fresh inbox and database, drops the test images in and prints
/// each caption as it lands. Returns the dropped files.
fn watch_inbox(
    inbox: &Path,
    db: &Path,
    model: CaptionModel,
    synth_opts: &SynthOptions,
) -> Result<Vec<PathBuf>> {
    demo::reset(inbox, db)?;
    let location = gaze::store::Location::Sqlite(db.to_path_buf());
    let daemon = Daemon::start(
        &location,
        Some(Arc::new(model)),
        demo::daemon_options(inbox)?,
    )?;
    let shutdown = daemon.shutdown_handle();
    let dropped = demo::drop_test_images(synth_opts, inbox)?;
    let landed = print_captions_as_they_land(db, &dropped, Duration::from_secs(180));
    shutdown.request();
    daemon.wait()?;
    let landed = landed?;
    println!(
        "  {landed} of {} images captioned into {}",
        dropped.len(),
        db.display()
    );
    Ok(dropped)
}

/// Step 6: the attention picture of the first `count` dropped images, redrawn from the weights
/// stored with their captions, as `gaze query --attention-png` draws them.
fn draw_pictures(db: &Path, dropped: &[PathBuf], pictures: &Path, count: usize) -> Result<()> {
    std::fs::create_dir_all(pictures)?;
    let store = Store::open_read_only(db)?;
    for path in dropped.iter().take(count) {
        let rows = read::select(
            store.conn(),
            &Selection::Path(path.to_string_lossy().into_owned()),
            1,
        )?;
        let Some((row, caption_id)) = rows.iter().find_map(|r| Some((r, r.caption_id?))) else {
            eprintln!("no caption among the matches, so no attention picture to draw");
            continue;
        };
        let Some(att) = read::attention_of(store.conn(), caption_id)? else {
            eprintln!("{}: caption {caption_id} has no stored attention", row.path);
            continue;
        };
        let (picture, notes) = gaze::viz::stored_picture(
            path,
            row.content_hash.as_deref(),
            &att.tokens,
            &att.alphas,
            att.grid,
        );
        for note in notes {
            eprintln!("note: {}", note.message(&row.path));
        }
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        let target = pictures.join(format!("{name}.png"));
        match picture.save(&target) {
            Ok(()) => eprintln!("wrote {}", target.display()),
            Err(e) => eprintln!("error: {}: cannot write the picture: {e}", target.display()),
        }
    }
    Ok(())
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
