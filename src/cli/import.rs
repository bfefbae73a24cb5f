//! `gaze import`: turn a PyTorch checkpoint (the tutorial's `BEST_checkpoint_*.pth.tar`, in
//! either torch format, or a state dict) into a gaze model file.
//!
//! The architecture is inferred from tensor shapes; the attention grid size and dropout come
//! from the pickled encoder/decoder modules where the checkpoint has them. The provenance
//! records the source file and what the checkpoint says about its training.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use gaze::data::WordMap;
use gaze::model::file::write_model_file;
use gaze::model::weights::Weights;
use gaze::model::CaptionModel;
use gaze::pth::Checkpoint;
use serde_json::json;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The PyTorch checkpoint: the tutorial's BEST_checkpoint_*.pth.tar, or a state dict (.pth).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The tutorial's WORDMAP_*.json that the checkpoint was trained with (the tutorial's
    /// checkpoints do not contain one).
    #[arg(long)]
    pub word_map: Option<PathBuf>,
    /// Attention grid size, where the checkpoint does not record it (default 14).
    #[arg(long)]
    pub encoded_image_size: Option<usize>,
    /// The gaze model file to write (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: ImportArgs) -> Result<ExitCode> {
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    let path = &args.checkpoint;
    let ckpt = Checkpoint::open(path)?;
    let info = ckpt.training_info();
    let word_map = match (&args.word_map, &info.word_map) {
        (Some(wm), _) => WordMap::load(wm)?,
        (None, Some(pairs)) => WordMap::from_pairs(pairs.clone(), path)?,
        (None, None) => bail!(
            "{}: the checkpoint holds no word map (the tutorial saves it separately): \
             pass the WORDMAP_*.json it was trained with, --word-map WORDMAP.json",
            path.display()
        ),
    };
    let device = Device::Cpu;
    let (tensors, config) =
        super::pytorch_model_parts(&ckpt, word_map.len(), args.encoded_image_size, &device)?;

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut source =
        json!({ "file": file_name, "format": format!("pytorch-{}", ckpt.format().name()) });
    let fields = [
        ("epoch", info.epoch.map(|v| json!(v))),
        (
            "epochs_since_improvement",
            info.epochs_since_improvement.map(|v| json!(v)),
        ),
        ("bleu-4", info.bleu4.map(|v| json!(v))),
        (
            "encoder_class",
            info.encoder_class.as_ref().map(|v| json!(v)),
        ),
        (
            "decoder_class",
            info.decoder_class.as_ref().map(|v| json!(v)),
        ),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            source[key] = v;
        }
    }
    let provenance = json!({ "imported_from": source });

    // Building the model checks every tensor the architecture needs, by name and shape.
    let weights = Weights::new(tensors, &device);
    let model = CaptionModel::build(
        &weights,
        config.clone(),
        word_map.clone(),
        provenance.clone(),
        path,
    )?;
    drop(model);
    let unused = weights.unused();
    if !unused.is_empty() {
        tracing::warn!(count = unused.len(), names = %unused.join(", "), "tensors the model does not use were left out");
    }
    let mut keep: Vec<(String, candle_core::Tensor)> = weights
        .into_tensors()
        .into_iter()
        .filter(|(n, _)| !unused.contains(n))
        .collect();
    keep.sort_by(|a, b| a.0.cmp(&b.0));
    write_model_file(&args.out, &keep, &config, &word_map, &provenance)
        .with_context(|| format!("writing {}", args.out.display()))?;

    let params: usize = keep.iter().map(|(_, t)| t.elem_count()).sum();
    println!(
        "wrote {}: {} encoder, grid {}x{}, attention {}, embedding {}, decoder {}, {} words, {} tensors ({params} parameters)",
        args.out.display(),
        config.encoder.display_name(),
        config.encoded_image_size,
        config.encoded_image_size,
        config.attention_dim,
        config.embed_dim,
        config.decoder_dim,
        word_map.len(),
        keep.len(),
    );
    if let (Some(epoch), Some(bleu)) = (info.epoch, info.bleu4) {
        println!(
            "from {file_name} ({} format): epoch {epoch}, BLEU-4 {bleu}",
            ckpt.format().name()
        );
    }
    Ok(ExitCode::SUCCESS)
}
