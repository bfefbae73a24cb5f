//! The dataset: the plan of every image and its captions, the Karpathy JSON, and the files
//! written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::caption::{describe, Caption};
use super::render::render;
use super::sample::{sample_scene, stream, Purpose};
use super::scene::Scene;
use super::{CAPTIONS_PER_IMAGE, DATASET_NAME, IMAGE_DIR, JSON_NAME, MAX_SIZE, MIN_SIZE};
use crate::data::karpathy::{KarpathyDataset, KarpathyImage, KarpathySentence, Split};
use crate::data::DataError;

#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Output folder; gets `dataset_synth.json` and `images/`.
    pub out_dir: PathBuf,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Image side in pixels.
    pub size: u32,
    pub seed: u64,
    /// JPEG quality, 1..=100.
    pub jpeg_quality: u8,
}

impl SynthOptions {
    /// The default dataset (2,000 / 200 / 200 images of 256x256, seed 0) in `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        SynthOptions {
            out_dir: out_dir.into(),
            train: 2000,
            val: 200,
            test: 200,
            size: 256,
            seed: 0,
            jpeg_quality: 92,
        }
    }

    fn counts(&self) -> [(Split, usize); 3] {
        [
            (Split::Train, self.train),
            (Split::Val, self.val),
            (Split::Test, self.test),
        ]
    }
}

/// One image of the dataset before rendering: what it shows and what its captions say.
#[derive(Debug, Clone)]
pub struct SynthItem {
    pub split: Split,
    /// Index within its split.
    pub index: usize,
    /// Index in the whole dataset (train, then val, then test).
    pub imgid: usize,
    pub filename: String,
    pub scene: Scene,
    pub captions: Vec<Caption>,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub json_path: PathBuf,
    pub image_dir: PathBuf,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub captions: usize,
    /// Every word used, with how many times it occurs over all captions.
    pub word_counts: BTreeMap<String, usize>,
}

impl SynthSummary {
    pub fn images(&self) -> usize {
        self.train + self.val + self.test
    }
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Val => "val",
        Split::Test => "test",
    }
}

/// Samples every scene and its captions without drawing anything (fast: tests and statistics).
pub fn plan(opts: &SynthOptions) -> Vec<SynthItem> {
    let mut items = Vec::with_capacity(opts.train + opts.val + opts.test);
    for (split, count) in opts.counts() {
        for index in 0..count {
            let scene = sample_scene(&mut stream(opts.seed, split, index, Purpose::Scene));
            let captions = describe(
                &scene,
                &mut stream(opts.seed, split, index, Purpose::Captions),
            );
            let imgid = items.len();
            let filename = format!("{}_{index:06}.jpg", split_name(split));
            items.push(SynthItem {
                split,
                index,
                imgid,
                filename,
                scene,
                captions,
            });
        }
    }
    items
}

/// The Karpathy JSON (Flickr form) for planned items.
pub fn karpathy_dataset(items: &[SynthItem]) -> KarpathyDataset {
    let images = items
        .iter()
        .map(|item| {
            let imgid = item.imgid as u64;
            let first = imgid * CAPTIONS_PER_IMAGE as u64;
            let sentences = item
                .captions
                .iter()
                .zip(first..)
                .map(|(c, sentid)| KarpathySentence {
                    tokens: c.tokens.clone(),
                    raw: c.raw.clone(),
                    imgid: Some(imgid),
                    sentid: Some(sentid),
                })
                .collect();
            KarpathyImage {
                filepath: None,
                filename: item.filename.clone(),
                split: split_name(item.split).to_string(),
                sentences,
                imgid: Some(imgid),
                cocoid: None,
                sentids: Some((first..first + item.captions.len() as u64).collect()),
            }
        })
        .collect();
    KarpathyDataset {
        images,
        dataset: Some(DATASET_NAME.to_string()),
    }
}

/// Renders and encodes one image as JPEG bytes.
pub fn encode_jpeg(
    scene: &Scene,
    size: u32,
    quality: u8,
    path: &Path,
) -> Result<Vec<u8>, DataError> {
    let image = render(scene, size);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(&image)
        .map_err(|e| DataError::format(path, format!("cannot encode JPEG: {e}")))?;
    Ok(bytes)
}

fn check_options(opts: &SynthOptions) -> Result<(), DataError> {
    let bad = |reason: String| Err(DataError::format(&opts.out_dir, reason));
    if !(MIN_SIZE..=MAX_SIZE).contains(&opts.size) {
        return bad(format!(
            "image size {} is outside {MIN_SIZE}..={MAX_SIZE}",
            opts.size
        ));
    }
    if !(1..=100).contains(&opts.jpeg_quality) {
        return bad(format!(
            "JPEG quality {} is outside 1..=100",
            opts.jpeg_quality
        ));
    }
    if opts.train + opts.val + opts.test == 0 {
        return bad("asked for no images at all".to_string());
    }
    Ok(())
}

/// Writes the dataset: images in parallel (each from its own random streams, so the bytes do
/// not depend on scheduling), then the JSON, through a temporary file so that a JSON on disk
/// always describes images that exist. Existing files of the same names are replaced.
pub fn generate(opts: &SynthOptions) -> Result<SynthSummary, DataError> {
    check_options(opts)?;
    let image_dir = opts.out_dir.join(IMAGE_DIR);
    std::fs::create_dir_all(&image_dir).map_err(|e| DataError::io(&image_dir, e))?;
    let items = plan(opts);
    items.par_iter().try_for_each(|item| {
        let path = image_dir.join(&item.filename);
        let bytes = encode_jpeg(&item.scene, opts.size, opts.jpeg_quality, &path)?;
        std::fs::write(&path, bytes).map_err(|e| DataError::io(&path, e))
    })?;

    let json_path = opts.out_dir.join(JSON_NAME);
    let dataset = karpathy_dataset(&items);
    let json = serde_json::to_vec(&dataset).map_err(|source| DataError::Json {
        path: json_path.clone(),
        source,
    })?;
    let partial = opts.out_dir.join(format!(".{JSON_NAME}.partial"));
    std::fs::write(&partial, json).map_err(|e| DataError::io(&partial, e))?;
    std::fs::rename(&partial, &json_path).map_err(|e| DataError::io(&json_path, e))?;

    let mut word_counts = BTreeMap::new();
    for caption in items.iter().flat_map(|i| &i.captions) {
        for token in &caption.tokens {
            *word_counts.entry(token.clone()).or_insert(0) += 1;
        }
    }
    Ok(SynthSummary {
        json_path,
        image_dir,
        train: opts.train,
        val: opts.val,
        test: opts.test,
        captions: items.iter().map(|i| i.captions.len()).sum(),
        word_counts,
    })
}
