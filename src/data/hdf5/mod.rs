//! The tutorial's image files, `{SPLIT}_IMAGES_{base}.hdf5`, read and written without libhdf5.
//!
//! The tutorial stores one contiguous, uncompressed `uint8` dataset `images` of shape
//! `(N, 3, 256, 256)` in the root group, plus an integer file attribute `captions_per_image`.
//! That is a tiny corner of HDF5, so this module implements exactly that corner instead of
//! depending on the C library (which `cargo build` could not bring) or on a general pure-Rust
//! crate (none we checked both streams large writes and reads single images reliably).
//!
//! Reading accepts what h5py writes for that layout, whatever its `libver`: superblock versions
//! 0-3, version 1 and 2 object headers (checksums verified) with continuation blocks, old-style
//! groups (v1 B-tree, symbol nodes, local heap) and compact new-style groups (link messages),
//! attribute messages versions 1-3 holding any integer type (h5py writes a scalar int64), and
//! dataspace, datatype and layout message versions in use since HDF5 1.6. Chunked or filtered
//! datasets, dense link or attribute storage and external storage are refused with a clear
//! error. Only the metadata is read at open; [`ImagesFile::read_image`] reads one image with a
//! positioned read, so any number of threads can share one open file.
//!
//! Writing produces what h5py writes by default (superblock 0, version 1 object headers,
//! symbol-table root group, scalar int64 attribute, contiguous layout), with the image data
//! streamed to disk as it arrives: memory stays at one image whatever N is. The metadata, which
//! holds N, is written last into space reserved before the data.
//!
//! Every error names the file.

mod lookup3;
mod read;
mod write;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use write::ImagesWriter;

/// Name of the images dataset in the tutorial's files.
pub const DATASET_NAME: &str = "images";
/// Name of the file attribute holding the number of captions per image.
pub const CAPTIONS_PER_IMAGE_ATTR: &str = "captions_per_image";
/// Shape of one image: channels, height, width.
pub const IMAGE_SHAPE: [u64; 3] = [3, 256, 256];
/// Bytes in one image (`3 * 256 * 256`).
pub const IMAGE_BYTES: usize = 3 * 256 * 256;

/// Errors from reading or writing the tutorial's HDF5 files. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Hdf5Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an HDF5 file (no HDF5 signature found)")]
    NotHdf5 { path: PathBuf },
    #[error("{path}: truncated HDF5 file: {reason}")]
    Truncated { path: PathBuf, reason: String },
    #[error("{path}: corrupt HDF5 file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: unsupported HDF5 feature: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: not a tutorial images file: {reason}")]
    Content { path: PathBuf, reason: String },
    #[error("{path}: image index {index} is out of range (the file holds {count} images)")]
    OutOfRange {
        path: PathBuf,
        index: usize,
        count: usize,
    },
}

impl Hdf5Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Hdf5Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An open `{SPLIT}_IMAGES_*.hdf5` file whose layout has been checked: `images` is `uint8` of
/// shape `(N, 3, 256, 256)`, stored contiguously and wholly inside the file, and
/// `captions_per_image` is a positive integer.
#[derive(Debug)]
pub struct ImagesFile {
    path: PathBuf,
    file: File,
    count: usize,
    captions_per_image: u32,
    /// Absolute file offset of image 0.
    data_offset: u64,
}

