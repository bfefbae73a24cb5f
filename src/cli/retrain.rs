//! `gaze retrain --now`: one retraining cycle by hand, with the `[retrain]` settings of the
//! config file (and `GAZE_RETRAIN_*`, then these flags). It starts from the registry's active
//! model; when the candidate is promoted, a running `gaze watch` with retraining enabled swaps
//! it in. Exit 0 when promoted, 1 when rejected, 2 when the run failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use gaze::config::{Config, CONFIG_ENV};
use gaze::model::{CaptionModel, LoadOptions};
use gaze::retrain::{run_cycle, CycleOptions, Parent, RunStatus};
use gaze::store::{registry, Store};

#[derive(Args, Debug)]
pub struct RetrainArgs {
    /// Run one cycle now (the only mode; scheduled cycles run inside `gaze watch`).
    #[arg(long, required = true)]
    pub now: bool,
    /// A config file (TOML; see config.toml). GAZE_CONFIG names one too.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The SQLite database [database.path].
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
    let file = args
        .config
        .clone()
        .or_else(|| env(CONFIG_ENV).map(PathBuf::from));
    let mut cfg = Config::load(file.as_deref(), env)?;
    if let Some(v) = &args.db {
        cfg.database.path = v.clone();
    }
    let r = &mut cfg.retrain;
    if let Some(v) = &args.prepared {
        r.prepared = Some(v.clone());
    }
    if let Some(v) = &args.data_name {
        r.data_name = Some(v.clone());
    }
    if let Some(v) = &args.images {
        r.images = Some(v.clone());
    }
    if let Some(v) = args.epochs {
        r.epochs = v;
    }
    if let Some(v) = args.max_minutes {
        r.max_minutes = v;
    }
    if let Some(v) = &args.metric {
        r.metric = v.clone();
    }
    if let Some(v) = args.margin {
        r.margin = v;
    }
    if let Some(v) = args.threads {
        r.threads = v;
    }
    r.validate()?;

    let db = cfg.database.path.clone();
    let device = gaze::device::open_device(&cfg.model.device)?;
    let parent = {
        let store = Store::open(&db)?;
        match registry::active_model(store.conn())
            .with_context(|| format!("{}: reading the active model", db.display()))?
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
            None if cfg.retrain.warm_start => {
                bail!(
                    "{}: no active model to start from; run `gaze watch` once, or set retrain.warm_start = false",
                    db.display()
                )
            }
            None => None,
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("stopping after the current batch (again to stop at once)");
        })
        .context("installing the signal handler")?;
    }
    let report = run_cycle(
        &db,
        parent.as_ref(),
        &CycleOptions {
            settings: &cfg.retrain,
            device: cfg.model.device.clone(),
            trigger: "manual",
            stop,
        },
    )?;
    let score = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    let metric = &cfg.retrain.metric;
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
            cfg.retrain.margin,
            report.log_path.display()
        ),
        RunStatus::Failed => eprintln!(
            "run {} failed: {}; log {}",
            report.run_id,
            report.error.as_deref().unwrap_or("unknown error"),
            report.log_path.display()
        ),
    }
    Ok(match report.status {
        RunStatus::Promoted => ExitCode::SUCCESS,
        RunStatus::Rejected => ExitCode::from(1),
        RunStatus::Failed => ExitCode::from(2),
    })
}
