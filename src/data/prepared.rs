//! The tutorial's prepared data: `WORDMAP_{base}.json` and, per split,
//! `{SPLIT}_IMAGES_{base}.hdf5`, `{SPLIT}_CAPTIONS_{base}.json`, `{SPLIT}_CAPLENS_{base}.json`.
//!
//! [`PreparedSplit::open`] reads a split written by gaze or by the tutorial's own code and checks
//! everything training relies on before any of it is used: the images are `uint8`
//! `(N, 3, 256, 256)` with a `captions_per_image` attribute; there are exactly N x cpi captions
//! and lengths; every caption is padded to the same length, starts with `<start>`, has `<end>`
//! at its recorded length and only `<pad>` after it, and uses ids inside the word map. Captions
//! and lengths are held in memory (as the tutorial does; one flat array); images stay on disk
//! and are read one at a time.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};

use super::hdf5::{ImagesFile, IMAGE_BYTES};
use super::karpathy::Split;
use super::{DataError, WordMap};

/// `{dataset}_{captions_per_image}_cap_per_img_{min_word_freq}_min_word_freq`.
pub fn base_name(dataset: &str, captions_per_image: u32, min_word_freq: u32) -> String {
    format!("{dataset}_{captions_per_image}_cap_per_img_{min_word_freq}_min_word_freq")
}

/// The names of a prepared file set in `folder` with base name `base`.
#[derive(Debug, Clone)]
pub struct PreparedFiles {
    pub folder: PathBuf,
    pub base: String,
}

impl PreparedFiles {
    pub fn new(folder: impl Into<PathBuf>, base: impl Into<String>) -> Self {
        PreparedFiles {
            folder: folder.into(),
            base: base.into(),
        }
    }

    pub fn word_map(&self) -> PathBuf {
        self.folder.join(format!("WORDMAP_{}.json", self.base))
    }

    pub fn images(&self, split: Split) -> PathBuf {
        self.folder
            .join(format!("{}_IMAGES_{}.hdf5", split.file_tag(), self.base))
    }

    pub fn captions(&self, split: Split) -> PathBuf {
        self.folder
            .join(format!("{}_CAPTIONS_{}.json", split.file_tag(), self.base))
    }

    pub fn caplens(&self, split: Split) -> PathBuf {
        self.folder
            .join(format!("{}_CAPLENS_{}.json", split.file_tag(), self.base))
    }

    /// All ten files: the word map, then images, captions and lengths of TRAIN, VAL and TEST.
    pub fn all(&self) -> Vec<PathBuf> {
        let mut out = vec![self.word_map()];
        for split in Split::ALL {
            out.extend([
                self.images(split),
                self.captions(split),
                self.caplens(split),
            ]);
        }
        out
    }
}

/// One checked split of prepared data.
#[derive(Debug)]
pub struct PreparedSplit {
    split: Split,
    files: PreparedFiles,
    images: ImagesFile,
    word_map: Arc<WordMap>,
    /// All captions, each `padded_len` ids, caption i at `i * padded_len`.
    captions: Vec<u32>,
    padded_len: usize,
    lengths: Vec<u32>,
    captions_per_image: usize,
}

impl PreparedSplit {
    /// Opens and checks `split` of the prepared set `base` in `folder`, reading its word map.
    pub fn open(folder: &Path, base: &str, split: Split) -> Result<Self, DataError> {
        let files = PreparedFiles::new(folder, base);
        let word_map = Arc::new(WordMap::load(&files.word_map())?);
        Self::open_with_word_map(files, split, word_map)
    }

