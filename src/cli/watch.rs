//! `gaze watch`: caption images as they appear in folders, into SQLite.
//!
//! Settings: defaults < config file (`--config`, or `GAZE_CONFIG`) < `GAZE_*` environment
//! variables < these flags. SIGINT/SIGTERM stop taking files, finish the batches in flight
//! and exit 0; a second signal exits at once (nothing committed is lost either way).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use gaze::config::{Config, Flags};
use gaze::daemon::{Daemon, DaemonOptions};
use gaze::model::{CaptionModel, LoadOptions};

/// The captioning flags `gaze watch` and `gaze worker` share.
#[derive(Args, Debug)]
pub struct CaptionFlags {
    /// A config file (TOML; see config.toml). GAZE_CONFIG names one too.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The tutorial's WORDMAP_*.json, for plain state dicts [model.word_map].
    #[arg(long, value_name = "FILE")]
    pub word_map: Option<PathBuf>,
    /// cpu, cuda or cuda:N [model.device].
    #[arg(long)]
    pub device: Option<String>,
    /// The CPU encoder's precision: f32, bf16 (CPUs with AVX-512 BF16) or auto [model.precision].
    #[arg(long, value_name = "P")]
    pub precision: Option<String>,
    /// Beams per image [model.beam_size].
    #[arg(long)]
    pub beam_size: Option<usize>,
    /// Images per batch [pipeline.batch_size].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Decode threads [pipeline.decode_threads].
    #[arg(long)]
    pub decode_threads: Option<usize>,
}

impl CaptionFlags {
    /// The layered settings (defaults < config file < environment < `flags`), checked, with
    /// logging set up from them before anything is allocated or logged.
    pub fn settings(&self, flags: &Flags) -> Result<Config> {
        let env = |k: &str| std::env::var(k).ok();
        let cfg = Config::layered(self.config.as_deref(), env, flags)?;
        // Every range, and a log level that logs.
        cfg.check_settings()?;
        let filter = cfg.log_filter()?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
        super::use_precision(cfg.precision()?, &cfg.model.device);
        Ok(cfg)
    }

    /// Adds these flags to the command-line layer.
    pub fn add_to(&self, flags: Flags) -> Flags {
        flags
            .path("--word-map", "model.word_map", self.word_map.as_deref())
            .value("--device", "model.device", self.device.as_deref())
            .value("--precision", "model.precision", self.precision.as_deref())
            .value("--beam-size", "model.beam_size", self.beam_size)
            .value("--batch-size", "pipeline.batch_size", self.batch_size)
            .value(
                "--decode-threads",
                "pipeline.decode_threads",
                self.decode_threads,
            )
    }
}

