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
use gaze::config::{Config, Source, CONFIG_ENV};
use gaze::daemon::{Daemon, DaemonOptions};
use gaze::model::{CaptionModel, LoadOptions};

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// A config file (TOML; see config.toml). GAZE_CONFIG names one too.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The SQLite database [database.path].
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// The model file [model.path].
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// The tutorial's WORDMAP_*.json, for plain state dicts [model.word_map].
    #[arg(long, value_name = "FILE")]
    pub word_map: Option<PathBuf>,
    /// cpu, cuda or cuda:N [model.device].
    #[arg(long)]
    pub device: Option<String>,
    /// Beams per image [model.beam_size].
    #[arg(long)]
    pub beam_size: Option<usize>,
    /// Poll the folders instead of using kernel notifications (network filesystems) [watch.poll].
    #[arg(long)]
    pub poll: bool,
    /// Milliseconds a file must stay unchanged before it is taken [watch.stable_ms].
    #[arg(long, value_name = "MS")]
    pub stable_ms: Option<u64>,
    /// Images per batch [pipeline.batch_size].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill, in milliseconds [pipeline.max_wait_ms].
    #[arg(long, value_name = "MS")]
    pub max_wait_ms: Option<u64>,
    /// Decode threads [pipeline.decode_threads].
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// Retrain on the [retrain] schedule while watching [retrain.enabled].
    #[arg(long)]
    pub retrain: bool,
    /// The retraining schedule: an interval ("6h") or a cron expression [retrain.schedule].
    #[arg(long, value_name = "WHEN")]
    pub retrain_schedule: Option<String>,
    /// Caption what is there (and what arrives meanwhile), then exit: 0, or 2 if some
    /// images failed.
    #[arg(long, visible_alias = "once")]
    pub exit_when_idle: bool,
    /// Folders to watch (replace [watch] folders).
    #[arg(value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

impl WatchArgs {
    /// The command-line layer: each flag given replaces its key and becomes its source.
    fn apply(&self, cfg: &mut Config) {
        let flag = |cfg: &mut Config, key: &str, name: &'static str| {
            cfg.set_source(key, Source::Flag(name));
        };
        if !self.dirs.is_empty() {
            cfg.watch.folders = self.dirs.clone();
        }
        if let Some(v) = &self.db {
            cfg.database.path = v.clone();
            flag(cfg, "database.path", "--db");
        }
        if let Some(v) = &self.model {
            cfg.model.path = Some(v.clone());
            flag(cfg, "model.path", "--model");
        }
        if let Some(v) = &self.word_map {
            cfg.model.word_map = Some(v.clone());
            flag(cfg, "model.word_map", "--word-map");
        }
        if let Some(v) = &self.device {
            cfg.model.device = v.clone();
            flag(cfg, "model.device", "--device");
        }
        if let Some(v) = self.beam_size {
            cfg.model.beam_size = v;
            flag(cfg, "model.beam_size", "--beam-size");
        }
        if self.poll {
            cfg.watch.poll = true;
            flag(cfg, "watch.poll", "--poll");
        }
        if let Some(v) = self.stable_ms {
            cfg.watch.stable_ms = v;
            flag(cfg, "watch.stable_ms", "--stable-ms");
        }
        if let Some(v) = self.batch_size {
            cfg.pipeline.batch_size = v;
            flag(cfg, "pipeline.batch_size", "--batch-size");
        }
        if let Some(v) = self.max_wait_ms {
            cfg.pipeline.max_wait_ms = v;
            flag(cfg, "pipeline.max_wait_ms", "--max-wait-ms");
        }
        if let Some(v) = self.decode_threads {
            cfg.pipeline.decode_threads = v;
            flag(cfg, "pipeline.decode_threads", "--decode-threads");
        }
        if self.retrain {
            cfg.retrain.enabled = true;
            flag(cfg, "retrain.enabled", "--retrain");
        }
        if let Some(v) = &self.retrain_schedule {
            cfg.retrain.schedule = v.clone();
            flag(cfg, "retrain.schedule", "--retrain-schedule");
        }
    }
}

pub fn run(args: WatchArgs, log_level_flag: Option<&str>) -> Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let file = args
        .config
        .clone()
        .or_else(|| env(CONFIG_ENV).map(PathBuf::from));
    let mut cfg = Config::load(file.as_deref(), env)?;
    args.apply(&mut cfg);
    if let Some(level) = log_level_flag {
        cfg.log.level = level.to_string();
        cfg.set_source("log.level", Source::Flag("--log-level"));
    }
    // Before anything is allocated or logged: every range, and a log level that logs.
    cfg.check_settings()?;
    let filter = cfg.log_filter()?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    cfg.validate()?;

    let model_path = cfg.model.path.clone().expect("validate checks the model");
    let device = gaze::device::open_device(&cfg.model.device)?;
    let load = LoadOptions {
        word_map: cfg.model.word_map.clone(),
        encoded_image_size: None,
    };
    let model = CaptionModel::load(&model_path, &load, &device)?;
    let mut opts = DaemonOptions::from_config(&cfg);
    opts.exit_when_idle = args.exit_when_idle;

    let daemon = Daemon::start(&cfg.database.path, Arc::new(model), opts)?;
    let shutdown = daemon.shutdown_handle();
    super::signal::on_interrupt(move || {
        tracing::info!("stopping: finishing the batches in flight (signal again to stop at once)");
        shutdown.request();
    })?;

    let summary = daemon.wait()?;
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
