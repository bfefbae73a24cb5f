//! `gaze serve`: the captioning daemon with its HTTP API, metrics and web page (docs/HTTP.md).
//! Folders are optional: with none, it captions what clients upload.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use gaze::config::Flags;
use gaze::daemon::DaemonOptions;

use super::watch::{load_model, run_daemon, CaptionFlags, DaemonFlags};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CaptionFlags,
    /// Folders are optional here: with none, only uploads are captioned.
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// Address to listen on, host:port [http.listen]. Off loopback, [http] token (or
    /// GAZE_HTTP_TOKEN) must be set.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

impl ServeArgs {
    fn flags(&self, log_level: Option<&str>) -> Flags {
        self.daemon
            .add_to(self.common.add_to(Flags::new()))
            .value("--listen", "http.listen", self.listen.as_deref())
            .value("--log-level", "log.level", log_level)
    }
}

pub fn run(args: ServeArgs, log_level_flag: Option<&str>) -> Result<ExitCode> {
    let cfg = args.common.settings(&args.flags(log_level_flag))?;
    cfg.validate_serve()?;
    // Before the model loads: a bad address or a missing token is said at once.
    let http = gaze::http::HttpOptions::from_config(&cfg)?;
    let location = gaze::store::Location::from_setting(&cfg.database.path);
    let model = load_model(&cfg)?;
    let opts = DaemonOptions::from_config(&cfg)?;
    run_daemon(&location, Some(model), opts, Some(http))?;
    Ok(ExitCode::SUCCESS)
}
