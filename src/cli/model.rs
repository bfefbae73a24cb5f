//! `gaze model info`: what a model file holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use gaze::model::{file, LoadOptions};

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Print a model file's architecture, vocabulary size and provenance.
    Info {
        /// The model file.
        file: PathBuf,
        /// A word map, for plain state dicts without metadata.
        #[arg(long)]
        word_map: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelCommand) -> Result<ExitCode> {
    match cmd {
        ModelCommand::Info {
            file: path,
            word_map,
            json,
        } => {
            let opts = LoadOptions {
                word_map,
                encoded_image_size: None,
            };
            let mf = file::read_model_file(&path, &opts, &candle_core::Device::Cpu)?;
            let params: usize = mf.tensors.values().map(|t| t.elem_count()).sum();
            let cfg = &mf.config;
            if json {
                let v = serde_json::json!({
                    "path": path.display().to_string(),
                    "format": if mf.has_metadata { "gaze-model" } else { "state-dict" },
                    "config": cfg,
                    "encoder": cfg.encoder.display_name(),
                    "encoder_dim": cfg.encoder_dim(),
                    "vocab_size": mf.word_map.len(),
                    "tensors": mf.tensors.len(),
                    "parameters": params,
                    "provenance": mf.provenance,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("file:               {}", path.display());
                println!(
                    "format:             {}",
                    if mf.has_metadata {
                        "gaze model"
                    } else {
                        "plain state dicts (architecture inferred)"
                    }
                );
                println!("encoder:            {}", cfg.encoder.display_name());
                println!("encoder_dim:        {}", cfg.encoder_dim());
                println!("encoded_image_size: {}", cfg.encoded_image_size);
                println!("attention_dim:      {}", cfg.attention_dim);
                println!("embed_dim:          {}", cfg.embed_dim);
                println!("decoder_dim:        {}", cfg.decoder_dim);
                println!("dropout:            {}", cfg.dropout);
                println!("vocab_size:         {}", mf.word_map.len());
                println!(
                    "tensors:            {} ({params} parameters)",
                    mf.tensors.len()
                );
                if mf.provenance.as_object().is_some_and(|o| !o.is_empty()) {
                    println!(
                        "provenance:         {}",
                        serde_json::to_string_pretty(&mf.provenance)?
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
