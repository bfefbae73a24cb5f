//! `gaze worker`: caption images from a shared PostgreSQL store, on this machine, beside any
//! number of workers on others. A `gaze watch --no-caption` scanner (or a full `gaze watch`)
//! records the images; workers claim them under leases (`[worker] lease_seconds`).
//!
//! Settings layer as for `gaze watch`: defaults < config file < `GAZE_*` variables < flags.
//! SIGINT/SIGTERM stop claiming, let the batches in flight commit, give back what is left and
//! exit 0; a second signal exits at once (leases then run out and other workers take over).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use gaze::config::Flags;
use gaze::daemon::worker::{default_worker_id, Worker, WorkerOptions};
use gaze::daemon::DaemonOptions;
use gaze::store::Location;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: super::watch::CaptionFlags,
    /// The shared store: a PostgreSQL URL (postgres://user@host/db) [database.path].
    #[arg(long, value_name = "URL")]
    pub db: Option<PathBuf>,
    /// Register this model and make it active, as `gaze watch --model` does; without it the
    /// registry's active model is used (found by its recorded path or in [worker] models_dir,
    /// and checked against its recorded hash) [model.path].
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Seconds a claim lasts without being extended [worker.lease_seconds].
    #[arg(long, value_name = "SECONDS")]
    pub lease_seconds: Option<u64>,
    /// This worker's name in the store and in `gaze status` (default: host:pid).
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
    /// Exit once no image is left pending: 0, or 2 if some images failed.
    #[arg(long, visible_alias = "once")]
    pub exit_when_idle: bool,
}

impl WorkerArgs {
    fn flags(&self, log_level: Option<&str>) -> Flags {
        self.common
            .add_to(Flags::new())
            .path("--db", "database.path", self.db.as_deref())
            .path("--model", "model.path", self.model.as_deref())
            .value(
                "--lease-seconds",
                "worker.lease_seconds",
                self.lease_seconds,
            )
            .value("--log-level", "log.level", log_level)
    }
}

pub fn run(args: WorkerArgs, log_level_flag: Option<&str>) -> Result<ExitCode> {
    let cfg = args.common.settings(&args.flags(log_level_flag))?;
    let location = Location::from_setting(&cfg.database.path);
    if location.sqlite_path().is_some() {
        anyhow::bail!(
            "{location}: `gaze worker` needs a shared PostgreSQL store: give --db postgres://... \
             (on one machine, `gaze watch` does everything)"
        );
    }
    let mut pipeline = DaemonOptions::from_config(&cfg)?;
    pipeline.exit_when_idle = args.exit_when_idle;
    let device = gaze::device::open_device(&cfg.model.device)?;
    let model = match &cfg.model.path {
        Some(_) => Some(Arc::new(super::watch::load_model(&cfg)?)),
        None => None,
    };
    let opts = WorkerOptions {
        pipeline,
        lease_seconds: cfg.worker.lease_seconds as f64,
        models_dir: cfg.worker.models_dir.clone(),
        recaption: cfg.retrain.recaption,
        id: args.id.clone().unwrap_or_else(default_worker_id),
    };
    let worker = Worker::start(&location, model, device, opts)?;
    let shutdown = worker.shutdown_handle();
    super::signal::on_interrupt(move || {
        tracing::info!("stopping: finishing the batches in flight (signal again to stop at once)");
        shutdown.request();
    })?;
    let summary = worker.wait()?;
    tracing::info!(
        captioned = summary.captioned,
        reused = summary.reused,
        failed = summary.failed,
        "stopped"
    );
    if args.exit_when_idle && summary.failed > 0 {
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