    /// Opens and checks a split against an already loaded word map.
    pub fn open_with_word_map(
        files: PreparedFiles,
        split: Split,
        word_map: Arc<WordMap>,
    ) -> Result<Self, DataError> {
        let images = ImagesFile::open(&files.images(split))?;
        let captions_path = files.captions(split);
        let (captions, padded_len, caption_count) = read_captions(&captions_path)?;
        let caplens_path = files.caplens(split);
        let bytes =
            crate::files::read_file(&caplens_path).map_err(|e| DataError::io(&caplens_path, e))?;
        let lengths: Vec<u32> =
            serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
                path: caplens_path.clone(),
                source,
            })?;

        let cpi = images.captions_per_image() as usize;
        let expected = images.len() * cpi;
        if caption_count != expected {
            return Err(DataError::format(
                &captions_path,
                format!(
                    "has {caption_count} captions, but {} holds {} images x {cpi} captions per image = {expected}",
                    images.path().display(),
                    images.len()
                ),
            ));
        }
        if lengths.len() != expected {
            return Err(DataError::format(
                &caplens_path,
                format!(
                    "has {} lengths, expected {expected} (one per caption)",
                    lengths.len()
                ),
            ));
        }
        let prepared = PreparedSplit {
            split,
            files,
            images,
            word_map,
            captions,
            padded_len,
            lengths,
            captions_per_image: cpi,
        };
        prepared.check_captions()?;
        Ok(prepared)
    }

    fn check_captions(&self) -> Result<(), DataError> {
        let wm = &self.word_map;
        let vocab = wm.len() as u32;
        let path = self.files.captions(self.split);
        for i in 0..self.lengths.len() {
            let caption = self.caption(i);
            let len = self.lengths[i] as usize;
            let bad = |reason: String| {
                DataError::format(
                    &path,
                    format!(
                        "caption {i} (image {}): {reason}",
                        i / self.captions_per_image
                    ),
                )
            };
            if len < 2 || len > self.padded_len {
                return Err(bad(format!(
                    "its length in {} is {len}, outside 2..={}",
                    self.files.caplens(self.split).display(),
                    self.padded_len
                )));
            }
            if let Some(&id) = caption.iter().find(|&&id| id >= vocab) {
                return Err(bad(format!(
                    "id {id} is outside the word map ({vocab} entries)"
                )));
            }
            if caption[0] != wm.start {
                return Err(bad(format!(
                    "starts with id {}, not <start> ({})",
                    caption[0], wm.start
                )));
            }
            if caption[len - 1] != wm.end {
                return Err(bad(format!(
                    "id {} at its length {len} (from {}) is not <end> ({})",
                    caption[len - 1],
                    self.files.caplens(self.split).display(),
                    wm.end
                )));
            }
            if let Some(&id) = caption[1..len - 1].iter().find(|&&id| wm.is_special(id)) {
                return Err(bad(format!("special token {id} inside the caption")));
            }
            if caption[len..].iter().any(|&id| id != wm.pad) {
                return Err(bad(format!(
                    "ids after <end> are not all <pad> ({})",
                    wm.pad
                )));
            }
        }
        Ok(())
    }

    pub fn split(&self) -> Split {
        self.split
    }

    pub fn files(&self) -> &PreparedFiles {
        &self.files
    }

    pub fn word_map(&self) -> &Arc<WordMap> {
        &self.word_map
    }

    pub fn images(&self) -> &ImagesFile {
        &self.images
    }

    /// Gives up the split, keeping its images file open.
    pub fn into_images(self) -> ImagesFile {
        self.images
    }

    /// Number of images, N.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Number of captions, N x captions per image.
    pub fn caption_count(&self) -> usize {
        self.lengths.len()
    }

    pub fn captions_per_image(&self) -> usize {
        self.captions_per_image
    }

    /// Length every caption is padded to (the tutorial's max_len + 2).
    pub fn padded_len(&self) -> usize {
        self.padded_len
    }

    /// Caption `i` with its padding.
    pub fn caption(&self, i: usize) -> &[u32] {
        &self.captions[i * self.padded_len..(i + 1) * self.padded_len]
    }

    /// Length of caption `i` including `<start>` and `<end>`.
    pub fn caption_len(&self, i: usize) -> u32 {
        self.lengths[i]
    }

    /// The image caption `i` belongs to (`i / captions_per_image`).
    pub fn image_of_caption(&self, i: usize) -> usize {
        i / self.captions_per_image
    }

    /// Indices of the captions of `image`.
    pub fn captions_of_image(&self, image: usize) -> std::ops::Range<usize> {
        image * self.captions_per_image..(image + 1) * self.captions_per_image
    }

    /// Image `index` as CHW bytes.
    pub fn read_image(&self, index: usize) -> Result<Vec<u8>, DataError> {
        Ok(self.images.read_image(index)?)
    }

    /// Image `index` as CHW bytes into `out` (length [`IMAGE_BYTES`]).
    pub fn read_image_into(&self, index: usize, out: &mut [u8]) -> Result<(), DataError> {
        debug_assert_eq!(out.len(), IMAGE_BYTES);
        Ok(self.images.read_image_into(index, out)?)
    }

    /// The word ids of every reference caption of `image`, without `<start>`, `<end>`, `<pad>`
    /// (what the tutorial scores BLEU over).
    pub fn reference_ids(&self, image: usize) -> Vec<Vec<u32>> {
        self.captions_of_image(image)
            .map(|i| {
                let len = self.lengths[i] as usize;
                self.caption(i)[1..len - 1].to_vec()
            })
            .collect()
    }

    /// Every reference caption of `image` as words (`<start>`, `<end>`, `<pad>` removed).
    pub fn reference_captions(&self, image: usize) -> Vec<Vec<String>> {
        self.reference_ids(image)
            .iter()
            .map(|ids| self.word_map.decode(ids))
            .collect()
    }
}

