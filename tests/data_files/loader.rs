//! Batches from a [`PreparedSplit`] in the tutorial's `CaptionDataset` order, on worker threads.
//!
//! The library's training reads its splits through `gaze::train::data`; this loader lives with
//! the tests that check the prepared files can be read back in the tutorial's order, batch by
//! batch, from several threads.
//!
//! Sampling follows the tutorial's `CaptionDataset`: for training, one sample per caption
//! (caption i with image i / captions_per_image); for validation or feature caching, one sample
//! per image. Batches are assembled on worker threads (positioned reads from the HDF5 file,
//! normalisation) and joined to the consumer by bounded channels, so up to `prefetch` batches
//! are ready before they are asked for, and memory stays at about `prefetch` batches whatever
//! the dataset size: the images file is never loaded whole.
//!
//! The order is a pure function of (seed, epoch): the shuffle is drawn up front and batches
//! are handed out by sequence number, so thread timing never changes what a batch holds or when
//! it arrives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use crossbeam_channel::{Receiver, Sender};

use gaze::data::hdf5::IMAGE_BYTES;
use gaze::data::image::normalize_chw;
use gaze::data::pyrandom::PyRandom;
use gaze::data::{DataError, PreparedSplit};

/// What one sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// One sample per caption, as the tutorial trains.
    PerCaption,
    /// One sample per image (its first caption in `captions`).
    PerImage,
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub sampling: Sampling,
    /// Shuffle the samples each epoch (otherwise they come in file order).
    pub shuffle: bool,
    pub seed: u64,
    /// Worker threads assembling batches.
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Also return every caption of each sample's image.
    pub all_captions: bool,
    /// Leave out a last batch smaller than `batch_size`.
    pub drop_last: bool,
}

impl LoaderConfig {
    /// Shuffled per-caption batches (training).
    pub fn training(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            sampling: Sampling::PerCaption,
            shuffle: true,
            seed,
            workers: default_workers(),
            prefetch: 4,
            all_captions: false,
            drop_last: false,
        }
    }

    /// Per-image batches in file order, with all captions (validation, feature caching).
    pub fn per_image(batch_size: usize) -> Self {
        LoaderConfig {
            sampling: Sampling::PerImage,
            shuffle: false,
            all_captions: true,
            ..Self::training(batch_size, 0)
        }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// One batch, on the CPU.
#[derive(Debug)]
pub struct Batch {
    /// Normalised images `(B, 3, 256, 256)` f32.
    pub images: Tensor,
    /// Encoded captions `(B, L)` u32, padded.
    pub captions: Tensor,
    /// Caption lengths including `<start>` and `<end>`.
    pub lengths: Vec<u32>,
    pub image_indices: Vec<usize>,
    pub caption_indices: Vec<usize>,
    /// Every caption of each image `(B, captions_per_image, L)` u32, when asked for.
    pub all_captions: Option<Tensor>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.image_indices.len()
    }
}

/// Makes epochs of batches from one split.
pub struct Loader {
    split: Arc<PreparedSplit>,
    config: LoaderConfig,
}

