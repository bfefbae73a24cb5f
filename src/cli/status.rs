//! `gaze status`: where the store stands — images by status, the recent rate, the backlog and
//! the active model. Opens the database read-only, so it runs beside the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use gaze::store::api::Query;
use gaze::store::{unix_now, Store};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The SQLite database.
    #[arg(long, value_name = "FILE", env = "GAZE_DB", default_value = "gaze.db")]
    pub db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    // Before the connection opens: see gaze::daemon::is_running.
    let running = gaze::daemon::is_running(&args.db);
    let store = Store::open_read_only(&args.db)?;
    let report = store.status(unix_now())?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["db"] = args.db.display().to_string().into();
        v["daemon_running"] = running.into();
        v["by_status"] = report
            .by_status
            .iter()
            .map(|(k, n)| (k.to_string(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let counts: Vec<String> = report
        .by_status
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "database:      {} (schema version {})",
        args.db.display(),
        report.schema_version
    );
    println!(
        "daemon:        {}",
        if running { "running" } else { "not running" }
    );
    match &report.active_model {
        Some(m) => println!(
            "active model:  {} (id {}, {}, blake3 {}…)",
            m.name,
            m.id,
            m.path,
            &m.content_hash[..m.content_hash.len().min(12)]
        ),
        None => println!("active model:  none yet"),
    }
    println!("images:        {} ({})", report.images, counts.join(", "));
    println!(
        "captions:      {} (by {} model(s))",
        report.captions, report.models
    );
    println!("backlog:       {} pending", report.backlog);
    if report.skipped > 0 {
        println!(
            "skipped:       {} (named pipes, devices or sockets in watched folders: never read)",
            report.skipped
        );
    }
    println!(
        "rate:          {:.2} images/s over the last minute ({} done)",
        report.images_per_second, report.done_last_minute
    );
    Ok(ExitCode::SUCCESS)
}
