//! `gaze models`: the model registry — list models and retraining runs with their held-out
//! metrics, activate a model, roll back to the previous one. A running `gaze watch` with
//! retraining enabled follows the registry and swaps the new active model in between batches.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use gaze::store::api::{CaptionStore, ModelRow, RunRow};
use gaze::store::{unix_now, Location};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct DbArg {
    /// The store: a SQLite file, or a PostgreSQL URL (postgres://user@host/db).
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "GAZE_DB",
        default_value = "gaze.db"
    )]
    pub db: PathBuf,
}

#[derive(Args, Debug)]
pub struct RecaptionArg {
    /// Which stored images the newly active model captions again: none, missing (those with
    /// no finished caption by any model) or all. They are queued in the same transaction as
    /// the activation, and the next `gaze watch` started on the database captions them.
    #[arg(long, env = "GAZE_RETRAIN_RECAPTION", default_value = "missing")]
    pub recaption: gaze::store::registry::Recaption,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Every registered model (status, parent, held-out metrics) and the retraining runs.
    List {
        #[command(flatten)]
        db: DbArg,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Show at most this many runs (newest first).
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Make a registered model the active one.
    Activate {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        recaption: RecaptionArg,
        /// The model's id (see `gaze models list`).
        id: i64,
    },
    /// Re-activate the model that was active before the current one.
    Rollback {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        recaption: RecaptionArg,
    },
}

pub fn run(cmd: ModelsCommand) -> Result<ExitCode> {
    match cmd {
        ModelsCommand::List { db, format, runs } => list(&db.db, format, runs),
        ModelsCommand::Activate { db, recaption, id } => {
            let mut opened = gaze::store::open(&Location::from_setting(&db.db))?;
            let store: &mut dyn CaptionStore = &mut *opened;
            // The activation and its requeue commit together.
            let done = store
                .activate(id, "activate", recaption.recaption, unix_now())
                .with_context(|| format!("{}: activating model {id}", store.location()))?;
            let requeued = done.requeued;
            match done.previous {
                Some(p) => println!("model {id} is active (was model {p})"),
                None => println!("model {id} is active"),
            }
            println!("{requeued} image(s) queued again for it");
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Rollback { db, recaption } => {
            let mut opened = gaze::store::open(&Location::from_setting(&db.db))?;
            let store: &mut dyn CaptionStore = &mut *opened;
            let back = store
                .rollback(recaption.recaption, unix_now())
                .with_context(|| format!("{}: rolling back", store.location()))?;
            println!(
                "model {} is active again (was model {})",
                back.to, back.from
            );
            println!("{} image(s) queued again for it", back.requeued);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(db: &std::path::Path, format: Format, max_runs: usize) -> Result<ExitCode> {
    let store = gaze::store::open_read_only(&Location::from_setting(db))?;
    let models = store
        .list_models()
        .with_context(|| format!("{}: listing models", db.display()))?;
    let runs = store
        .list_runs(max_runs)
        .with_context(|| format!("{}: listing runs", db.display()))?;
    if format == Format::Json {
        let v = serde_json::json!({ "models": models, "runs": runs });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(if models.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    if models.is_empty() {
        println!("no models registered");
        return Ok(ExitCode::from(1));
    }
    println!(
        "{:>4} {:1} {:<22} {:<8} {:<9} {:>6} {:>5} {:>8} {:>8} {:>8}  path",
        "id", "", "name", "kind", "status", "parent", "run", "captions", "CIDEr-D", "BLEU-4"
    );
    for m in &models {
        println!(
            "{:>4} {:1} {:<22} {:<8} {:<9} {:>6} {:>5} {:>8} {:>8} {:>8}  {}",
            m.id,
            if m.active { "*" } else { "" },
            truncate(&m.name, 22),
            m.kind,
            m.status,
            opt(m.parent_id),
            opt(m.run_id),
            m.captions,
            metric(m, "cider_d"),
            metric(m, "bleu_4_coco"),
            m.path
        );
    }
    if !runs.is_empty() {
        println!();
        println!(
            "{:>4} {:<9} {:<8} {:>6} {:>9} {:<28} {:>10} {:>10}  error / log",
            "run", "status", "trigger", "parent", "candidate", "rule", "parent", "candidate"
        );
        for r in &runs {
            println!(
                "{:>4} {:<9} {:<8} {:>6} {:>9} {:<28} {:>10} {:>10}  {}",
                r.id,
                r.status,
                r.trigger,
                opt(r.parent_model_id),
                opt(r.candidate_model_id),
                rule(r),
                run_metric(r, r.parent_metrics.as_ref()),
                run_metric(r, r.candidate_metrics.as_ref()),
                r.error
                    .clone()
                    .or_else(|| r.log_path.clone())
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

fn metric(m: &ModelRow, key: &str) -> String {
    m.metrics
        .as_ref()
        .and_then(|v| v["corpus"][key].as_f64())
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "-".into())
}

fn rule(r: &RunRow) -> String {
    r.rule
        .as_ref()
        .map(|v| {
            format!(
                "{} >= active + {}",
                v["metric"].as_str().unwrap_or("?"),
                v["margin"]
            )
        })
        .unwrap_or_default()
}

fn run_metric(r: &RunRow, m: Option<&serde_json::Value>) -> String {
    let key = r
        .rule
        .as_ref()
        .and_then(|v| v["metric"].as_str())
        .unwrap_or("cider_d");
    m.and_then(|v| v["corpus"][key].as_f64())
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "-".into())
}