/// Reads a captions file into one flat array; returns it, the padded length and the count.
fn read_captions(path: &Path) -> Result<(Vec<u32>, usize, usize), DataError> {
    let bytes = crate::files::read_file(path).map_err(|e| DataError::io(path, e))?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let flat = FlatCaptions::default();
    let flat = DeserializeSeed::deserialize(flat, &mut de)
        .and_then(|flat| de.end().map(|_| flat))
        .map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((flat.ids, flat.width.unwrap_or(0), flat.count))
}

/// Deserialises `[[id, ...], ...]` into one flat vector, requiring equal inner lengths.
#[derive(Default)]
struct FlatCaptions {
    ids: Vec<u32>,
    width: Option<usize>,
    count: usize,
}

impl<'de> DeserializeSeed<'de> for FlatCaptions {
    type Value = FlatCaptions;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<FlatCaptions, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for FlatCaptions {
    type Value = FlatCaptions;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of encoded captions (lists of word ids)")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<FlatCaptions, A::Error> {
        loop {
            let before = self.ids.len();
            let pushed = seq.next_element_seed(AppendIds(&mut self.ids))?;
            if pushed.is_none() {
                return Ok(self);
            }
            let len = self.ids.len() - before;
            match self.width {
                None => self.width = Some(len),
                Some(w) if w != len => {
                    return Err(serde::de::Error::custom(format!(
                        "caption {} has {len} ids but caption 0 has {w}; all must be padded to one length",
                        self.count
                    )))
                }
                Some(_) => {}
            }
            self.count += 1;
        }
    }
}

struct AppendIds<'a>(&'a mut Vec<u32>);

impl<'de> DeserializeSeed<'de> for AppendIds<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AppendIds<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of word ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(id) = seq.next_element::<u32>()? {
            self.0.push(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_captions_require_one_padded_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("TRAIN_CAPTIONS_x.json");
        std::fs::write(&p, "[[1, 2, 3], [4, 5, 6]]").unwrap();
        let (ids, width, count) = read_captions(&p).unwrap();
        assert_eq!((ids, width, count), (vec![1, 2, 3, 4, 5, 6], 3, 2));
        std::fs::write(&p, "[[1, 2, 3], [4, 5]]").unwrap();
        let err = read_captions(&p).unwrap_err().to_string();
        assert!(
            err.contains("TRAIN_CAPTIONS_x.json") && err.contains("caption 1 has 2 ids"),
            "{err}"
        );
        std::fs::write(&p, "[[1, -2]]").unwrap();
        assert!(read_captions(&p)
            .unwrap_err()
            .to_string()
            .contains("TRAIN_CAPTIONS_x.json"));
        std::fs::write(&p, "[[1, 2]").unwrap();
        assert!(read_captions(&p).is_err());
        std::fs::write(&p, "[]").unwrap();
        assert_eq!(read_captions(&p).unwrap(), (vec![], 0, 0));
    }

    #[test]
    fn file_names_follow_the_tutorial() {
        let base = base_name("coco", 5, 5);
        assert_eq!(base, "coco_5_cap_per_img_5_min_word_freq");
        let f = PreparedFiles::new("/d", base);
        assert_eq!(
            f.word_map(),
            Path::new("/d/WORDMAP_coco_5_cap_per_img_5_min_word_freq.json")
        );
        assert_eq!(
            f.images(Split::Val),
            Path::new("/d/VAL_IMAGES_coco_5_cap_per_img_5_min_word_freq.hdf5")
        );
        assert_eq!(
            f.caplens(Split::Test),
            Path::new("/d/TEST_CAPLENS_coco_5_cap_per_img_5_min_word_freq.json")
        );
        assert_eq!(f.all().len(), 10);
    }
}
