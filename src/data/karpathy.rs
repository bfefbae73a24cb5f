//! Karpathy's split JSON (`dataset_coco.json`, `dataset_flickr8k.json`, ...).
//!
//! `{"images": [{"filepath", "filename", "split", "sentences": [{"tokens", "raw"}], ...}]}`.
//! For COCO an image lives at `image_folder/filepath/filename`; for the Flickr sets (no
//! `filepath`) at `image_folder/filename`. `restval` counts as training data.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DataError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KarpathyDataset {
    pub images: Vec<KarpathyImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KarpathyImage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filepath: Option<String>,
    pub filename: String,
    pub split: String,
    pub sentences: Vec<KarpathySentence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cocoid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentids: Option<Vec<u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KarpathySentence {
    pub tokens: Vec<String>,
    #[serde(default)]
    pub raw: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentid: Option<u64>,
}

/// The three splits of the prepared files, in the tutorial's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The upper-case name used in prepared file names (`TRAIN_IMAGES_...`).
    pub fn file_tag(self) -> &'static str {
        match self {
            Split::Train => "TRAIN",
            Split::Val => "VAL",
            Split::Test => "TEST",
        }
    }

    /// Maps a Karpathy `split` value to a prepared split (`restval` is training data).
    pub fn from_karpathy(split: &str) -> Option<Split> {
        match split {
            "train" | "restval" => Some(Split::Train),
            "val" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(format!(
                "unknown split {other:?} (expected train, val or test)"
            )),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file_tag())
    }
}

impl KarpathyDataset {
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let bytes = crate::files::read_file(path).map_err(|e| DataError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl KarpathyImage {
    /// Where the image file lives under `image_folder`: `filepath/filename` when the entry has
    /// a `filepath` (COCO), otherwise `filename` (Flickr).
    pub fn path_in(&self, image_folder: &Path) -> PathBuf {
        match &self.filepath {
            Some(dir) if !dir.is_empty() => image_folder.join(dir).join(&self.filename),
            _ => image_folder.join(&self.filename),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_coco_and_flickr_entries() {
        let json = r#"{"images": [
            {"filepath": "val2014", "filename": "a.jpg", "split": "restval", "imgid": 3, "cocoid": 42,
             "sentences": [{"tokens": ["a", "dog"], "raw": "A dog.", "imgid": 3, "sentid": 7}]},
            {"filename": "b.jpg", "split": "test", "sentences": [{"tokens": ["a", "cat"], "raw": "A cat"}]}
        ], "dataset": "coco"}"#;
        let d: KarpathyDataset = serde_json::from_str(json).unwrap();
        assert_eq!(d.images.len(), 2);
        assert_eq!(
            d.images[0].path_in(Path::new("/x")),
            PathBuf::from("/x/val2014/a.jpg")
        );
        assert_eq!(
            d.images[1].path_in(Path::new("/x")),
            PathBuf::from("/x/b.jpg")
        );
        assert_eq!(Split::from_karpathy(&d.images[0].split), Some(Split::Train));
        assert_eq!(d.images[0].cocoid, Some(42));
    }
}
