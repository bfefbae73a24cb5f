//! Captions one image with the library API: load a model file, preprocess the image the way
//! training did (256x256, ImageNet normalisation), run batched beam search on a batch of one.
//!
//!     cargo run --release --example caption_one -- MODEL.safetensors IMAGE [BEAM_SIZE]
//!
//! (`gaze demo` writes a model file; `gaze import` converts the tutorial's checkpoint.)

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use gaze::data::image::{load_normalized, DecodeOptions};
use gaze::model::beam::BeamOptions;
use gaze::model::file::LoadOptions;
use gaze::model::CaptionModel;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_path, image_path) = match args.as_slice() {
        [m, i] | [m, i, _] => (PathBuf::from(m), PathBuf::from(i)),
        _ => bail!("usage: caption_one MODEL.safetensors IMAGE [BEAM_SIZE]"),
    };
    let beam_size: usize = match args.get(2) {
        Some(k) => k.parse().context("BEAM_SIZE must be a whole number")?,
        None => 3,
    };

    let device = Device::Cpu;
    let model = CaptionModel::load(&model_path, &LoadOptions::default(), &device)?;
    let (pixels, width, height) = load_normalized(&image_path, 256, &DecodeOptions::default())?;
    let images = Tensor::from_vec(pixels, (1, 3, 256, 256), &device)?;
    let opts = BeamOptions {
        beam_size,
        ..BeamOptions::default()
    };
    let caption = model
        .caption_images(&images, &opts)?
        .into_iter()
        .next()
        .context("beam search returned no caption")?;

    println!("{} ({width}x{height})", image_path.display());
    println!("caption: {}", caption.text);
    println!("score:   {:.3} (summed log-probability)", caption.score);
    // One attention map per generated word: where the model looked when it said it.
    for (word, alphas) in caption.words.iter().zip(&caption.alphas) {
        let (peak, _) =
            alphas.iter().enumerate().fold(
                (0, f32::MIN),
                |best, (i, &a)| if a > best.1 { (i, a) } else { best },
            );
        let (row, col) = (peak / caption.grid, peak % caption.grid);
        println!(
            "  {word:<12} looked most at cell ({row}, {col}) of {0}x{0}",
            caption.grid
        );
    }
    Ok(())
}
