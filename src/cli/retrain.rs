//! `gaze retrain --now`: one retraining cycle by hand, with the `[retrain]` settings of the
//! config file (and `GAZE_RETRAIN_*`, then these flags). It starts from the registry's active
//! model; when the candidate is promoted, a running `gaze watch` with retraining enabled swaps
//! it in. Exit 0 when promoted, 1 when rejected, 2 when the run failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use gaze::config::{Config, Flags};
use gaze::model::{CaptionModel, LoadOptions};
use gaze::retrain::{run_cycle, CycleOptions, Parent, RetrainOptions, RunStatus};
use gaze::store::Location;

#[derive(Args, Debug)]
pub struct RetrainArgs {
    /// Run one cycle now (the only mode; scheduled cycles run inside `gaze watch`).
    #[arg(long, required = true)]
    pub now: bool,
    /// A config file (TOML; see config.toml). GAZE_CONFIG names one too.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store: a SQLite file, or a PostgreSQL URL (postgres://user@host/db) [database.path].
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Prepared files' folder [retrain.prepared].
    #[arg(long, value_name = "DIR")]
    pub prepared: Option<PathBuf>,
    /// Their base name [retrain.data_name].
    #[arg(long)]
    pub data_name: Option<String>,
    /// A folder of labelled images [retrain.images].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Epochs [retrain.epochs].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Minutes [retrain.max_minutes].
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Metric of the promotion rule [retrain.metric].
    #[arg(long)]
    pub metric: Option<String>,
    /// Margin of the promotion rule [retrain.margin].
    #[arg(long, allow_hyphen_values = true)]
    pub margin: Option<f64>,
    /// Training threads [retrain.threads].
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: RetrainArgs) -> Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    // The command-line layer: each flag given replaces its key and becomes its source.
    let flags = Flags::new()
        .path("--db", "database.path", args.db.as_deref())
        .path("--prepared", "retrain.prepared", args.prepared.as_deref())
        .value(
            "--data-name",
            "retrain.data_name",
            args.data_name.as_deref(),
        )
        .path("--images", "retrain.images", args.images.as_deref())
        .value("--epochs", "retrain.epochs", args.epochs)
        .value("--max-minutes", "retrain.max_minutes", args.max_minutes)
        .value("--metric", "retrain.metric", args.metric.as_deref())
        .value("--margin", "retrain.margin", args.margin)
        .value("--threads", "retrain.threads", args.threads);
    let cfg = Config::layered(args.config.as_deref(), env, &flags)?;
    cfg.check_settings()?;
    let settings = RetrainOptions::from_config(&cfg)?;

    let db = Location::from_setting(&cfg.database.path);
    let device = gaze::device::open_device(&cfg.model.device)?;
    let parent = {
        let store = gaze::store::open(&db)?;
        match store
            .active_model()
            .with_context(|| format!("{db}: reading the active model"))?
        {
            Some(row) => {
                let model = CaptionModel::load(
                    std::path::Path::new(&row.path),
                    &LoadOptions::default(),
                    &device,
                )
                .with_context(|| format!("loading the active model {} ({})", row.id, row.path))?;
                Some(Parent {
                    id: row.id,
                    model: Arc::new(model),
                })
            }
            None if settings.warm_start => {
                bail!(
                    "{db}: no active model to start from; run `gaze watch` once, or set retrain.warm_start = false"
                )
            }
            None => None,
        }
    };
    let stop =
        super::signal::stop_flag("stopping after the current batch (again to stop at once)")?;
    let report = run_cycle(
        &db,
        parent.as_ref(),
        &CycleOptions {
            settings: &settings,
            device: cfg.model.device.clone(),
            trigger: "manual",
            stop,
        },
    )?;
    let score = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    let metric = &settings.metric;
    match report.status {
        RunStatus::Promoted => println!(
            "run {}: promoted model {} ({metric} {} vs {} for the active model); log {}",
            report.run_id,
            report.candidate_id.unwrap_or(-1),
            score(report.candidate_score),
            score(report.parent_score),
            report.log_path.display()
        ),
        RunStatus::Rejected => println!(
            "run {}: rejected model {} ({metric} {} vs {} for the active model, margin {}); log {}",
            report.run_id,
            report.candidate_id.unwrap_or(-1),
            score(report.candidate_score),
            score(report.parent_score),
            settings.margin,
            report.log_path.display()
        ),
        // A finished cycle is never still running.
        RunStatus::Failed | RunStatus::Running => eprintln!(
            "run {} failed: {}; log {}",
            report.run_id,
            report.error.as_deref().unwrap_or("unknown error"),
            report.log_path.display()
        ),
    }
    Ok(match report.status {
        RunStatus::Promoted => ExitCode::SUCCESS,
        RunStatus::Rejected => ExitCode::from(1),
        RunStatus::Failed | RunStatus::Running => ExitCode::from(2),
    })
}
