//! Held-out scoring for the promotion rule: batched beam search over the first images of a
//! prepared split, scored against its reference captions with the metrics module (the words
//! are the prepared files' tokens, so no further tokenisation is applied).
//!
//! Kept small and self-contained; both models of a run are scored the same way on the same
//! images, which is all the rule needs.

use candle_core::Tensor;
use serde::Serialize;

use crate::data::hdf5::IMAGE_BYTES;
use crate::data::image::normalize_chw;
use crate::data::karpathy::Split;
use crate::data::PreparedSplit;
use crate::metrics::CorpusMetrics;
use crate::model::{BeamOptions, CaptionModel};

/// Images captioned together.
const CHUNK: usize = 16;

/// A model's scores on a held-out split.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutScores {
    pub split: String,
    pub images: usize,
    pub beam_size: usize,
    pub corpus: CorpusMetrics,
    pub seconds: f64,
}

impl HeldOutScores {
    /// The value of a metric by its JSON key (`cider_d`, `bleu_4_coco`, ...).
    pub fn metric(&self, key: &str) -> Option<f64> {
        let value = serde_json::to_value(&self.corpus).ok()?;
        value.get(key)?.as_f64()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("scores serialise")
    }
}

/// The metric keys a promotion rule may name.
pub fn metric_names() -> Vec<&'static str> {
    vec![
        "bleu_1_nltk",
        "bleu_2_nltk",
        "bleu_3_nltk",
        "bleu_4_nltk",
        "bleu_1_coco",
        "bleu_2_coco",
        "bleu_3_coco",
        "bleu_4_coco",
        "meteor_exact_stem",
        "rouge_l",
        "cider_d",
    ]
}

/// Captions the first `max_images` images of `split` with `model` and scores them.
pub fn score_split(
    model: &CaptionModel,
    split: &PreparedSplit,
    max_images: usize,
    beam_size: usize,
) -> Result<HeldOutScores, String> {
    let started = std::time::Instant::now();
    let count = split.image_count().min(max_images);
    if count == 0 {
        return Err("the held-out split has no images".into());
    }
    let beam = BeamOptions {
        beam_size: beam_size.max(1),
        ..BeamOptions::default()
    };
    let side = crate::data::image::TUTORIAL_SIZE as usize;
    let mut hypotheses = Vec::with_capacity(count);
    let mut references = Vec::with_capacity(count);
    let mut bytes = vec![0u8; IMAGE_BYTES];
    for start in (0..count).step_by(CHUNK) {
        let ids: Vec<usize> = (start..(start + CHUNK).min(count)).collect();
        let mut pixels = vec![0f32; ids.len() * IMAGE_BYTES];
        for (k, &i) in ids.iter().enumerate() {
            split
                .read_image_into(i, &mut bytes)
                .map_err(|e| e.to_string())?;
            normalize_chw(&bytes, &mut pixels[k * IMAGE_BYTES..(k + 1) * IMAGE_BYTES]);
        }
        let images = Tensor::from_vec(pixels, (ids.len(), 3, side, side), &model.device)
            .map_err(|e| e.to_string())?;
        let captions = model
            .caption_images(&images, &beam)
            .map_err(|e| format!("captioning held-out images: {e}"))?;
        for (cap, &i) in captions.into_iter().zip(&ids) {
            hypotheses.push(cap.words.join(" "));
            references.push(
                split
                    .reference_captions(i)
                    .into_iter()
                    .map(|words| words.join(" "))
                    .collect::<Vec<String>>(),
            );
        }
    }
    let scores = crate::metrics::score_tokenized(&references, &hypotheses)
        .map_err(|e| format!("scoring the held-out split: {e}"))?;
    Ok(HeldOutScores {
        split: match split.split() {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
        .into(),
        images: count,
        beam_size: beam.beam_size,
        corpus: scores.corpus,
        seconds: started.elapsed().as_secs_f64(),
    })
}
