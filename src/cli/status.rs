//! `gaze status`: where the store stands — images by status, the recent rate, the backlog and
//! the active model. Opens the database read-only, so it runs beside the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use gaze::store::postgres::lease::WORKERS_SEEN_SECONDS;
use gaze::store::{unix_now, Location};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The store: a SQLite file, or a PostgreSQL URL (postgres://user@host/db).
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "GAZE_DB",
        default_value = "gaze.db"
    )]
    pub db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    // Before the connection opens: see gaze::daemon::is_running.
    let location = Location::from_setting(&args.db);
    // A SQLite file has one daemon, known by its lock; a shared server lists its workers.
    let running = location.sqlite_path().map(gaze::daemon::is_running);
    let store = gaze::store::open_read_only(&location)?;
    let report = store.status(unix_now())?;
    if args.json {
        let mut v = report.to_json();
        v["db"] = location.to_string().into();
        v["daemon_running"] = running.into();
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
        location, report.schema_version
    );
    match running {
        Some(running) => println!(
            "daemon:        {}",
            if running { "running" } else { "not running" }
        ),
        None => println!("workers:       {} seen lately", report.workers.len()),
    }
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
    if !report.workers.is_empty() {
        println!(
            "workers seen in the last {:.0} minutes:",
            WORKERS_SEEN_SECONDS / 60.0
        );
        println!(
            "  {:<20} {:<16} {:<16} {:>9} {:>7} {:>9}  state",
            "id", "host", "model", "images/s", "leases", "last seen"
        );
        for w in &report.workers {
            let model = w.model.clone().unwrap_or_else(|| "-".into());
            let state = match &w.error {
                Some(e) => e.clone(),
                None => "working".into(),
            };
            println!(
                "  {:<20} {:<16} {:<16} {:>9.2} {:>7} {:>8.0}s  {}",
                w.id, w.host, model, w.images_per_second, w.leases, w.seconds_since_seen, state
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
