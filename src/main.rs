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
    /// Log level: error, warn, info, debug, trace or off (default info), or tracing directives
    /// such as "gaze=debug,warn"; anything else is an error. GAZE_LOG overrides it, except for
    /// `watch`, where this flag overrides GAZE_LOG and the config file.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption image files with a trained model.
    Caption(cli::caption::CaptionArgs),
    /// Convert a PyTorch checkpoint (the tutorial's, or a state dict) into a gaze model file.
    Import(cli::import::ImportArgs),
    /// Inspect model files.
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Score COCO-format results against a Karpathy split (BLEU, METEOR (exact+stem), ROUGE-L, CIDEr-D).
    Score(cli::score::ScoreArgs),
    /// Evaluate a model on a prepared split: beam search at several sizes, every metric, results files.
    Eval(cli::eval::EvalArgs),
    /// Make the tutorial's training files (HDF5 images, JSON captions) from Karpathy's split JSON.
    Prepare(cli::prepare::PrepareArgs),
    /// Write a captioned synthetic dataset (Karpathy JSON and JPEG images).
    Synth(cli::synth::SynthArgs),
    /// The whole system in a few minutes: synthetic data, training, evaluation, the daemon.
    Demo(cli::demo::DemoArgs),
    /// Train a captioning model on prepared files (the tutorial's training, with real validation).
    Train(Box<cli::train::TrainArgs>),
    /// Watch folders and caption images as they arrive, into SQLite or PostgreSQL.
    Watch(cli::watch::WatchArgs),
    /// The daemon with an HTTP API, Prometheus metrics and a web page (docs/HTTP.md).
    Serve(cli::serve::ServeArgs),
    /// Caption images from a shared PostgreSQL store, beside workers on other machines.
    Worker(cli::worker::WorkerArgs),
    /// Show the captioning store's counts, rate, backlog and active model.
    Status(cli::status::StatusArgs),
    /// The model registry: list models and retraining runs, activate, roll back.
    #[command(subcommand)]
    Models(cli::models::ModelsCommand),
    /// Run one retraining cycle now with the [retrain] settings.
    Retrain(cli::retrain::RetrainArgs),
    /// Find captions by path, words, recency or id; list failures; draw attention.
    Query(cli::query::QueryArgs),
    /// Whole stores: copy a library between SQLite and PostgreSQL.
    #[command(subcommand)]
    Store(cli::store::StoreCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `watch` sets up logging itself, from its layered settings.
    if !matches!(
        cli.command,
        Command::Watch(_) | Command::Worker(_) | Command::Serve(_)
    ) {
        // The demo prints its own story; the daemon's per-caption log lines would drown it.
        let default = if matches!(cli.command, Command::Demo(_)) {
            "warn"
        } else {
            "info"
        };
        if let Err(err) = cli::init_logging(cli.log_level.as_deref(), default) {
            eprintln!("error: {}", error_chain(&err));
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Caption(args) => cli::caption::run(args),
        Command::Import(args) => cli::import::run(args),
        Command::Model(cmd) => cli::model::run(cmd),
        Command::Bench(cmd) => cli::bench::run(cmd),
        Command::Score(args) => cli::score::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Prepare(args) => cli::prepare::run(args),
        Command::Synth(args) => cli::synth::run(args),
        Command::Train(args) => cli::train::run(*args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Watch(args) => cli::watch::run(args, cli.log_level.as_deref()),
        Command::Worker(args) => cli::worker::run(args, cli.log_level.as_deref()),
        Command::Serve(args) => cli::serve::run(args, cli.log_level.as_deref()),
        Command::Status(args) => cli::status::run(args),
        Command::Query(args) => cli::query::run(args),
        Command::Models(cmd) => cli::models::run(cmd),
        Command::Retrain(args) => cli::retrain::run(args),
        Command::Store(cmd) => cli::store::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each cause added only where the message does not already say it
/// (library errors often name their cause in their own message).
fn error_chain(err: &anyhow::Error) -> String {
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
    }
    msg
}
