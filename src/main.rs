//! The `gaze` command line: parse, dispatch, report errors for humans, set the exit code.
//!
//! Exit codes: 0 success; 1 nothing found (`query`); 2 an error, or some inputs failed.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gaze",
    version,
    about = "Show, Attend and Tell image captioning",
    propagate_version = true
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace; default info); GAZE_LOG overrides, except
    /// for `watch`, where this flag overrides GAZE_LOG and the config file.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption image files with a trained model.
    Caption(cli::caption::CaptionArgs),
    /// Inspect model files.
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
    /// Watch folders and caption images as they arrive, into SQLite.
    Watch(cli::watch::WatchArgs),
    /// Show the captioning store's counts, rate, backlog and active model.
    Status(cli::status::StatusArgs),
    /// Find captions by path, words, recency or id; list failures; draw attention.
    Query(cli::query::QueryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `watch` sets up logging itself, from its layered settings.
    if !matches!(cli.command, Command::Watch(_)) {
        cli::init_logging(cli.log_level.as_deref().unwrap_or("info"));
    }
    let result = match cli.command {
        Command::Caption(args) => cli::caption::run(args),
        Command::Model(cmd) => cli::model::run(cmd),
        Command::Watch(args) => cli::watch::run(args, cli.log_level.as_deref()),
        Command::Status(args) => cli::status::run(args),
        Command::Query(args) => cli::query::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
