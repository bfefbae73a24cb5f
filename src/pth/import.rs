//! Caption models from PyTorch checkpoints: the tutorial-named tensors of a checkpoint, the
//! architecture they imply, and a built [`CaptionModel`] ([`CaptionModel::from_pytorch`]) or a
//! gaze model file's contents ([`import`]).
//!
//! This lives in `pth`, not `model`: `pth` already depends on `model` (tensor names), and
//! `model` must not depend on `pth`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use super::{Checkpoint, PthError, TrainingInfo};
use crate::data::WordMap;
use crate::model::file::infer_config;
use crate::model::weights::Weights;
use crate::model::{CaptionModel, ModelConfig, ModelError};

/// Why a checkpoint could not become a model.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Pth(#[from] PthError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Checkpoint {
    /// The tutorial-named tensors and the architecture they imply: the attention grid from
    /// `grid`, else from the checkpoint; dropout from the checkpoint when it records one.
    pub fn model_parts(
        &self,
        vocab_size: usize,
        grid: Option<usize>,
        device: &Device,
    ) -> Result<(HashMap<String, Tensor>, ModelConfig), ImportError> {
        let info = self.training_info();
        let tensors = super::tutorial_tensors(self, device)?;
        let grid = grid.or(info.encoded_image_size);
        let mut config = infer_config(&tensors, vocab_size, grid, self.path())?;
        if let Some(p) = info.dropout {
            config.dropout = p as f32;
        }
        Ok((tensors, config))
    }
}

impl CaptionModel {
    /// Loads a PyTorch checkpoint (the tutorial's, in either torch format, or state dicts) as
    /// a model with `word_map`, as `gaze import` reads it, without writing a file.
    pub fn from_pytorch(
        path: &Path,
        word_map: WordMap,
        grid: Option<usize>,
        device: &Device,
    ) -> Result<Self, ImportError> {
        let checkpoint = Checkpoint::open(path)?;
        let (tensors, config) = checkpoint.model_parts(word_map.len(), grid, device)?;
        let provenance = json!({
            "file": path.display().to_string(),
            "format": format!("pytorch-{}", checkpoint.format().name()),
        });
        Ok(CaptionModel::from_parts(
            tensors, config, word_map, provenance, device, path,
        )?)
    }
}

/// A checkpoint turned into what a gaze model file holds.
pub struct Imported {
    /// The tensors the model uses, sorted by name.
    pub tensors: Vec<(String, Tensor)>,
    /// Tensors of the checkpoint that the model does not use (left out).
    pub unused: Vec<String>,
    pub config: ModelConfig,
    pub word_map: WordMap,
    /// `imported_from`: the file name, its format and what it says about its training.
    pub provenance: Value,
    pub info: TrainingInfo,
}

/// Reads the model in `checkpoint` (on the CPU), checking every tensor the architecture needs
/// by name and shape.
pub fn import(
    checkpoint: &Checkpoint,
    word_map: WordMap,
    grid: Option<usize>,
) -> Result<Imported, ImportError> {
    let path = checkpoint.path();
    let info = checkpoint.training_info();
    let device = Device::Cpu;
    let (tensors, config) = checkpoint.model_parts(word_map.len(), grid, &device)?;
    let provenance = json!({ "imported_from": imported_from(checkpoint, &info) });

    let weights = Weights::new(tensors, &device);
    // Building the model is what checks the tensors; the model itself is not needed.
    CaptionModel::build(
        &weights,
        config.clone(),
        word_map.clone(),
        provenance.clone(),
        path,
    )?;
    let unused = weights.unused();
    let mut keep: Vec<(String, Tensor)> = weights
        .into_tensors()
        .into_iter()
        .filter(|(n, _)| !unused.contains(n))
        .collect();
    keep.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Imported {
        tensors: keep,
        unused,
        config,
        word_map,
        provenance,
        info,
    })
}

/// The source file's name and format, and the training facts the checkpoint records.
fn imported_from(checkpoint: &Checkpoint, info: &TrainingInfo) -> Value {
    let file_name = checkpoint
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut source = json!({
        "file": file_name,
        "format": format!("pytorch-{}", checkpoint.format().name()),
    });
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
    source
}
