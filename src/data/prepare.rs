//! `gaze prepare`: Karpathy split JSON + images -> the tutorial's prepared files.
//!
//! Reproduces the tutorial's `create_input_files` exactly: word frequencies over every sentence
//! of every image; captions longer than `max_len` dropped; images left with none skipped;
//! `restval` is training data; ids for words seen more than `min_word_freq` times; one
//! Python-compatible `random.seed(seed)` before the TRAIN, VAL, TEST passes, then per image
//! `random.choice` top-ups or `random.sample` in the same order, so for the same inputs and
//! seed the caption and length files are byte-identical to the tutorial's.
//!
//! Beyond the tutorial: images decode on all cores while one thread writes them, in order,
//! straight into the HDF5 file (a bounded window of decoded images is ever held, so memory does
//! not grow with the dataset); an image that cannot be read is reported and skipped together
//! with its captions (its random draws are still made, so the other images' captions do not
//! change); outputs are written under temporary names and renamed only when all ten are
//! complete, and existing outputs are kept unless overwriting is asked for.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::hdf5::{ImagesWriter, IMAGE_BYTES};
use super::image::{decode_file, rgb_to_chw, to_rgb_resized, DecodeOptions, TUTORIAL_SIZE};
use super::karpathy::{KarpathyDataset, KarpathyImage, Split};
use super::prepared::{base_name, PreparedFiles};
use super::pyjson::ListWriter;
use super::pyrandom::PyRandom;
use super::{DataError, WordMap};

/// What to prepare. [`PrepareConfig::new`] gives the tutorial's defaults.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// `coco`, `flickr8k`, `flickr30k` or another name; used in the file names, and `coco`
    /// finds images under `filepath/filename`, the Flickr sets under `filename`.
    pub dataset: String,
    pub karpathy_json: PathBuf,
    pub image_folder: PathBuf,
    pub output_folder: PathBuf,
    pub captions_per_image: u32,
    pub min_word_freq: u32,
    /// Captions with more tokens than this are dropped (the tutorial's script passes 50).
    pub max_len: usize,
    pub seed: u64,
    /// Replace existing output files.
    pub overwrite: bool,
    /// Decoding threads; 0 means one per core.
    pub threads: usize,
    pub decode: DecodeOptions,
}

impl PrepareConfig {
    pub fn new(
        dataset: &str,
        karpathy_json: &Path,
        image_folder: &Path,
        output_folder: &Path,
    ) -> Self {
        PrepareConfig {
            dataset: dataset.to_string(),
            karpathy_json: karpathy_json.to_path_buf(),
            image_folder: image_folder.to_path_buf(),
            output_folder: output_folder.to_path_buf(),
            captions_per_image: 5,
            min_word_freq: 5,
            max_len: 50,
            seed: 123,
            overwrite: false,
            threads: 0,
            decode: DecodeOptions::default(),
        }
    }

    pub fn base_name(&self) -> String {
        base_name(&self.dataset, self.captions_per_image, self.min_word_freq)
    }

    pub fn files(&self) -> PreparedFiles {
        PreparedFiles::new(&self.output_folder, self.base_name())
    }
}

/// Receives progress while preparing; called from the writing thread only.
pub trait PrepareProgress {
    fn split_started(&self, _split: Split, _images: usize) {}
    fn image_written(&self, _split: Split) {}
    fn image_skipped(&self, _split: Split, _path: &Path, _error: &DataError) {}
    fn split_finished(&self, _split: Split, _written: usize) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl PrepareProgress for NoProgress {}

/// An image left out because it could not be read or decoded.
#[derive(Debug, Clone)]
pub struct SkippedImage {
    pub split: Split,
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct SplitReport {
    pub split: Split,
    /// Images listed for the split (after dropping those with no caption short enough).
    pub listed: usize,
    /// Images written.
    pub written: usize,
}

#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub base: String,
    pub files: Vec<PathBuf>,
    pub word_map_size: usize,
    pub splits: Vec<SplitReport>,
    /// Images in the JSON dropped because none of their captions fits `max_len`.
    pub images_without_captions: usize,
    pub skipped: Vec<SkippedImage>,
    pub elapsed: Duration,
}

impl PrepareReport {
    pub fn images_written(&self) -> usize {
        self.splits.iter().map(|s| s.written).sum()
    }
}

/// One image to write: where it is and the captions it may use.
struct Item<'a> {
    path: PathBuf,
    captions: Vec<&'a [String]>,
}

