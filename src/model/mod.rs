//! The "Show, Attend and Tell" model: encoder, soft attention, LSTM decoder, beam search, and
//! model files.

pub mod attention;
pub mod beam;
pub mod config;
pub mod decoder;
pub mod decoder_engine;
pub mod encoder;
pub mod error;
pub mod file;
pub mod init;
pub mod sample;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

pub use beam::{BeamOptions, BeamResult, LengthPenalty, SpecialTokens};
pub use config::{BlockKind, EncoderConfig, ModelConfig};
pub use decoder::Decoder;
pub use encoder::Encoder;
pub use error::ModelError;
pub use file::{LoadOptions, ModelFile};

use crate::data::WordMap;
use error::Result;
use weights::Weights;

/// A caption for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// Token ids as beam search returns them (`<start>` ... `<end>`).
    pub tokens: Vec<u32>,
    /// The caption's words (special tokens removed).
    pub words: Vec<String>,
    /// The words joined by spaces.
    pub text: String,
    /// Summed log-probability.
    pub score: f32,
    /// One attention map per word after `<start>` (including `<end>` when finished), each
    /// `grid * grid` weights, row-major.
    pub alphas: Vec<Vec<f32>>,
    pub grid: usize,
    /// Whether the search reached `<end>` (false: the best unfinished sequence).
    pub finished: bool,
    /// With diverse beam search, each group's best caption in group order (this caption is
    /// the best of them); empty otherwise.
    pub groups: Vec<Caption>,
}

/// A loaded model: encoder, decoder and word map on one device.
pub struct CaptionModel {
    pub config: ModelConfig,
    pub word_map: WordMap,
    pub provenance: Value,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub device: Device,
    pub source: PathBuf,
}

impl CaptionModel {
    /// Loads a model file, or a plain tutorial state dict with `opts.word_map`.
    pub fn load(path: &Path, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let file = file::read_model_file(path, opts, device)?;
        Self::from_parts(
            file.tensors,
            file.config,
            file.word_map,
            file.provenance,
            device,
            path,
        )
    }

    /// Builds the model from canonical tensors, reporting every missing or mis-shaped tensor.
    pub fn from_parts(
        tensors: HashMap<String, Tensor>,
        config: ModelConfig,
        word_map: WordMap,
        provenance: Value,
        device: &Device,
        origin: &Path,
    ) -> Result<Self> {
        let weights = Weights::new(tensors, device);
        let model = Self::build(&weights, config, word_map, provenance, origin)?;
        Ok(model)
    }

    /// Builds from a [`Weights`] set (which may hold trainable `Var` tensors).
    pub fn build(
        weights: &Weights,
        config: ModelConfig,
        word_map: WordMap,
        provenance: Value,
        origin: &Path,
    ) -> Result<Self> {
        if config.vocab_size != word_map.len() {
            return Err(ModelError::Config(format!(
                "{}: vocabulary size {} does not match the word map's {} words",
                origin.display(),
                config.vocab_size,
                word_map.len()
            )));
        }
        let encoder = Encoder::load(&weights.pp("encoder"), &config);
        let decoder = Decoder::load(&weights.pp("decoder"), &config);
        weights.check(origin)?;
        Ok(CaptionModel {
            config,
            word_map,
            provenance,
            encoder,
            decoder,
            device: weights.device().clone(),
            source: origin.to_path_buf(),
        })
    }

    pub fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            start: self.word_map.start,
            end: self.word_map.end,
            unk: self.word_map.unk,
        }
    }

    /// Captions a batch of normalised images `(N, 3, H, W)`.
    pub fn caption_images(&self, images: &Tensor, opts: &BeamOptions) -> Result<Vec<Caption>> {
        let features = self.encoder.forward(images)?;
        self.caption_features(&features, opts)
    }

    /// Captions encoder outputs `(N, S, S, E)` (or `(N, S*S, E)`).
    pub fn caption_features(&self, features: &Tensor, opts: &BeamOptions) -> Result<Vec<Caption>> {
        let grid = match features.rank() {
            4 => features.dim(1)?,
            _ => (features.dim(1)? as f64).sqrt().round() as usize,
        };
        let results = beam::beam_search(&self.decoder, features, self.special_tokens(), opts)?;
        Ok(results
            .into_iter()
            .map(|r| self.to_caption(r, grid))
            .collect())
    }

    /// Captions a batch of normalised images `(N, 3, H, W)` by sampling instead of searching:
    /// `opts.samples` captions per image from `seeds[i]`'s stream, and of those the one with
    /// the highest log-probability.
    pub fn sample_images(
        &self,
        images: &Tensor,
        opts: &sample::SampleOptions,
        seeds: &[u64],
    ) -> Result<Vec<Caption>> {
        let features = self.encoder.forward(images)?;
        self.sample_features(&features, opts, seeds)
    }

    /// [`CaptionModel::sample_images`] from encoder outputs `(N, S, S, E)`.
    pub fn sample_features(
        &self,
        features: &Tensor,
        opts: &sample::SampleOptions,
        seeds: &[u64],
    ) -> Result<Vec<Caption>> {
        let grid = features.dim(1)?;
        let drawn = sample::sample_captions(
            &self.decoder,
            features,
            self.special_tokens(),
            opts,
            seeds,
            true,
        )?;
        Ok(drawn
            .into_iter()
            .filter_map(|samples| {
                // The first of equally likely samples wins.
                samples
                    .into_iter()
                    .reduce(|best, s| if s.log_prob > best.log_prob { s } else { best })
            })
            .map(|s| {
                let r = BeamResult {
                    tokens: s.tokens,
                    score: s.log_prob,
                    alphas: s.alphas,
                    finished: s.finished,
                    groups: Vec::new(),
                };
                self.to_caption(r, grid)
            })
            .collect())
    }

    fn to_caption(&self, r: BeamResult, grid: usize) -> Caption {
        let words = self.word_map.decode(&r.tokens);
        let groups = r
            .groups
            .into_iter()
            .map(|g| self.to_caption(g, grid))
            .collect();
        Caption {
            groups,
            text: words.join(" "),
            words,
            tokens: r.tokens,
            score: r.score,
            alphas: r.alphas,
            grid,
            finished: r.finished,
        }
    }
}
