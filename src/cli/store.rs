//! `gaze store`: whole-store operations. `copy` moves a library between SQLite and PostgreSQL
//! (either way, or to a store of the same kind), keeping every id.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use gaze::store::copy::{copy, CopyOptions};
use gaze::store::Location;

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy every table of one store into another, empty one (created if need be), in one
    /// transaction: a SQLite file or a postgres:// URL on either side.
    Copy(CopyArgs),
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The store to copy: a SQLite file, or a postgres:// or postgresql:// URL. It is read in
    /// one snapshot and not changed (an older SQLite file is upgraded to the current schema
    /// first).
    #[arg(long, value_name = "FILE|URL")]
    pub from: PathBuf,
    /// The store to copy into: a SQLite file or a PostgreSQL URL. It must hold no rows.
    #[arg(long, value_name = "FILE|URL")]
    pub to: PathBuf,
    /// Empty the target first if it holds anything (in the same transaction as the copy).
    #[arg(long)]
    pub replace: bool,
}

pub fn run(cmd: StoreCommand) -> Result<ExitCode> {
    match cmd {
        StoreCommand::Copy(args) => {
            let (from, to) = (
                Location::from_setting(&args.from),
                Location::from_setting(&args.to),
            );
            let opts = CopyOptions {
                replace: args.replace,
            };
            let report =
                copy(&from, &to, &opts).with_context(|| format!("copying {from} to {to}"))?;
            println!("copied {from} to {to}");
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
