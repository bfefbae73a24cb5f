//! A cache of encoder outputs for training with a frozen encoder.
//!
//! With the encoder frozen its output for an image never changes, so each image is encoded
//! once (instead of once per caption per epoch, as the tutorial does) and kept as float16,
//! in memory or, when that would be too large, in an anonymous temporary file read per batch.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Memory when it fits under the limit, else disk.
    Auto,
    Memory,
    Disk,
    /// Encode every batch (needed when fine-tuning the encoder).
    Off,
}

enum Store {
    Memory(Vec<f16>),
    Disk(File),
}

pub struct FeatureCache {
    images: usize,
    /// Values per image (pixels x channels).
    row: usize,
    pixels: usize,
    channels: usize,
    store: Store,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("feature cache in {dir}: {source}")]
    Io {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(
        "encoder output {value} for image {image} is outside float16's range (the cache stores \
         float16); encoder weights this far off (random or wrong ones?) need --feature-cache off"
    )]
    OutOfRange { image: usize, value: f32 },
}

impl FeatureCache {
    /// Bytes the cache needs for `images` images of `pixels x channels` features.
    pub fn bytes_needed(images: usize, pixels: usize, channels: usize) -> u64 {
        images as u64 * pixels as u64 * channels as u64 * 2
    }

    /// An empty cache for `images` images; `mode` is `Memory` or `Disk` (resolve `Auto` first).
    pub fn new(
        mode: CacheMode,
        images: usize,
        pixels: usize,
        channels: usize,
        dir: &Path,
    ) -> Result<Self, CacheError> {
        let row = pixels * channels;
        let store = match mode {
            CacheMode::Disk => {
                let file = tempfile::tempfile_in(dir).map_err(|source| CacheError::Io {
                    dir: dir.into(),
                    source,
                })?;
                file.set_len(images as u64 * row as u64 * 2)
                    .map_err(|source| CacheError::Io {
                        dir: dir.into(),
                        source,
                    })?;
                Store::Disk(file)
            }
            _ => Store::Memory(vec![f16::ZERO; images * row]),
        };
        Ok(FeatureCache {
            images,
            row,
            pixels,
            channels,
            store,
        })
    }

    pub fn len(&self) -> usize {
        self.images
    }

    pub fn is_empty(&self) -> bool {
        self.images == 0
    }

    pub fn in_memory(&self) -> bool {
        matches!(self.store, Store::Memory(_))
    }

    /// Stores encoder outputs (`(n, S, S, E)` or `(n, P, E)`) for images `first..first + n`.
    pub fn put(&mut self, first: usize, features: &Tensor) -> Result<(), CacheError> {
        let values: Vec<f32> = features.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        // Beyond ±65504 float16 holds infinity, which would turn the loss into NaN later.
        if let Some(k) = values
            .iter()
            .position(|v| !v.is_finite() || v.abs() > f16::MAX.to_f32())
        {
            return Err(CacheError::OutOfRange {
                image: first + k / self.row.max(1),
                value: values[k],
            });
        }
        let mut halves = vec![f16::ZERO; values.len()];
        halves.convert_from_f32_slice(&values);
        let offset = first * self.row;
        match &mut self.store {
            Store::Memory(buf) => buf[offset..offset + halves.len()].copy_from_slice(&halves),
            Store::Disk(file) => {
                let bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
                file.write_all_at(&bytes, offset as u64 * 2)
                    .map_err(|source| CacheError::Io {
                        dir: "<temporary file>".into(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Features of the given images as a `(B, P, E)` f32 tensor.
    pub fn gather(&self, indices: &[usize], device: &Device) -> Result<Tensor, CacheError> {
        let mut out = vec![0f32; indices.len() * self.row];
        let mut halves = vec![f16::ZERO; self.row];
        let mut bytes = vec![0u8; self.row * 2];
        for (k, &i) in indices.iter().enumerate() {
            let dst = &mut out[k * self.row..(k + 1) * self.row];
            match &self.store {
                Store::Memory(buf) => {
                    buf[i * self.row..(i + 1) * self.row].convert_to_f32_slice(dst)
                }
                Store::Disk(file) => {
                    file.read_exact_at(&mut bytes, (i * self.row) as u64 * 2)
                        .map_err(|source| CacheError::Io {
                            dir: "<temporary file>".into(),
                            source,
                        })?;
                    for (h, b) in halves.iter_mut().zip(bytes.chunks_exact(2)) {
                        *h = f16::from_le_bytes([b[0], b[1]]);
                    }
                    halves.convert_to_f32_slice(dst);
                }
            }
        }
        Ok(Tensor::from_vec(
            out,
            (indices.len(), self.pixels, self.channels),
            device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_disk_caches_return_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let feats = Tensor::arange(0f32, 4.0 * 3.0 * 2.0, &dev)
            .unwrap()
            .reshape((4, 3, 2))
            .unwrap();
        for mode in [CacheMode::Memory, CacheMode::Disk] {
            let mut cache = FeatureCache::new(mode, 4, 3, 2, dir.path()).unwrap();
            cache.put(0, &feats.narrow(0, 0, 2).unwrap()).unwrap();
            cache.put(2, &feats.narrow(0, 2, 2).unwrap()).unwrap();
            let got = cache.gather(&[3, 0], &dev).unwrap();
            let want: Vec<f32> = (18..24).chain(0..6).map(|v| v as f32).collect();
            assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
            assert_eq!(cache.in_memory(), mode == CacheMode::Memory);
        }
    }

    #[test]
    fn values_beyond_float16_are_refused_with_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = FeatureCache::new(CacheMode::Memory, 3, 2, 2, dir.path()).unwrap();
        let feats = Tensor::new(
            &[[[0f32, 1.0], [2.0, 3.0]], [[4.0, 1e6], [0.0, 0.0]]],
            &Device::Cpu,
        )
        .unwrap();
        match cache.put(1, &feats) {
            Err(CacheError::OutOfRange { image, value }) => assert_eq!((image, value), (2, 1e6)),
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }
}
