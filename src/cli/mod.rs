//! Subcommands. Each file holds one subcommand's arguments and its `run`.

pub mod bench;
pub mod bench_train;
pub mod caption;
pub mod demo;
pub mod eval;
pub mod import;
pub mod model;
pub mod models;
pub mod parity;
pub mod prepare;
pub mod query;
pub mod retrain;
pub mod score;
pub mod serve;
pub mod signal;
pub mod status;
pub mod store;
pub mod synth;
pub mod train;
pub mod watch;
pub mod worker;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use gaze::config::Source;
use gaze::data::WordMap;
use gaze::model::encoder::cpu::Precision;
use gaze::model::{CaptionModel, LoadOptions};

/// Sets up `tracing` to stderr: `GAZE_LOG` overrides `--log-level` (`flag`), which overrides
/// `default`. A level that is not one is an error naming where it came from, never a filter
/// that silently logs nothing.
pub fn init_logging(flag: Option<&str>, default: &str) -> Result<()> {
    let env = std::env::var_os(LOG_ENV);
    let (spec, source) = match (&env, flag) {
        (Some(v), _) => match v.to_str() {
            Some(v) => (v, Some(Source::Env(LOG_ENV))),
            None => bail!("environment variable {LOG_ENV} is not valid UTF-8"),
        },
        (None, Some(f)) => (f, Some(Source::Flag("--log-level"))),
        (None, None) => (default, None),
    };
    let filter = gaze::config::log_filter("log level", spec, source)?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

const LOG_ENV: &str = "GAZE_LOG";

/// Where a model comes from: a gaze model file, or tutorial weights plus a word map.
#[derive(Args, Debug, Clone)]
pub struct ModelSource {
    /// A gaze model file (.safetensors with metadata).
    #[arg(long, conflicts_with = "weights")]
    pub model: Option<PathBuf>,
    /// Tutorial-named weights without metadata: a PyTorch file (`torch.save` of state dicts or
    /// of the tutorial's checkpoint, either format) or a .safetensors state dict; needs --word-map.
    #[arg(long, requires = "word_map")]
    pub weights: Option<PathBuf>,
    /// The tutorial's WORDMAP_*.json (required with --weights; replaces a model's own).
    #[arg(long)]
    pub word_map: Option<PathBuf>,
    /// Attention grid size for weights that do not record it.
    #[arg(long)]
    pub encoded_image_size: Option<usize>,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "GAZE_DEVICE")]
    pub device: String,
    /// What the CPU encoder's convolutions compute in: f32; bf16 (bfloat16 products, f32 sums,
    /// on CPUs with AVX-512 BF16); or auto (bf16 where the CPU has it).
    #[arg(long, default_value = "f32", env = "GAZE_PRECISION", value_name = "P")]
    pub precision: String,
}

impl ModelSource {
    pub fn load(&self) -> Result<CaptionModel> {
        let path = match (&self.model, &self.weights) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                bail!("give a model with --model FILE, or --weights FILE --word-map WORDMAP.json")
            }
        };
        let device = gaze::device::open_device(&self.device)?;
        let precision =
            Precision::parse(&self.precision).map_err(|e| anyhow!("--precision: {e}"))?;
        use_precision(precision, &self.device);
        if self.model.is_none() && !is_safetensors(path) {
            // A PyTorch file, read as `gaze import` does, without writing a file.
            let word_map_path = self
                .word_map
                .as_ref()
                .context("--weights needs --word-map WORDMAP.json")?;
            let word_map = WordMap::load(word_map_path)?;
            return Ok(CaptionModel::from_pytorch(
                path,
                word_map,
                self.encoded_image_size,
                &device,
            )?);
        }
        let opts = LoadOptions {
            word_map: self.word_map.clone(),
            encoded_image_size: self.encoded_image_size,
        };
        // Model errors name the file themselves.
        Ok(CaptionModel::load(path, &opts, &device)?)
    }
}

/// Makes `precision` the CPU engine's for every model this process loads, saying so when it is
/// not the default, and that it does not apply off the CPU.
pub(crate) fn use_precision(precision: Precision, device: &str) {
    gaze::model::encoder::set_default_precision(precision);
    if precision == Precision::Bf16 {
        if device.trim().eq_ignore_ascii_case("cpu") {
            tracing::info!("encoder convolutions in bfloat16 (AVX-512 BF16), sums in f32");
            if let Some(speed) = gaze::kernels::bf16::relative_speed().filter(|&s| s < 1.0) {
                tracing::warn!(
                    "this CPU does {speed:.2}x as many bf16 multiply-adds per second as f32 \
                     ones: bf16 is slower than f32 here (precision auto picks f32)"
                );
            }
        } else {
            tracing::warn!(
                device,
                "precision bf16 applies to the CPU encoder; {device} runs f32"
            );
        }
    }
}

/// Whether a file is a safetensors file (by its extension; PyTorch files are .pth, .pt, .tar).
fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}
