//! The one-file model format, and loading plain tutorial state dicts.
//!
//! A gaze model file is a `.safetensors` file whose tensors are named as in the tutorial's
//! state dicts with an `encoder.` or `decoder.` prefix (`encoder.resnet.0.weight`,
//! `decoder.attention.full_att.bias`, ...), and whose metadata (string -> string) holds:
//! - `format`: `gaze-model`, `format_version`: `1`
//! - `config`: the [`ModelConfig`] as JSON
//! - `word_map`: the word map as JSON, in the tutorial's file layout
//! - `provenance`: free JSON (data name, epoch, metrics, parent model, ...)
//!
//! A safetensors file without that metadata is read as tutorial state dicts: the word map must
//! be given, and every dimension is inferred from the tensor shapes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{
    BlockKind, EncoderConfig, ModelConfig, DEFAULT_DROPOUT, DEFAULT_ENCODED_IMAGE_SIZE,
};
use super::encoder::resnet::{torchvision_to_tutorial, FIRST_LAYER_INDEX};
use super::error::{ModelError, Result};
use crate::data::WordMap;

/// The string map a safetensors header carries as `__metadata__`.
pub type SafetensorsMetadata = HashMap<String, String>;

pub const FORMAT_NAME: &str = "gaze-model";
pub const FORMAT_VERSION: &str = "1";

/// The contents of a model file.
pub struct ModelFile {
    pub config: ModelConfig,
    pub word_map: WordMap,
    pub provenance: Value,
    /// f32 tensors with canonical (tutorial) names.
    pub tensors: HashMap<String, Tensor>,
    /// Whether the file carried gaze metadata (false for plain state dicts).
    pub has_metadata: bool,
    /// The raw safetensors metadata (training checkpoints keep their state here too).
    pub metadata: SafetensorsMetadata,
}

/// How to read a file that may lack metadata.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A word map file; required for files without metadata, and replaces the stored one.
    pub word_map: Option<std::path::PathBuf>,
    /// The attention grid size where the file does not record it (default 14).
    pub encoded_image_size: Option<usize>,
}

/// Canonical tensor name: drops `module.` prefixes (from `nn.DataParallel`) and maps
/// torchvision ResNet names inside the encoder to the tutorial's. `None` for tensors the model
/// does not use (the ResNet classifier head).
pub fn canonical_name(name: &str) -> Option<String> {
    let name = name.replace("module.", "");
    if let Some(rest) = name.strip_prefix("encoder.") {
        if rest.starts_with("resnet.") {
            return Some(name);
        }
        if let Some(mapped) = torchvision_to_tutorial(rest) {
            return Some(format!("encoder.{mapped}"));
        }
        if rest.starts_with("fc.") || rest.starts_with("_fc.") {
            return None;
        }
        if rest.starts_with('_') {
            // lukemelas EfficientNet names (`_conv_stem.weight`, `_blocks.0...`).
            return Some(format!(
                "encoder.{}.{rest}",
                super::encoder::efficientnet::PREFIX
            ));
        }
    }
    Some(name)
}

/// Reads every float tensor of a safetensors buffer as f32, under its canonical name.
/// Integer tensors (BatchNorm's `num_batches_tracked`) are dropped.
pub fn tensors_from_safetensors(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, Option<SafetensorsMetadata>)> {
    let bad = |reason: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        use safetensors::Dtype as S;
        if !matches!(view.dtype(), S::F32 | S::F16 | S::BF16 | S::F64) {
            continue;
        }
        let Some(canon) = canonical_name(&name) else {
            continue;
        };
        let t = view
            .load(device)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        out.insert(canon, t.to_dtype(DType::F32)?);
    }
    Ok((out, meta.metadata().clone()))
}