/// Runs the whole preparation. Fails before writing anything if an output exists and
/// `overwrite` is off.
pub fn prepare(
    cfg: &PrepareConfig,
    progress: &dyn PrepareProgress,
) -> Result<PrepareReport, DataError> {
    let started = Instant::now();
    let files = cfg.files();
    check_config(cfg)?;
    if !cfg.overwrite {
        if let Some(existing) = files.all().into_iter().find(|p| p.exists()) {
            return Err(DataError::Exists { path: existing });
        }
    }
    let dataset = KarpathyDataset::load(&cfg.karpathy_json)?;
    if !cfg.image_folder.is_dir() {
        return Err(DataError::format(
            &cfg.image_folder,
            "the image folder does not exist or is not a folder",
        ));
    }

    // Word frequencies over every sentence, in order of first appearance.
    let mut order: Vec<&str> = Vec::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for image in &dataset.images {
        for sentence in &image.sentences {
            for token in &sentence.tokens {
                let count = counts.entry(token.as_str()).or_insert_with(|| {
                    order.push(token.as_str());
                    0
                });
                *count += 1;
            }
        }
    }
    let word_map = WordMap::from_counts(
        order.iter().map(|w| (*w, counts[w])),
        cfg.min_word_freq as usize,
    );

    let mut per_split: BTreeMap<u8, Vec<Item>> = BTreeMap::new();
    let mut images_without_captions = 0;
    for image in &dataset.images {
        let captions: Vec<&[String]> = image
            .sentences
            .iter()
            .filter(|s| s.tokens.len() <= cfg.max_len)
            .map(|s| s.tokens.as_slice())
            .collect();
        if captions.is_empty() {
            images_without_captions += 1;
            continue;
        }
        if let Some(split) = Split::from_karpathy(&image.split) {
            let path = image_path(&cfg.dataset, &cfg.image_folder, image);
            per_split
                .entry(split_rank(split))
                .or_default()
                .push(Item { path, captions });
        }
    }

    std::fs::create_dir_all(&cfg.output_folder)
        .map_err(|e| DataError::io(&cfg.output_folder, e))?;
    let mut staged = Staged::default();
    let wm_path = staged.temp_for(&files.word_map());
    std::fs::write(&wm_path, word_map.to_json_string()).map_err(|e| DataError::io(&wm_path, e))?;

    let mut rng = PyRandom::new(cfg.seed);
    let mut skipped = Vec::new();
    let mut splits = Vec::new();
    for split in Split::ALL {
        let items = per_split.remove(&split_rank(split)).unwrap_or_default();
        progress.split_started(split, items.len());
        let outputs = SplitOutputs {
            images: staged.temp_for(&files.images(split)),
            captions: staged.temp_for(&files.captions(split)),
            caplens: staged.temp_for(&files.caplens(split)),
        };
        let written = write_split(
            cfg,
            split,
            &items,
            &word_map,
            &mut rng,
            &outputs,
            progress,
            &mut skipped,
        )?;
        progress.split_finished(split, written);
        splits.push(SplitReport {
            split,
            listed: items.len(),
            written,
        });
    }
    staged.commit()?;
    Ok(PrepareReport {
        base: files.base.clone(),
        files: files.all(),
        word_map_size: word_map.len(),
        splits,
        images_without_captions,
        skipped,
        elapsed: started.elapsed(),
    })
}

fn check_config(cfg: &PrepareConfig) -> Result<(), DataError> {
    let bad = |reason: String| DataError::format(&cfg.karpathy_json, reason);
    if cfg.dataset.is_empty() || cfg.dataset.contains(['/', '\\']) {
        return Err(bad(format!(
            "dataset name {:?} must be non-empty and contain no path separator",
            cfg.dataset
        )));
    }
    if cfg.captions_per_image == 0 {
        return Err(bad("captions per image must be at least 1".into()));
    }
    Ok(())
}

