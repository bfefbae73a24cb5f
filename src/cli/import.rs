//! `gaze import`: turn a PyTorch checkpoint (the tutorial's `BEST_checkpoint_*.pth.tar`, in
//! either torch format, or a state dict) into a gaze model file.
//!
//! The architecture is inferred from tensor shapes; the attention grid size and dropout come
//! from the pickled encoder/decoder modules where the checkpoint has them. The provenance
//! records the source file and what the checkpoint says about its training
//! (`gaze::pth::import`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use gaze::data::WordMap;
use gaze::model::file::write_model_file;
use gaze::pth::import::import;
use gaze::pth::Checkpoint;

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
    let model = import(&ckpt, word_map, args.encoded_image_size)?;
    if !model.unused.is_empty() {
        tracing::warn!(count = model.unused.len(), names = %model.unused.join(", "), "tensors the model does not use were left out");
    }
    let config = &model.config;
    write_model_file(
        &args.out,
        &model.tensors,
        config,
        &model.word_map,
        &model.provenance,
    )
    .with_context(|| format!("writing {}", args.out.display()))?;

    let params: usize = model.tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!(
        "wrote {}: {} encoder, grid {}x{}, attention {}, embedding {}, decoder {}, {} words, {} tensors ({params} parameters)",
        args.out.display(),
        config.encoder.display_name(),
        config.encoded_image_size,
        config.encoded_image_size,
        config.attention_dim,
        config.embed_dim,
        config.decoder_dim,
        model.word_map.len(),
        model.tensors.len(),
    );
    if let (Some(epoch), Some(bleu)) = (info.epoch, info.bleu4) {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "from {file_name} ({} format): epoch {epoch}, BLEU-4 {bleu}",
            ckpt.format().name()
        );
    }
    Ok(ExitCode::SUCCESS)
}