/// Reads a model file (or a plain state-dict safetensors with `opts.word_map`).
pub fn read_model_file(path: &Path, opts: &LoadOptions, device: &Device) -> Result<ModelFile> {
    let bytes = crate::files::read_file(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (tensors, meta) = tensors_from_safetensors(&bytes, path, device)?;
    let meta: SafetensorsMetadata = meta.unwrap_or_default();
    let meta_err = |reason: String| ModelError::Metadata {
        path: path.to_path_buf(),
        reason,
    };

    let stored_word_map = match meta.get("word_map") {
        Some(s) => Some(WordMap::from_json_bytes(s.as_bytes(), path)?),
        None => None,
    };
    let word_map = match (&opts.word_map, stored_word_map) {
        (Some(wm_path), _) => WordMap::load(wm_path)?,
        (None, Some(wm)) => wm,
        (None, None) => {
            return Err(meta_err(
                "it holds no word map (a plain state dict?): pass the tutorial's WORDMAP_*.json with --word-map".into(),
            ))
        }
    };
    let has_metadata = meta.get("format").map(String::as_str) == Some(FORMAT_NAME);
    if has_metadata {
        let version = meta
            .get("format_version")
            .map(String::as_str)
            .unwrap_or("?");
        if version != FORMAT_VERSION {
            return Err(meta_err(format!(
                "format version {version} is not supported (this gaze reads version {FORMAT_VERSION})"
            )));
        }
    }
    let config = match meta.get("config") {
        Some(s) => {
            let mut cfg: ModelConfig =
                serde_json::from_str(s).map_err(|e| meta_err(format!("config: {e}")))?;
            if let Some(size) = opts.encoded_image_size {
                cfg.encoded_image_size = size;
            }
            cfg
        }
        None => {
            if let (Some(wm_path), Some(rows)) = (
                &opts.word_map,
                tensors
                    .get("decoder.embedding.weight")
                    .and_then(|t| t.dims().first().copied()),
            ) {
                if rows != word_map.len() {
                    return Err(ModelError::Config(format!(
                        "{}: the model has a vocabulary of {rows} words but the word map {} has {}: wrong word map?",
                        path.display(),
                        wm_path.display(),
                        word_map.len()
                    )));
                }
            }
            infer_config(&tensors, word_map.len(), opts.encoded_image_size, path)?
        }
    };
    if config.vocab_size != word_map.len() {
        let which = match &opts.word_map {
            Some(wm_path) => format!("the word map {}", wm_path.display()),
            None => "its word map".to_string(),
        };
        return Err(ModelError::Config(format!(
            "{}: the model has a vocabulary of {} words but {which} has {}",
            path.display(),
            config.vocab_size,
            word_map.len()
        )));
    }
    let provenance = match meta.get("provenance") {
        Some(s) => serde_json::from_str(s).map_err(|e| meta_err(format!("provenance: {e}")))?,
        None => Value::Object(Default::default()),
    };
    Ok(ModelFile {
        config,
        word_map,
        provenance,
        tensors,
        has_metadata,
        metadata: meta,
    })
}

fn shape_of<'a>(
    tensors: &'a HashMap<String, Tensor>,
    name: &str,
    path: &Path,
) -> Result<&'a [usize]> {
    tensors
        .get(name)
        .map(|t| t.dims())
        .ok_or_else(|| ModelError::Architecture {
            path: path.to_path_buf(),
            reason: format!("tensor {name} is missing"),
        })
}

/// Works out the architecture from tensor shapes (for files without metadata).
pub fn infer_config(
    tensors: &HashMap<String, Tensor>,
    word_map_len: usize,
    encoded_image_size: Option<usize>,
    path: &Path,
) -> Result<ModelConfig> {
    let arch = |reason: String| ModelError::Architecture {
        path: path.to_path_buf(),
        reason,
    };
    let encoder = if tensors.contains_key("encoder.efficientnet._conv_stem.weight") {
        EncoderConfig::EfficientnetLite0
    } else {
        infer_resnet(tensors, path)?
    };
    let embedding = shape_of(tensors, "decoder.embedding.weight", path)?;
    let weight_hh = shape_of(tensors, "decoder.decode_step.weight_hh", path)?;
    let encoder_att = shape_of(tensors, "decoder.attention.encoder_att.weight", path)?;
    if embedding.len() != 2 || weight_hh.len() != 2 || encoder_att.len() != 2 {
        return Err(arch("decoder tensors are not matrices".into()));
    }
    let vocab_size = embedding[0];
    if vocab_size != word_map_len {
        return Err(arch(format!(
            "decoder.embedding.weight has {vocab_size} rows but the word map has {word_map_len} words: wrong word map?"
        )));
    }
    Ok(ModelConfig {
        encoder,
        encoded_image_size: encoded_image_size.unwrap_or(DEFAULT_ENCODED_IMAGE_SIZE),
        attention_dim: encoder_att[0],
        embed_dim: embedding[1],
        decoder_dim: weight_hh[1],
        vocab_size,
        dropout: DEFAULT_DROPOUT,
    })
}