fn split_rank(split: Split) -> u8 {
    match split {
        Split::Train => 0,
        Split::Val => 1,
        Split::Test => 2,
    }
}

/// Where the tutorial looks for an image: `filepath/filename` for COCO, `filename` for the
/// Flickr sets; other datasets use `filepath` when the entry has one.
pub fn image_path(dataset: &str, image_folder: &Path, image: &KarpathyImage) -> PathBuf {
    match dataset {
        "flickr8k" | "flickr30k" => image_folder.join(&image.filename),
        _ => image.path_in(image_folder),
    }
}

/// Decodes an image file to the tutorial's 256x256 CHW bytes.
pub fn load_image_chw(path: &Path, opts: &DecodeOptions) -> Result<Vec<u8>, DataError> {
    let img = decode_file(path, opts)?;
    Ok(rgb_to_chw(&to_rgb_resized(&img, TUTORIAL_SIZE)))
}

struct SplitOutputs {
    images: PathBuf,
    captions: PathBuf,
    caplens: PathBuf,
}

/// Picks an image's captions exactly as the tutorial does.
fn choose_captions<'a>(
    rng: &mut PyRandom,
    captions: &[&'a [String]],
    k: usize,
) -> Vec<&'a [String]> {
    if captions.len() < k {
        let mut chosen = captions.to_vec();
        for _ in captions.len()..k {
            chosen.push(captions[rng.choice_index(captions.len())]);
        }
        chosen
    } else {
        rng.sample_indices(captions.len(), k)
            .into_iter()
            .map(|i| captions[i])
            .collect()
    }
}

/// `<start> ids... <end> <pad>...`, padded to `max_len + 2`.
fn encode_caption(word_map: &WordMap, tokens: &[String], max_len: usize) -> Vec<u32> {
    let unk = word_map.unk.expect("a built word map has <unk>");
    let mut ids = Vec::with_capacity(max_len + 2);
    ids.push(word_map.start);
    ids.extend(tokens.iter().map(|t| word_map.id(t).unwrap_or(unk)));
    ids.push(word_map.end);
    ids.resize(max_len + 2, word_map.pad);
    ids
}

#[allow(clippy::too_many_arguments)]
fn write_split(
    cfg: &PrepareConfig,
    split: Split,
    items: &[Item],
    word_map: &WordMap,
    rng: &mut PyRandom,
    outputs: &SplitOutputs,
    progress: &dyn PrepareProgress,
    skipped: &mut Vec<SkippedImage>,
) -> Result<usize, DataError> {
    let create = |p: &Path| {
        File::create(p)
            .map(BufWriter::new)
            .map_err(|e| DataError::io(p, e))
    };
    let mut images = ImagesWriter::create(&outputs.images, cfg.captions_per_image)?;
    let caption_io = |e| DataError::io(&outputs.captions, e);
    let caplen_io = |e| DataError::io(&outputs.caplens, e);
    let mut captions = ListWriter::new(create(&outputs.captions)?).map_err(caption_io)?;
    let mut caplens = ListWriter::new(create(&outputs.caplens)?).map_err(caplen_io)?;
    let k = cfg.captions_per_image as usize;

    decode_in_order(items, cfg, |index, decoded| {
        let item = &items[index];
        // Draw for every image, written or not, so the draws match the tutorial's sequence.
        let chosen = choose_captions(rng, &item.captions, k);
        match decoded {
            Ok(chw) => {
                images.push(&chw)?;
                for tokens in chosen {
                    captions
                        .int_list(&encode_caption(word_map, tokens, cfg.max_len))
                        .map_err(caption_io)?;
                    caplens.int(tokens.len() as u64 + 2).map_err(caplen_io)?;
                }
                progress.image_written(split);
            }
            Err(error) => {
                progress.image_skipped(split, &item.path, &error);
                skipped.push(SkippedImage {
                    split,
                    path: item.path.clone(),
                    reason: error.to_string(),
                });
            }
        }
        Ok(())
    })?;

    let written = images.finish()? as usize;
    for (list, path) in [(captions, &outputs.captions), (caplens, &outputs.caplens)] {
        let mut out = list.finish().map_err(|e| DataError::io(path, e))?;
        out.flush().map_err(|e| DataError::io(path, e))?;
        out.get_ref()
            .sync_all()
            .map_err(|e| DataError::io(path, e))?;
    }
    Ok(written)
}

