//! `gaze caption`: caption image files, optionally drawing attention pictures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use gaze::data::image::{self as img, DecodeOptions, TUTORIAL_SIZE};
use gaze::model::{encoder::images_to_tensor, BeamOptions, LengthPenalty};
use rayon::prelude::*;

use super::ModelSource;

#[derive(Args, Debug)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// Beams per image (1 is greedy decoding).
    #[arg(long, default_value_t = 5)]
    pub beam_size: usize,
    /// Images captioned together in one batched search.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Stop after this many steps (the tutorial's 50).
    #[arg(long, default_value_t = 50)]
    pub max_steps: usize,
    /// Pick the final beam by score / length^ALPHA instead of the raw score.
    #[arg(long, value_name = "ALPHA")]
    pub length_norm: Option<f32>,
    /// Never emit <unk>.
    #[arg(long)]
    pub forbid_unk: bool,
    /// Never repeat a trigram.
    #[arg(long)]
    pub block_trigrams: bool,
    /// Print JSON lines (path, caption, tokens, token_ids, score, finished) instead of `path<TAB>caption`.
    #[arg(long)]
    pub json: bool,
    /// Write one attention picture per image (PNG) into this folder.
    #[arg(long)]
    pub attention_dir: Option<PathBuf>,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

impl CaptionArgs {
    pub fn beam_options(&self) -> BeamOptions {
        BeamOptions {
            beam_size: self.beam_size.max(1),
            max_steps: self.max_steps,
            length_penalty: self
                .length_norm
                .map_or(LengthPenalty::None, |alpha| LengthPenalty::Power { alpha }),
            forbid_unk: self.forbid_unk,
            block_repeated_trigrams: self.block_trigrams,
        }
    }
}

struct Decoded {
    path: PathBuf,
    pixels: Vec<f32>,
    image: image::DynamicImage,
}

fn decode(path: &Path) -> Result<Decoded, gaze::data::DataError> {
    let image = img::decode_file(path, &DecodeOptions::default())?;
    let chw = img::rgb_to_chw(&img::to_rgb_resized(&image, TUTORIAL_SIZE));
    let mut pixels = vec![0f32; chw.len()];
    img::normalize_chw(&chw, &mut pixels);
    Ok(Decoded {
        path: path.to_path_buf(),
        pixels,
        image,
    })
}

pub fn run(args: CaptionArgs) -> Result<ExitCode> {
    let model = args.source.load()?;
    let opts = args.beam_options();
    if let Some(dir) = &args.attention_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut failed = 0usize;
    let stdout = std::io::stdout();
    for chunk in args.images.chunks(args.batch_size.max(1)) {
        let decoded: Vec<Result<Decoded, _>> = chunk.par_iter().map(|p| decode(p)).collect();
        let mut good = Vec::with_capacity(decoded.len());
        for d in decoded {
            match d {
                Ok(d) => good.push(d),
                Err(e) => {
                    eprintln!("error: {e}");
                    failed += 1;
                }
            }
        }
        if good.is_empty() {
            continue;
        }
        let pixels: Vec<Vec<f32>> = good
            .iter_mut()
            .map(|d| std::mem::take(&mut d.pixels))
            .collect();
        let batch = images_to_tensor(&pixels, TUTORIAL_SIZE as usize, &model.device)?;
        let captions = model.caption_images(&batch, &opts)?;
        let mut out = stdout.lock();
        for (d, cap) in good.iter().zip(&captions) {
            if args.json {
                let line = serde_json::json!({
                    "path": d.path.display().to_string(),
                    "caption": cap.text,
                    "tokens": cap.words,
                    "token_ids": cap.tokens,
                    "score": cap.score,
                    "finished": cap.finished,
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}\t{}", d.path.display(), cap.text)?;
            }
            if let Some(dir) = &args.attention_dir {
                let picture = gaze::viz::attention_picture(&d.image, cap, &model.word_map);
                let stem = d
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into());
                let target = dir.join(format!("{stem}.attention.png"));
                if let Err(e) = picture.save(&target) {
                    eprintln!(
                        "error: {}: cannot write attention picture: {e}",
                        target.display()
                    );
                    failed += 1;
                }
            }
        }
        out.flush()?;
    }
    if failed > 0 {
        eprintln!("{failed} of {} image(s) failed", args.images.len());
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
