//! `gaze caption`: caption image files, optionally drawing attention pictures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use gaze::data::image::{self as img, DecodeOptions, TUTORIAL_SIZE};
use gaze::model::beam::DEFAULT_BAD_ENDINGS;
use gaze::model::sample::{image_seed, SampleOptions, Truncation};
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
    #[command(flatten)]
    pub decoding: DecodingArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print JSON lines (path, caption, tokens, token_ids, score, finished, and with
    /// --diverse-groups each group's caption, score and finished as groups) instead of
    /// `path<TAB>caption`.
    #[arg(long)]
    pub json: bool,
    /// Write one attention picture per image (PNG) into this folder.
    #[arg(long)]
    pub attention_dir: Option<PathBuf>,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Sampling instead of beam search, shared by `gaze caption` and `gaze eval`.
#[derive(Args, Debug, Clone, Default)]
pub struct SamplingArgs {
    /// Draw captions instead of searching: multinomial, top-k:K or top-p:P (with
    /// --temperature; the search options do not apply; gaze eval adds them as a row `s`)
    /// [default: off: beam search].
    #[arg(long, value_name = "METHOD")]
    pub sample: Option<Truncation>,
    /// Captions drawn per image with --sample; the most likely one is kept.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Seed of --sample: the same seed, model and images give the same captions, whatever
    /// the batch size.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampling options, when --sample is given.
    pub fn options(&self, temperature: f32, max_steps: usize) -> Result<Option<SampleOptions>> {
        if self.sample.is_some() && self.samples == 0 {
            anyhow::bail!("--samples must be at least 1");
        }
        Ok(self.sample.map(|truncation| SampleOptions {
            truncation,
            temperature,
            samples: self.samples,
            max_steps,
        }))
    }
}

/// Beam-search options shared by `gaze caption` and `gaze eval`; all off by default, so the
/// default search is the tutorial's.
#[derive(Args, Debug, Clone, Default)]
pub struct DecodingArgs {
    /// Pick the final beam by score / length^ALPHA instead of the raw score [default: off].
    #[arg(long, value_name = "ALPHA", conflicts_with = "length_penalty")]
    pub length_norm: Option<f32>,
    /// How the final beam is picked: none (raw summed log-probability), avg (per word),
    /// wu:ALPHA (score / ((5 + length) / 6)^ALPHA, Wu et al. 2016) or power:ALPHA
    /// (score / length^ALPHA) [default: none].
    #[arg(long, value_name = "PENALTY")]
    pub length_penalty: Option<LengthPenalty>,
    /// Never emit <unk> [default: off].
    #[arg(long)]
    pub forbid_unk: bool,
    /// Never repeat a trigram [default: off].
    #[arg(long)]
    pub block_trigrams: bool,
    /// Never emit the same word twice in a row [default: off].
    #[arg(long)]
    pub no_repeat: bool,
    /// Never end a caption on a word of --bad-ending-words [default: off].
    #[arg(long)]
    pub bad_endings: bool,
    /// The words a caption may not end on, with --bad-endings; words missing from the word
    /// map are ignored.
    #[arg(long, value_delimiter = ',', default_values = DEFAULT_BAD_ENDINGS)]
    pub bad_ending_words: Vec<String>,
    /// Divide the scores by T before the log-softmax (1: the model's distribution).
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    pub temperature: f32,
    /// Diverse beam search: split the beams into G groups, searched one after another at each
    /// step (at most the beam size; gaze caption --json prints every group's caption); 1 is
    /// the plain search.
    #[arg(long, value_name = "G", default_value_t = 1)]
    pub diverse_groups: usize,
    /// Diverse beam search: the log-probability a word costs a group for each earlier group
    /// that chose it at the same step.
    #[arg(long, value_name = "LAMBDA", default_value_t = 0.5)]
    pub diversity: f32,
}

impl DecodingArgs {
    /// The search options of these flags for a model with `word_map`.
    pub fn beam_options(
        &self,
        beam_size: usize,
        max_steps: usize,
        word_map: &gaze::data::WordMap,
    ) -> Result<BeamOptions> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            anyhow::bail!(
                "--temperature must be a positive number, got {}",
                self.temperature
            );
        }
        if !(self.diversity >= 0.0 && self.diversity.is_finite()) {
            anyhow::bail!(
                "--diversity must be a number of at least 0, got {}",
                self.diversity
            );
        }
        if self.diverse_groups == 0 {
            anyhow::bail!("--diverse-groups must be at least 1");
        }
        let bad_endings = if self.bad_endings {
            let (ids, missing) = gaze::model::beam::word_ids(word_map, &self.bad_ending_words);
            for w in missing {
                tracing::warn!(word = %w, "--bad-ending-words: not in the word map, ignored");
            }
            ids
        } else {
            Vec::new()
        };
        Ok(BeamOptions {
            beam_size: beam_size.max(1),
            max_steps,
            length_penalty: match (self.length_penalty, self.length_norm) {
                (Some(p), _) => p,
                (None, Some(alpha)) => LengthPenalty::Power { alpha },
                (None, None) => LengthPenalty::None,
            },
            forbid_unk: self.forbid_unk,
            block_repeated_trigrams: self.block_trigrams,
            temperature: self.temperature,
            no_repeat: self.no_repeat,
            bad_endings,
            groups: self.diverse_groups,
            diversity: self.diversity,
        })
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
    let opts = args
        .decoding
        .beam_options(args.beam_size, args.max_steps, &model.word_map)?;
    if let Some(dir) = &args.attention_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let sampling = args.sampling.options(opts.temperature, args.max_steps)?;
    let mut failed = 0usize;
    let stdout = std::io::stdout();
    let batch_size = args.batch_size.max(1);
    for (c, chunk) in args.images.chunks(batch_size).enumerate() {
        let decoded: Vec<Result<Decoded, _>> = chunk.par_iter().map(|p| decode(p)).collect();
        let mut good = Vec::with_capacity(decoded.len());
        // Each image's place in the whole list: its sampling stream.
        let mut seeds = Vec::with_capacity(decoded.len());
        for (k, d) in decoded.into_iter().enumerate() {
            match d {
                Ok(d) => {
                    good.push(d);
                    seeds.push(image_seed(args.sampling.seed, (c * batch_size + k) as u64));
                }
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
        let captions = match &sampling {
            Some(s) => model.sample_images(&batch, s, &seeds)?,
            None => model.caption_images(&batch, &opts)?,
        };
        let mut out = stdout.lock();
        for (d, cap) in good.iter().zip(&captions) {
            if args.json {
                let mut line = serde_json::json!({
                    "path": d.path.display().to_string(),
                    "caption": cap.text,
                    "tokens": cap.words,
                    "token_ids": cap.tokens,
                    "score": cap.score,
                    "finished": cap.finished,
                });
                if !cap.groups.is_empty() {
                    line["groups"] = cap
                        .groups
                        .iter()
                        .map(|g| {
                            serde_json::json!({
                                "caption": g.text,
                                "score": g.score,
                                "finished": g.finished,
                            })
                        })
                        .collect();
                }
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
