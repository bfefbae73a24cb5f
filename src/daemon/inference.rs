//! The inference worker: runs batched beam search on each batch with the current model.
//!
//! The model sits behind an `Arc` with its database id. Before each batch the worker looks in
//! a swap slot ([`ModelSwap`]); a model promoted there (by scheduled retraining, say) is used
//! from the next batch on, while the batch being captioned finishes on the old one. Every
//! result names the model that produced it.
//!
//! Content already captioned by the current model (the same bytes under another name, or a
//! file touched without changing) is not run again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::models::ActiveModel;
use super::msg::{Answer, BatchResult, Decoded, ItemResult, Outcome, StoredCaption, WriterMsg};
use super::DaemonError;
use crate::config::Recaption;
use crate::data::image::TUTORIAL_SIZE;
use crate::model::encoder::images_to_tensor;
use crate::model::{BeamOptions, Caption};
use crate::store::BoxedStore;
use crate::telemetry::{FailureKind, Telemetry};

/// The slot through which a new model is promoted into a running daemon.
#[derive(Clone, Default)]
pub struct ModelSwap(Arc<Mutex<Option<(ActiveModel, Recaption)>>>);

impl ModelSwap {
    /// Makes `model` the one used from the next batch on. Register it first with
    /// [`register_model`](super::register_model) (from any connection), so its id is known.
    pub fn promote(&self, model: ActiveModel) {
        self.promote_with(model, Recaption::None);
    }

    /// [`ModelSwap::promote`], then queues stored images again for the new model as `recaption`
    /// says, once the batches captioned by the old model have committed.
    pub fn promote_with(&self, model: ActiveModel, recaption: Recaption) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((model, recaption));
    }

    fn take(&self) -> Option<(ActiveModel, Recaption)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How long the idle worker waits before looking in the swap slot again.
const SWAP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) struct Worker {
    rx: Receiver<Vec<Decoded>>,
    tx: Sender<WriterMsg>,
    current: ActiveModel,
    swap: ModelSwap,
    /// The configured search (bad endings not yet resolved).
    beam: BeamOptions,
    bad_ending_words: Vec<String>,
    /// `beam` for the current model: its bad endings as that model's word ids.
    search: BeamOptions,
    /// A read-only store, to skip content the current model has captioned already.
    db: BoxedStore,
    telemetry: Arc<Telemetry>,
}

/// `beam` with `bad_ending_words` as ids of `model`'s word map.
fn search_for(model: &ActiveModel, beam: &BeamOptions, bad_ending_words: &[String]) -> BeamOptions {
    let (ids, missing) = crate::model::beam::word_ids(&model.model.word_map, bad_ending_words);
    if !missing.is_empty() {
        tracing::warn!(
            model = %model.name,
            words = ?missing,
            "model.bad_ending_words: not in the model's word map, ignored"
        );
    }
    BeamOptions {
        bad_endings: ids,
        ..beam.clone()
    }
}

impl Worker {
    pub fn new(
        rx: Receiver<Vec<Decoded>>,
        tx: Sender<WriterMsg>,
        current: ActiveModel,
        swap: ModelSwap,
        opts: &super::DaemonOptions,
        db: BoxedStore,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let search = search_for(&current, &opts.beam, &opts.bad_ending_words);
        telemetry.set_active_model(current.id, &current.name);
        Worker {
            rx,
            tx,
            current,
            swap,
            beam: opts.beam.clone(),
            bad_ending_words: opts.bad_ending_words.clone(),
            search,
            db,
            telemetry,
        }
    }