/// The flags of a daemon that watches folders, shared by `gaze watch` and `gaze serve`.
#[derive(Args, Debug)]
pub struct DaemonFlags {
    /// The store: a SQLite file, or a PostgreSQL URL (postgres://user@host/db) [database.path].
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// The model file [model.path].
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Poll the folders instead of using kernel notifications (network filesystems) [watch.poll].
    #[arg(long)]
    pub poll: bool,
    /// Milliseconds a file must stay unchanged before it is taken [watch.stable_ms].
    #[arg(long, value_name = "MS")]
    pub stable_ms: Option<u64>,
    /// Longest wait for a batch to fill, in milliseconds [pipeline.max_wait_ms].
    #[arg(long, value_name = "MS")]
    pub max_wait_ms: Option<u64>,
    /// Retrain on the [retrain] schedule while running [retrain.enabled].
    #[arg(long)]
    pub retrain: bool,
    /// The retraining schedule: an interval ("6h") or a cron expression [retrain.schedule].
    #[arg(long, value_name = "WHEN")]
    pub retrain_schedule: Option<String>,
    /// Folders to watch (replace [watch] folders).
    #[arg(value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

impl DaemonFlags {
    /// Adds these flags to the command-line layer.
    pub fn add_to(&self, flags: Flags) -> Flags {
        flags
            .folders(&self.dirs)
            .path("--db", "database.path", self.db.as_deref())
            .path("--model", "model.path", self.model.as_deref())
            .switch("--poll", "watch.poll", self.poll)
            .value("--stable-ms", "watch.stable_ms", self.stable_ms)
            .value("--max-wait-ms", "pipeline.max_wait_ms", self.max_wait_ms)
            .switch("--retrain", "retrain.enabled", self.retrain)
            .value(
                "--retrain-schedule",
                "retrain.schedule",
                self.retrain_schedule.as_deref(),
            )
    }
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub common: CaptionFlags,
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// Caption what is there (and what arrives meanwhile), then exit: 0, or 2 if some
    /// images failed.
    #[arg(long, visible_alias = "once")]
    pub exit_when_idle: bool,
    /// Serve the HTTP API, metrics and web page on ADDR (host:port) while watching
    /// [http.listen]; see docs/HTTP.md.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Only discover files and record them pending, for `gaze worker`s to caption (a shared
    /// PostgreSQL store); no model is loaded.
    #[arg(long, conflicts_with_all = ["model", "word_map", "retrain"])]
    pub no_caption: bool,
}

impl WatchArgs {
    /// The command-line layer: each flag given replaces its key and becomes its source.
    fn flags(&self, log_level: Option<&str>) -> Flags {
        let flags = self.daemon.add_to(self.common.add_to(Flags::new()));
        flags
            .value("--http", "http.listen", self.http.as_deref())
            .value("--log-level", "log.level", log_level)
    }
}

pub fn run(args: WatchArgs, log_level_flag: Option<&str>) -> Result<ExitCode> {
    let cfg = args.common.settings(&args.flags(log_level_flag))?;
    let location = gaze::store::Location::from_setting(&cfg.database.path);
    let model = if args.no_caption {
        cfg.validate_scan()?;
        if location.sqlite_path().is_some() {
            tracing::warn!(
                db = %location,
                "--no-caption on a SQLite file: images are only recorded; \
                 `gaze worker` needs a PostgreSQL store"
            );
        }
        None
    } else {
        cfg.validate()?;
        Some(load_model(&cfg)?)
    };
    // Also checks the [retrain] settings (when enabled).
    let mut opts = DaemonOptions::from_config(&cfg)?;
    opts.exit_when_idle = args.exit_when_idle;

    let http = match &args.http {
        Some(_) => Some(gaze::http::HttpOptions::from_config(&cfg)?),
        None => None,
    };
    let summary = run_daemon(&location, model, opts, http)?;
    if args.exit_when_idle && summary.failed > 0 {
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts the daemon (and the HTTP server beside it, when asked), stops both on SIGINT or
/// SIGTERM, and waits for the daemon to drain.
pub(crate) fn run_daemon(
    location: &gaze::store::Location,
    model: Option<CaptionModel>,
    opts: DaemonOptions,
    http: Option<gaze::http::HttpOptions>,
) -> Result<gaze::daemon::RunSummary> {
    let daemon = Daemon::start(location, model.map(Arc::new), opts)?;
    let server = match http {
        Some(http) => match gaze::http::Server::start(http, gaze::http::DaemonLink::of(&daemon)) {
            Ok(server) => Some(server),
            Err(e) => {
                // Nothing is lost: stop the pipeline cleanly, then report.
                daemon.shutdown_handle().request();
                let _ = daemon.wait();
                return Err(e.into());
            }
        },
        None => None,
    };
    let shutdown = daemon.shutdown_handle();
    super::signal::on_interrupt(move || {
        tracing::info!("stopping: finishing the batches in flight (signal again to stop at once)");
        shutdown.request();
    })?;

    let summary = daemon.wait();
    // After the pipeline: uploads waiting for a caption got theirs, or a 503.
    if let Some(server) = server {
        server.stop();
    }
    let summary = summary?;
    tracing::info!(
        captioned = summary.captioned,
        reused = summary.reused,
        failed = summary.failed,
        "stopped"
    );
    Ok(summary)
}

/// The configured model, loaded on the configured device.
pub(crate) fn load_model(cfg: &Config) -> Result<CaptionModel> {
    let model_path = cfg.model.path.clone().expect("validate checks the model");
    let device = gaze::device::open_device(&cfg.model.device)?;
    let load = LoadOptions {
        word_map: cfg.model.word_map.clone(),
        encoded_image_size: None,
    };
    Ok(CaptionModel::load(&model_path, &load, &device)?)
}
