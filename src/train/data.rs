//! What training reads: prepared splits (images by index, encoded captions and lengths).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::data::hdf5::{ImagesFile, IMAGE_SHAPE};
use crate::data::image::normalize_chw;
use crate::data::karpathy::Split;
use crate::data::{DataError, PreparedSplit, WordMap};

/// Images of a split, read one at a time by index (never the whole file).
pub trait ImageStore: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Side of the square images (256 for the tutorial's files).
    fn side(&self) -> usize;
    /// Image `index` as `3 x side x side` bytes, CHW.
    fn read_chw(&self, index: usize, out: &mut [u8]) -> Result<(), DataError>;
}

/// One split: images, and `captions_per_image` encoded captions per image.
pub struct SplitData {
    pub images: Arc<dyn ImageStore>,
    /// Encoded captions `<start> w... <end> <pad>...`, caption i belonging to image i / cpi.
    pub captions: Vec<Vec<u32>>,
    /// Lengths including `<start>` and `<end>`.
    pub lengths: Vec<usize>,
    pub captions_per_image: usize,
}

pub struct TrainData {
    pub word_map: WordMap,
    pub train: SplitData,
    pub val: SplitData,
    /// The prepared files' base name (e.g. `coco_5_cap_per_img_5_min_word_freq`).
    pub data_name: String,
}

/// The tutorial's HDF5 images file, read by positioned reads (safe from many threads).
impl ImageStore for ImagesFile {
    fn len(&self) -> usize {
        ImagesFile::len(self)
    }
    fn side(&self) -> usize {
        IMAGE_SHAPE[1] as usize
    }
    fn read_chw(&self, index: usize, out: &mut [u8]) -> Result<(), DataError> {
        Ok(self.read_image_into(index, out)?)
    }
}

impl TrainData {
    /// Opens and checks the train and val splits of the prepared set `base` in `folder` (the
    /// tutorial's file names), sharing one word map.
    pub fn from_prepared(folder: &Path, base: &str) -> Result<Self, DataError> {
        let train = PreparedSplit::open(folder, base, Split::Train)?;
        let word_map = train.word_map().clone();
        let val =
            PreparedSplit::open_with_word_map(train.files().clone(), Split::Val, word_map.clone())?;
        Ok(TrainData {
            word_map: (*word_map).clone(),
            train: SplitData::from_prepared(train),
            val: SplitData::from_prepared(val),
            data_name: base.to_string(),
        })
    }
}

impl SplitData {
    /// Takes a checked prepared split's images and captions.
    pub fn from_prepared(split: PreparedSplit) -> Self {
        let n = split.caption_count();
        let captions = (0..n).map(|i| split.caption(i).to_vec()).collect();
        let lengths = (0..n).map(|i| split.caption_len(i) as usize).collect();
        let captions_per_image = split.captions_per_image();
        SplitData {
            images: Arc::new(split.into_images()),
            captions,
            lengths,
            captions_per_image,
        }
    }

    pub fn num_images(&self) -> usize {
        self.images.len()
    }

    /// Normalised images `(B, 3, side, side)` for the given indices, read in parallel.
    pub fn image_batch(&self, indices: &[usize], device: &Device) -> Result<Tensor, DataError> {
        let side = self.images.side();
        let plane = 3 * side * side;
        let mut out = vec![0f32; indices.len() * plane];
        out.par_chunks_mut(plane)
            .zip(indices.par_iter())
            .try_for_each(|(dst, &i)| {
                let mut bytes = vec![0u8; plane];
                self.images.read_chw(i, &mut bytes)?;
                normalize_chw(&bytes, dst);
                Ok::<_, DataError>(())
            })?;
        Tensor::from_vec(out, (indices.len(), 3, side, side), device)
            .map_err(|e| DataError::format("<image batch>", e.to_string()))
    }

    /// Captions `(B, L)` u32 and lengths for caption indices.
    pub fn caption_batch(
        &self,
        indices: &[usize],
        device: &Device,
    ) -> candle_core::Result<(Tensor, Vec<usize>)> {
        let l = self.captions.first().map(Vec::len).unwrap_or(0);
        let mut flat = Vec::with_capacity(indices.len() * l);
        for &i in indices {
            flat.extend_from_slice(&self.captions[i]);
        }
        let lengths = indices.iter().map(|&i| self.lengths[i]).collect();
        Ok((Tensor::from_vec(flat, (indices.len(), l), device)?, lengths))
    }

    /// Reference captions of image `image` as word ids with `<start>`, `<end>`, `<pad>` removed
    /// (`<unk>` kept, as the tutorial scores).
    pub fn references(&self, image: usize, word_map: &WordMap) -> Vec<Vec<u32>> {
        let cpi = self.captions_per_image;
        (image * cpi..(image + 1) * cpi)
            .map(|c| {
                self.captions[c]
                    .iter()
                    .copied()
                    .filter(|&t| !word_map.is_special(t))
                    .collect()
            })
            .collect()
    }

    /// Checks counts and ids against the word map; `what` names the split in messages.
    pub fn validate(&self, word_map: &WordMap, what: &str) -> Result<(), String> {
        let n = self.num_images();
        if self.captions_per_image == 0 {
            return Err(format!("{what}: captions_per_image is 0"));
        }
        if self.captions.len() != n * self.captions_per_image {
            return Err(format!(
                "{what}: {} captions for {n} images x {} captions per image",
                self.captions.len(),
                self.captions_per_image
            ));
        }
        if self.lengths.len() != self.captions.len() {
            return Err(format!(
                "{what}: {} caption lengths for {} captions",
                self.lengths.len(),
                self.captions.len()
            ));
        }
        let vocab = word_map.len() as u32;
        for (i, (cap, &len)) in self.captions.iter().zip(&self.lengths).enumerate() {
            if len < 2 || len > cap.len() {
                return Err(format!(
                    "{what}: caption {i} has length {len} but {} slots",
                    cap.len()
                ));
            }
            if let Some(&bad) = cap.iter().find(|&&t| t >= vocab) {
                return Err(format!(
                    "{what}: caption {i} uses word id {bad}, outside the word map's {vocab} words (wrong word map?)"
                ));
            }
        }
        Ok(())
    }
}