impl ImagesFile {
    /// Opens the file and checks its layout; reads only metadata.
    pub fn open(path: &Path) -> Result<Self, Hdf5Error> {
        let file = crate::files::open_file(path).map_err(|e| Hdf5Error::io(path, e))?;
        let content = |reason: String| Hdf5Error::Content {
            path: path.to_path_buf(),
            reason,
        };
        let layout = read::read_layout(&file, path)?;
        let dataset = layout.dataset.ok_or_else(|| {
            content(format!(
                "it has no dataset named {DATASET_NAME:?} in its root group"
            ))
        })?;
        let dtype = dataset.dtype;
        if !(dtype.is_integer && dtype.size == 1 && !dtype.signed) {
            return Err(content(format!(
                "dataset {DATASET_NAME:?} has type {dtype}, expected uint8"
            )));
        }
        let shape = &dataset.shape;
        if shape.len() != 4 || shape[1..] != IMAGE_SHAPE {
            return Err(content(format!(
                "dataset {DATASET_NAME:?} has shape {}, expected (N, 3, 256, 256)",
                read::shape_string(shape)
            )));
        }
        let count = usize::try_from(shape[0]).map_err(|_| {
            content(format!(
                "dataset {DATASET_NAME:?} claims {} images",
                shape[0]
            ))
        })?;
        let needed = (count as u64)
            .checked_mul(IMAGE_BYTES as u64)
            .ok_or_else(|| content(format!("dataset {DATASET_NAME:?} claims {count} images")))?;
        let data_offset = match dataset.storage {
            read::Storage::Contiguous { address: Some(address), size } => {
                if size.is_some_and(|size| size < needed) {
                    return Err(Hdf5Error::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!(
                            "dataset {DATASET_NAME:?} stores {} bytes, but {count} images need {needed}",
                            size.unwrap_or(0)
                        ),
                    });
                }
                let end = address.saturating_add(needed);
                if end > layout.file_len {
                    return Err(Hdf5Error::Truncated {
                        path: path.to_path_buf(),
                        reason: format!(
                            "the image data runs to byte {end}, but the file has only {} bytes",
                            layout.file_len
                        ),
                    });
                }
                address
            }
            read::Storage::Contiguous { address: None, .. } if count == 0 => 0,
            read::Storage::Contiguous { address: None, .. } => {
                return Err(content(format!(
                    "dataset {DATASET_NAME:?} has {count} images but no storage: nothing was ever written to it"
                )))
            }
        };
        let cpi = layout.captions_per_image.ok_or_else(|| {
            content(format!(
                "the file has no {CAPTIONS_PER_IMAGE_ATTR:?} attribute"
            ))
        })?;
        let cpi = cpi.map_err(content)?;
        let captions_per_image = u32::try_from(cpi).ok().filter(|&v| v > 0).ok_or_else(|| {
            content(format!(
                "attribute {CAPTIONS_PER_IMAGE_ATTR:?} is {cpi}, expected a positive integer"
            ))
        })?;
        Ok(ImagesFile {
            path: path.to_path_buf(),
            file,
            count,
            captions_per_image,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of images, N.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The file attribute `captions_per_image`.
    pub fn captions_per_image(&self) -> u32 {
        self.captions_per_image
    }

    /// Reads image `index` as CHW bytes into `out` (length [`IMAGE_BYTES`]) with one positioned
    /// read; safe to call from many threads at once.
    pub fn read_image_into(&self, index: usize, out: &mut [u8]) -> Result<(), Hdf5Error> {
        assert_eq!(
            out.len(),
            IMAGE_BYTES,
            "read_image_into needs a buffer of IMAGE_BYTES"
        );
        self.read_images_into(index, out)
    }

    /// Reads image `index` as CHW bytes.
    pub fn read_image(&self, index: usize) -> Result<Vec<u8>, Hdf5Error> {
        let mut out = vec![0u8; IMAGE_BYTES];
        self.read_image_into(index, &mut out)?;
        Ok(out)
    }

    /// Reads `out.len() / IMAGE_BYTES` consecutive images starting at `first` in one read.
    pub fn read_images_into(&self, first: usize, out: &mut [u8]) -> Result<(), Hdf5Error> {
        assert_eq!(out.len() % IMAGE_BYTES, 0, "buffer must hold whole images");
        let n = out.len() / IMAGE_BYTES;
        if first.checked_add(n).is_none_or(|end| end > self.count) {
            let index = if first >= self.count {
                first
            } else {
                self.count
            };
            return Err(Hdf5Error::OutOfRange {
                path: self.path.clone(),
                index,
                count: self.count,
            });
        }
        let offset = self.data_offset + first as u64 * IMAGE_BYTES as u64;
        read::read_exact_at(&self.file, out, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Hdf5Error::Truncated {
                    path: self.path.clone(),
                    reason: format!("the file ended while reading images {first}..{}", first + n),
                }
            } else {
                Hdf5Error::io(&self.path, e)
            }
        })
    }
}

#[cfg(test)]
mod tests;