impl Loader {
    pub fn new(split: Arc<PreparedSplit>, config: LoaderConfig) -> Self {
        assert!(config.batch_size > 0, "batch size must be positive");
        Loader { split, config }
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Samples per epoch.
    pub fn sample_count(&self) -> usize {
        match self.config.sampling {
            Sampling::PerCaption => self.split.caption_count(),
            Sampling::PerImage => self.split.image_count(),
        }
    }

    /// Batches per epoch.
    pub fn batch_count(&self) -> usize {
        let n = self.sample_count();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// The sample order of `epoch` (caption or image indices).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.sample_count()).collect();
        if self.config.shuffle {
            let s = self.config.seed;
            let key = [
                s as u32,
                (s >> 32) as u32,
                epoch as u32,
                (epoch >> 32) as u32,
            ];
            PyRandom::from_key(&key).shuffle(&mut order);
        }
        order
    }

    /// The batches of `epoch`, assembled on worker threads.
    pub fn epoch(&self, epoch: u64) -> Batches {
        let order = self.order(epoch);
        let batches: Vec<Vec<usize>> = order
            .chunks(self.config.batch_size)
            .filter(|c| !self.config.drop_last || c.len() == self.config.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let prefetch = self.config.prefetch.max(1);
        let (job_tx, job_rx) = crossbeam_channel::bounded::<(usize, Vec<usize>)>(prefetch);
        let (result_tx, result_rx) = crossbeam_channel::bounded(prefetch);
        let workers = (0..self.config.workers.max(1))
            .map(|_| {
                let job_rx = job_rx.clone();
                let result_tx: Sender<(usize, Result<Batch, DataError>)> = result_tx.clone();
                let split = Arc::clone(&self.split);
                let config = self.config.clone();
                std::thread::spawn(move || {
                    for (seq, samples) in job_rx {
                        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            build_batch(&split, &config, &samples)
                        }))
                        .unwrap_or_else(|_| {
                            Err(DataError::format(
                                split.files().images(split.split()),
                                "a batch worker panicked",
                            ))
                        });
                        if result_tx.send((seq, built)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Batches {
            batches,
            job_tx: Some(job_tx),
            result_rx,
            workers,
            pending: BTreeMap::new(),
            next_submit: 0,
            next_yield: 0,
            prefetch,
        }
    }
}

/// Reads, normalises and stacks one batch.
fn build_batch(
    split: &PreparedSplit,
    config: &LoaderConfig,
    samples: &[usize],
) -> Result<Batch, DataError> {
    let b = samples.len();
    let len = split.padded_len();
    let cpi = split.captions_per_image();
    let mut pixels = vec![0f32; b * IMAGE_BYTES];
    let mut raw = vec![0u8; IMAGE_BYTES];
    let mut captions = Vec::with_capacity(b * len);
    let mut lengths = Vec::with_capacity(b);
    let mut image_indices = Vec::with_capacity(b);
    let mut caption_indices = Vec::with_capacity(b);
    let mut all = Vec::with_capacity(if config.all_captions {
        b * cpi * len
    } else {
        0
    });
    for (slot, &sample) in samples.iter().enumerate() {
        let (image, caption) = match config.sampling {
            Sampling::PerCaption => (split.image_of_caption(sample), sample),
            Sampling::PerImage => (sample, sample * cpi),
        };
        split.read_image_into(image, &mut raw)?;
        normalize_chw(
            &raw,
            &mut pixels[slot * IMAGE_BYTES..(slot + 1) * IMAGE_BYTES],
        );
        captions.extend_from_slice(split.caption(caption));
        lengths.push(split.caption_len(caption));
        image_indices.push(image);
        caption_indices.push(caption);
        if config.all_captions {
            for c in split.captions_of_image(image) {
                all.extend_from_slice(split.caption(c));
            }
        }
    }
    let device = Device::Cpu;
    Ok(Batch {
        images: Tensor::from_vec(pixels, (b, 3, 256, 256), &device)?,
        captions: Tensor::from_vec(captions, (b, len), &device)?,
        lengths,
        image_indices,
        caption_indices,
        all_captions: if config.all_captions {
            Some(Tensor::from_vec(all, (b, cpi, len), &device)?)
        } else {
            None
        },
    })
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct Batches {
    batches: Vec<Vec<usize>>,
    job_tx: Option<Sender<(usize, Vec<usize>)>>,
    result_rx: Receiver<(usize, Result<Batch, DataError>)>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Result<Batch, DataError>>,
    next_submit: usize,
    next_yield: usize,
    prefetch: usize,
}

impl Iterator for Batches {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        // At most `prefetch` batches in flight: the bounded channels never block a sender.
        let job_tx = self.job_tx.as_ref()?;
        while self.next_submit < self.batches.len()
            && self.next_submit < self.next_yield + self.prefetch
        {
            let samples = std::mem::take(&mut self.batches[self.next_submit]);
            if job_tx.send((self.next_submit, samples)).is_err() {
                break;
            }
            self.next_submit += 1;
        }
        if self.next_yield >= self.batches.len() {
            return None;
        }
        loop {
            if let Some(batch) = self.pending.remove(&self.next_yield) {
                self.next_yield += 1;
                return Some(batch);
            }
            match self.result_rx.recv() {
                Ok((seq, batch)) => {
                    self.pending.insert(seq, batch);
                }
                Err(_) => {
                    self.job_tx = None;
                    return Some(Err(DataError::Format {
                        path: "<loader>".into(),
                        reason: "the batch workers stopped before the epoch ended".into(),
                    }));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batches.len() - self.next_yield;
        (left, Some(left))
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.job_tx = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