/// Decodes `items` on worker threads and hands each result to `sink` in item order. At most
/// `window` images are decoded but not yet consumed, which bounds memory.
fn decode_in_order(
    items: &[Item],
    cfg: &PrepareConfig,
    mut sink: impl FnMut(usize, Result<Vec<u8>, DataError>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.threads
    };
    let window = (4 * threads).max(8);
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<usize>(window);
        let (result_tx, result_rx) =
            crossbeam_channel::bounded::<(usize, Result<Vec<u8>, DataError>)>(window);
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let result_tx = result_tx.clone();
            let decode = cfg.decode;
            scope.spawn(move || {
                for index in job_rx {
                    let result = load_image_chw(&items[index].path, &decode);
                    debug_assert!(result.as_ref().map_or(true, |b| b.len() == IMAGE_BYTES));
                    if result_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(result_tx);
        let mut next_job = 0;
        let mut pending = BTreeMap::new();
        for next_out in 0..items.len() {
            // Keep the window full; never more than `window` in flight, so sends never block.
            while next_job < items.len() && next_job < next_out + window {
                job_tx
                    .send(next_job)
                    .expect("decode workers live until the jobs channel closes");
                next_job += 1;
            }
            let decoded = loop {
                if let Some(done) = pending.remove(&next_out) {
                    break done;
                }
                let (index, result) = result_rx
                    .recv()
                    .expect("a decode worker stopped unexpectedly");
                pending.insert(index, result);
            };
            sink(next_out, decoded)?;
        }
        Ok(())
    })
}

/// Output files written under temporary names; renamed to their final names together by
/// [`Staged::commit`], removed if dropped uncommitted.
#[derive(Default)]
struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Staged {
    fn temp_for(&mut self, final_path: &Path) -> PathBuf {
        let mut name = final_path
            .file_name()
            .expect("output paths have file names")
            .to_os_string();
        name.push(".partial");
        let temp = final_path.with_file_name(name);
        self.files.push((temp.clone(), final_path.to_path_buf()));
        temp
    }

    fn commit(mut self) -> Result<(), DataError> {
        for (temp, final_path) in &self.files {
            std::fs::rename(temp, final_path).map_err(|e| DataError::io(final_path, e))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            for (temp, _) in &self.files {
                let _ = std::fs::remove_file(temp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn captions_are_encoded_and_padded_like_the_tutorial() {
        let wm = WordMap::from_counts([("a", 3), ("dog", 3), ("rare", 1)], 1);
        let ids = encode_caption(&wm, &tokens("a rare dog"), 5);
        // a=1 dog=2 <unk>=3 <start>=4 <end>=5 <pad>=0
        assert_eq!(ids, vec![4, 1, 3, 2, 5, 0, 0]);
    }

    #[test]
    fn choice_tops_up_and_sample_draws() {
        let caps = [tokens("a"), tokens("b"), tokens("c")];
        let refs: Vec<&[String]> = caps.iter().map(|c| c.as_slice()).collect();
        // random.seed(123); caps + [random.choice(caps) for _ in range(2)] -> a b c a b
        let mut rng = PyRandom::new(123);
        let chosen: Vec<&str> = choose_captions(&mut rng, &refs, 5)
            .iter()
            .map(|c| c[0].as_str())
            .collect();
        assert_eq!(chosen, ["a", "b", "c", "a", "b"]);
        // random.seed(123); random.sample(caps, k=2) -> a b
        let mut rng = PyRandom::new(123);
        let chosen: Vec<&str> = choose_captions(&mut rng, &refs, 2)
            .iter()
            .map(|c| c[0].as_str())
            .collect();
        assert_eq!(chosen, ["a", "b"]);
    }
}
