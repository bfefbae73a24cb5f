//! Held-out scoring for the promotion rule: both models of a run are scored by
//! [`crate::eval::evaluate`] on the same first images of a prepared split, exactly as
//! `gaze eval` would score them.

use serde::Serialize;

use crate::data::karpathy::Split;
use crate::data::PreparedSplit;
use crate::eval::{evaluate, EvalError, EvalOptions};
use crate::metrics::CorpusMetrics;
use crate::model::CaptionModel;

/// Images captioned together.
const BATCH: usize = 16;

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

/// Captions the first `max_images` images of `split` with `model` and scores them, through
/// [`crate::eval::evaluate`] as `gaze eval` does.
pub fn score_split(
    model: &CaptionModel,
    split: &PreparedSplit,
    max_images: usize,
    beam_size: usize,
) -> Result<HeldOutScores, String> {
    let started = std::time::Instant::now();
    let opts = EvalOptions {
        beam_sizes: vec![beam_size.max(1)],
        batch_size: BATCH,
        max_images: Some(max_images),
        ..EvalOptions::default()
    };
    let evaluation = evaluate(model, split, &opts, &mut |_| {}).map_err(|e| match e {
        EvalError::EmptySplit { .. } => "the held-out split has no images".to_string(),
        other => format!("scoring the held-out split: {other}"),
    })?;
    let beam = evaluation
        .beams
        .into_iter()
        .next()
        .ok_or("the evaluation returned no beam size")?;
    Ok(HeldOutScores {
        split: match split.split() {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
        .into(),
        images: evaluation.images,
        beam_size: beam.decoding.beam_size().unwrap_or(beam_size),
        corpus: beam.scores.metrics.corpus,
        seconds: started.elapsed().as_secs_f64(),
    })
}
