//! The `gaze` command line: parse, dispatch, report errors for humans, set the exit code.
//!
//! Exit codes: 0 success; 1 nothing found (`query`); 2 an error, or some inputs failed.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gaze", version, about = "Show, Attend and Tell image captioning", propagate_version = true)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); GAZE_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
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
    /// Write a captioned synthetic dataset (Karpathy JSON and JPEG images).
    Synth(cli::synth::SynthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Caption(args) => cli::caption::run(args),
        Command::Model(cmd) => cli::model::run(cmd),
        Command::Synth(args) => cli::synth::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
