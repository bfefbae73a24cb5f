//! The parity fixtures (`parity/` under a fixtures folder), read once on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::error::{ParityError, Result};
use crate::model::{CaptionModel, LoadOptions};

/// Reads a safetensors file onto `device`, naming the file when it cannot.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|source| ParityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// What PyTorch computed (`expected.safetensors`, `expected.json`) and where the model is.
pub struct Fixtures {
    root: PathBuf,
    dir: PathBuf,
    expected: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

impl Fixtures {
    /// Reads `root/parity/`; `root` may also hold `efficientnet/`.
    pub fn load(root: &Path) -> Result<Self> {
        let dir = root.join("parity");
        let expected = load_tensors(&dir.join("expected.safetensors"), &Device::Cpu)?;
        let meta_path = dir.join("expected.json");
        let text = std::fs::read(&meta_path).map_err(|source| ParityError::Io {
            path: meta_path.clone(),
            source,
        })?;
        let meta = serde_json::from_slice(&text).map_err(|source| ParityError::Json {
            path: meta_path,
            source,
        })?;
        Ok(Fixtures {
            root: root.to_path_buf(),
            dir,
            expected,
            meta,
        })
    }

    /// The folder holding `parity/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file of `parity/`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every expected tensor, on the CPU.
    pub fn expected(&self) -> &HashMap<String, Tensor> {
        &self.expected
    }

    /// `expected.json`.
    pub fn meta(&self) -> &serde_json::Value {
        &self.meta
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.expected
            .get(name)
            .ok_or_else(|| ParityError::NoTensor {
                file: self.dir.clone(),
                name: name.into(),
            })
    }

    /// An expected tensor moved to `device`.
    pub fn on(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.get(name)?.to_device(device)?)
    }

    /// The value at a JSON pointer of `expected.json`, e.g. `/train/loss`.
    pub fn json<T: serde::de::DeserializeOwned>(&self, pointer: &str) -> Result<T> {
        let v = self
            .meta
            .pointer(pointer)
            .ok_or_else(|| ParityError::NoValue(pointer.into()))?;
        serde_json::from_value(v.clone()).map_err(|source| ParityError::BadValue {
            pointer: pointer.into(),
            source,
        })
    }

    /// The parity model (`weights.safetensors`, its word map, 5x5 encoded images).
    pub fn model(&self, device: &Device) -> Result<CaptionModel> {
        let opts = LoadOptions {
            word_map: Some(self.path("WORDMAP_parity.json")),
            encoded_image_size: Some(5),
        };
        Ok(CaptionModel::load(
            &self.path("weights.safetensors"),
            &opts,
            device,
        )?)
    }
}