    pub fn run(mut self) -> Result<(), DaemonError> {
        loop {
            // Wake now and then while idle, so a promoted model is taken (and its recaption
            // queued) without waiting for the next image.
            let batch = match self.rx.recv_timeout(SWAP_POLL) {
                Ok(batch) => Some(batch),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            if let Some((next, recaption)) = self.swap.take() {
                tracing::info!(
                    from = %self.current.name,
                    to = %next.name,
                    model_id = next.id,
                    "model swapped; later batches use the new model"
                );
                self.current = next;
                self.telemetry
                    .set_active_model(self.current.id, &self.current.name);
                self.search = search_for(&self.current, &self.beam, &self.bad_ending_words);
                // Behind every batch of the old model on the writer's queue.
                let msg = WriterMsg::Swapped {
                    model_id: self.current.id,
                    recaption,
                };
                if self.tx.send(msg).is_err() {
                    break;
                }
            }
            let Some(batch) = batch else { continue };
            let Some(result) = self.caption_batch(batch) else {
                continue;
            };
            if self.tx.send(WriterMsg::Batch(result)).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn caption_batch(&self, mut batch: Vec<Decoded>) -> Option<BatchResult> {
        let started = Instant::now();
        let model_id = self.current.id;
        // Which images need the model, by beam size: every upload (its client waits for a
        // caption), and the first watched file of each content not captioned yet.
        let mut seen = HashSet::new();
        let mut runs: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut stored_before = vec![false; batch.len()];
        for (i, d) in batch.iter().enumerate() {
            if let Some(reply) = &d.reply {
                let beam = reply.beam_size.unwrap_or(self.search.beam_size);
                runs.entry(beam).or_default().push(i);
                continue;
            }
            if !seen.insert(d.hash.clone()) {
                continue;
            }
            stored_before[i] = self.db.caption_exists(&d.hash, model_id).unwrap_or(false);
            if !stored_before[i] {
                runs.entry(self.search.beam_size).or_default().push(i);
            }
        }
        let mut by_index: Vec<Option<Outcome>> = (0..batch.len()).map(|_| None).collect();
        let ran: usize = runs.values().map(Vec::len).sum();
        for (beam_size, run) in runs {
            let search = BeamOptions {
                beam_size,
                groups: self.search.groups.min(beam_size),
                ..self.search.clone()
            };
            let pixels: Vec<Vec<f32>> = run
                .iter()
                .map(|&i| std::mem::take(&mut batch[i].pixels))
                .collect();
            let model = &self.current.model;
            let captions = images_to_tensor(&pixels, TUTORIAL_SIZE as usize, &model.device)
                .map_err(|e| e.to_string())
                .and_then(|t| model.caption_images(&t, &search).map_err(|e| e.to_string()));
            match captions {
                Ok(caps) => {
                    for (&i, cap) in run.iter().zip(caps) {
                        by_index[i] = Some(Outcome::Captioned(self.stored(cap, beam_size)));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, images = run.len(), "captioning a batch failed");
                    for &i in &run {
                        by_index[i] = Some(Outcome::Failed(format!("captioning failed: {e}")));
                    }
                }
            }
        }
        // A watched file repeating content whose caption failed in this batch failed with it.
        let mut failed: HashMap<String, String> = HashMap::new();
        for (d, o) in batch.iter().zip(&by_index) {
            if let (None, Some(Outcome::Failed(e))) = (&d.reply, o) {
                failed.insert(d.hash.clone(), e.clone());
            }
        }
        for ((d, o), &stored) in batch.iter().zip(by_index.iter_mut()).zip(&stored_before) {
            if d.reply.is_none() && o.is_none() && !stored {
                *o = failed.get(&d.hash).cloned().map(Outcome::Failed);
            }
        }
        let infer_time = started.elapsed();
        if ran > 0 {
            self.telemetry.batch_size.observe(ran as f64);
            self.telemetry
                .inference_seconds
                .observe_duration(infer_time);
        }
        let mut items = Vec::with_capacity(batch.len());
        for (d, outcome) in batch.into_iter().zip(by_index) {
            let outcome = outcome.unwrap_or(Outcome::AlreadyCaptioned);
            if matches!(outcome, Outcome::Failed(_)) {
                self.telemetry.failed(FailureKind::Inference);
            }
            let mut reply = d.reply;
            // An upload not to be recorded is answered now and goes no further.
            if let Some(r) = reply.take_if(|r| !r.store) {
                r.send(Answer::of(&outcome, model_id, &self.current.name, None));
                continue;
            }
            items.push(ItemResult {
                job: d.job,
                hash: d.hash,
                width: d.width,
                height: d.height,
                outcome,
                reply,
            });
        }
        (!items.is_empty()).then(|| BatchResult {
            model_id,
            model_name: self.current.name.clone(),
            infer_time,
            items,
        })
    }

    fn stored(&self, cap: Caption, beam_size: usize) -> StoredCaption {
        let wm = &self.current.model.word_map;
        StoredCaption {
            tokens: cap
                .tokens
                .iter()
                .map(|&t| wm.word(t).unwrap_or("<unk>").to_string())
                .collect(),
            text: cap.text,
            token_ids: cap.tokens,
            score: cap.score,
            finished: cap.finished,
            alphas: cap.alphas,
            grid: cap.grid,
            beam_size,
        }
    }
}