/// A ResNet's block type, stage depths and width from its tensor shapes.
fn infer_resnet(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<EncoderConfig> {
    let arch = |reason: String| ModelError::Architecture {
        path: path.to_path_buf(),
        reason,
    };
    let conv1 = shape_of(tensors, "encoder.resnet.0.weight", path)?;
    if conv1.len() != 4 {
        return Err(arch(format!(
            "encoder.resnet.0.weight has shape {conv1:?}, expected a 4-d convolution"
        )));
    }
    let width = conv1[0];
    let block = if tensors.contains_key(&format!(
        "encoder.resnet.{FIRST_LAYER_INDEX}.0.conv3.weight"
    )) {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    let mut layers = [0usize; 4];
    for (stage, count) in layers.iter_mut().enumerate() {
        while tensors.contains_key(&format!(
            "encoder.resnet.{}.{}.conv1.weight",
            FIRST_LAYER_INDEX + stage,
            *count
        )) {
            *count += 1;
        }
        if *count == 0 {
            return Err(arch(format!(
                "no blocks found for layer{} (encoder.resnet.{}.0.conv1.weight)",
                stage + 1,
                FIRST_LAYER_INDEX + stage
            )));
        }
    }
    Ok(EncoderConfig::Resnet {
        block,
        layers,
        width,
    })
}

/// Writes a model file atomically (temporary name in the same folder, then rename).
pub fn write_model_file(
    path: &Path,
    tensors: &[(String, Tensor)],
    config: &ModelConfig,
    word_map: &WordMap,
    provenance: &Value,
) -> Result<()> {
    write_model_file_with(
        path,
        tensors,
        config,
        word_map,
        provenance,
        SafetensorsMetadata::new(),
    )
}

/// [`write_model_file`] with extra metadata entries (e.g. a training checkpoint's state).
pub fn write_model_file_with(
    path: &Path,
    tensors: &[(String, Tensor)],
    config: &ModelConfig,
    word_map: &WordMap,
    provenance: &Value,
    extra: SafetensorsMetadata,
) -> Result<()> {
    let mut meta = extra;
    meta.insert("format".to_string(), FORMAT_NAME.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert(
        "config".to_string(),
        serde_json::to_string(config).expect("config serialises"),
    );
    meta.insert("word_map".to_string(), word_map.to_json_string());
    meta.insert("provenance".to_string(), provenance.to_string());
    write_safetensors(path, tensors, Some(meta))
}

/// Writes tensors (made contiguous f32 on the CPU) to a safetensors file atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    meta: Option<HashMap<String, String>>,
) -> Result<()> {
    let io = |source: std::io::Error| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        cpu.push((
            name.clone(),
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .contiguous()?,
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".safetensors")
        .tempfile_in(dir)
        .map_err(io)?;
    let bytes =
        safetensors::serialize(cpu.iter().map(|(n, t)| (n.as_str(), t)), meta).map_err(|e| {
            ModelError::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    std::fs::write(tmp.path(), &bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    // Temporary files are created private; a model file is meant to be shared.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("module.encoder.resnet.4.0.conv1.weight").unwrap(),
            "encoder.resnet.4.0.conv1.weight"
        );
        assert_eq!(
            canonical_name("encoder.layer1.0.conv1.weight").unwrap(),
            "encoder.resnet.4.0.conv1.weight"
        );
        assert_eq!(
            canonical_name("encoder.conv1.weight").unwrap(),
            "encoder.resnet.0.weight"
        );
        assert_eq!(canonical_name("encoder.fc.weight"), None);
        assert_eq!(
            canonical_name("decoder.module.fc.bias").unwrap(),
            "decoder.fc.bias"
        );
    }
}
