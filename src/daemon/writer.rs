//! The writer: the only thread that writes the database. It commits each captioned batch in
//! one transaction (with whatever queue updates arrived just before it), and only then
//! acknowledges the committed work to admission ([`Ack`]), which frees the files' in-flight
//! slots: a file is never both done in memory and missing from disk. A committed model swap
//! is acknowledged too, so admission takes the new model's pending rows. A transaction that
//! fails is retried with backoff; if it keeps failing the daemon stops, since nothing could be
//! recorded.

use std::time::{Duration, Instant};

use super::msg::{Ack, Answer, BatchResult, Job, Outcome, WriterMsg};
use super::{Counters, DaemonError, Shutdown};
use crate::store::api::{CaptionStore, Claim, FailedImage, Leases, StoreTx};
use crate::store::captions::NewCaption;
use crate::store::query::Selection;
use crate::store::queue::ReadImage;
use crate::store::{unix_now, BoxedStore, StoreError};
use crate::telemetry::Telemetry;
use crossbeam_channel::{Receiver, Sender};

/// Small messages committed together at most.
const MAX_MESSAGES_PER_TRANSACTION: usize = 512;
const RETRIES: u32 = 5;

pub(crate) struct Writer {
    pub store: BoxedStore,
    pub rx: Receiver<WriterMsg>,
    /// To admission; unbounded, so the writer never waits on the stage that feeds it.
    pub acks: Sender<Ack>,
    pub counters: std::sync::Arc<Counters>,
    pub shutdown: Shutdown,
    /// In a `gaze worker`: whose leases the claimed images are under.
    pub leases: Option<LeaseHolder>,
    pub telemetry: std::sync::Arc<Telemetry>,
}

/// The worker whose leases fence the writer's commits, and the attempts rule for its failures.
#[derive(Debug, Clone)]
pub(crate) struct LeaseHolder {
    pub worker: String,
    pub max_attempts: u32,
}

#[derive(Default)]
struct Tally {
    requeued: usize,
    swapped: bool,
    captioned: u64,
    reused: u64,
    failed: u64,
    /// Results dropped because their lease was lost (another worker has the image now).
    fenced: u64,
}

/// The lease a leased job's verdict is recorded under.
fn claim_of(job: &Job) -> Option<Claim> {
    job.lease.map(|l| Claim {
        path: job.key.clone(),
        size: job.size as i64,
        mtime_ns: job.mtime_ns,
        token: l.token,
        attempts: l.attempts,
    })
}

/// The store's leases inside a transaction, or an error saying the store has none.
fn tx_leases<'a>(
    tx: &'a mut Box<dyn StoreTx + '_>,
    location: &str,
) -> Result<&'a mut dyn Leases, StoreError> {
    tx.leases().ok_or_else(|| StoreError::Unsupported {
        location: location.to_string(),
        what: "claimed images need a store with leases (PostgreSQL)".into(),
    })
}

impl Writer {
    pub fn run(mut self) -> Result<(), DaemonError> {
        while let Ok(first) = self.rx.recv() {
            let mut msgs = vec![first];
            if !matches!(msgs[0], WriterMsg::Batch(_)) {
                while msgs.len() < MAX_MESSAGES_PER_TRANSACTION {
                    match self.rx.try_recv() {
                        Ok(m) => {
                            let is_batch = matches!(m, WriterMsg::Batch(_));
                            msgs.push(m);
                            if is_batch {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            let result = self.apply(&mut msgs);
            if result.is_err() {
                self.telemetry.set_writer_failed();
            }
            result?;
        }
        Ok(())
    }

    /// Commits `msgs` in one transaction (retried with backoff), then acknowledges them.
    fn apply(&mut self, msgs: &mut [WriterMsg]) -> Result<(), DaemonError> {
        let started = Instant::now();
        let mut attempt = 0;
        let tally = loop {
            match commit(&mut *self.store, msgs, self.leases.as_ref()) {
                Ok(t) => break t,
                Err(e) if attempt < RETRIES => {
                    attempt += 1;
                    let pause = Duration::from_millis(500 << attempt);
                    tracing::warn!(error = %e, attempt, ?pause, "commit failed; retrying");
                    std::thread::sleep(pause);
                }
                Err(source) => {
                    self.shutdown.request();
                    return Err(DaemonError::Write {
                        db: self.store.location().into(),
                        source: Box::new(source),
                    });
                }
            }
        };
        let commit_time = started.elapsed();
        self.telemetry.commit_seconds.observe_duration(commit_time);
        self.acknowledge(msgs, &tally);
        self.report(msgs, &tally, commit_time);
        self.answer_uploads(msgs);
        Ok(())
    }

    /// Answers the clients of recorded uploads, now that their rows are durable, with the
    /// stored image's id.
    fn answer_uploads(&self, msgs: &mut [WriterMsg]) {
        for m in msgs {
            let WriterMsg::Batch(b) = m else { continue };
            for item in &mut b.items {
                let Some(reply) = item.reply.take() else {
                    continue;
                };
                let image_id = matches!(item.outcome, Outcome::Captioned(_))
                    .then(|| {
                        self.store
                            .select(&Selection::Path(item.job.key.clone()), 1)
                            .ok()
                            .and_then(|rows| rows.first().map(|r| r.image_id))
                    })
                    .flatten();
                reply.send(Answer::of(
                    &item.outcome,
                    b.model_id,
                    &b.model_name,
                    image_id,
                ));
            }
        }
    }

    /// Tells admission what is now durable. After a swap it looks for pending rows even when
    /// this commit queued nothing: whoever promoted the model may have queued its work in the
    /// promoting transaction already.
    fn acknowledge(&self, msgs: &[WriterMsg], tally: &Tally) {
        let keys: Vec<String> = msgs
            .iter()
            .flat_map(|m| m.finished_keys())
            .map(str::to_string)
            .collect();
        // Admission gone means the daemon is stopping; there is no one left to tell.
        if !keys.is_empty() {
            let _ = self.acks.send(Ack::Committed(keys));
        }
        if tally.swapped {
            let _ = self.acks.send(Ack::Swapped);
        }
    }

    fn report(&self, msgs: &[WriterMsg], tally: &Tally, commit_time: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.captioned.fetch_add(tally.captioned, Relaxed);
        self.counters.reused.fetch_add(tally.reused, Relaxed);
        self.counters.failed.fetch_add(tally.failed, Relaxed);
        if tally.fenced > 0 {
            tracing::warn!(
                images = tally.fenced,
                "results dropped: their leases ran out and other workers hold those images now"
            );
        }
        for m in msgs {
            match m {
                WriterMsg::Failed { job, error, .. } => {
                    tracing::warn!(path = %job.key, %error, "image failed")
                }
                WriterMsg::Vanished { job } => {
                    tracing::info!(path = %job.key, "image deleted before it was read")
                }
                WriterMsg::Batch(b) => log_batch(b, commit_time),
                WriterMsg::Swapped {
                    model_id,
                    recaption,
                } => tracing::info!(
                    model_id,
                    ?recaption,
                    requeued = tally.requeued,
                    "stored images queued again for the new model"
                ),
                WriterMsg::Pending { .. }
                | WriterMsg::Gone { .. }
                | WriterMsg::Skipped { .. }
                | WriterMsg::Unskipped { .. } => {}
            }
        }
    }
}

fn log_batch(b: &BatchResult, commit_time: Duration) {
    let mut failed = 0;
    for item in &b.items {
        match &item.outcome {
            Outcome::Captioned(c) => tracing::info!(
                path = %item.job.key,
                caption = %c.text,
                score = c.score,
                model = %b.model_name,
                "captioned"
            ),
            Outcome::AlreadyCaptioned => tracing::info!(
                path = %item.job.key,
                model = %b.model_name,
                "same content as an image already captioned"
            ),
            Outcome::Failed(error) => {
                failed += 1;
                tracing::warn!(path = %item.job.key, %error, "image failed")
            }
        }
    }
    let n = b.items.len();
    let seconds = (b.infer_time + commit_time).as_secs_f64().max(1e-9);
    tracing::info!(
        images = n,
        failed,
        infer_ms = b.infer_time.as_millis() as u64,
        commit_ms = commit_time.as_millis() as u64,
        images_per_s = format!("{:.1}", n as f64 / seconds),
        "batch committed"
    );
}

/// Applies the messages in one transaction.
fn commit(
    store: &mut dyn CaptionStore,
    msgs: &[WriterMsg],
    holder: Option<&LeaseHolder>,
) -> Result<Tally, StoreError> {
    let now = unix_now();
    let location = store.location();
    let mut tx = store.begin()?;
    let mut tally = Tally::default();
    for m in msgs {
        match m {
            WriterMsg::Pending {
                key,
                size,
                mtime_ns,
            } => tx.mark_pending(key, *size as i64, *mtime_ns, now)?,
            WriterMsg::Gone { key } => {
                let n = tx.mark_gone(key, now)?;
                if n > 0 {
                    tracing::info!(path = %key, images = n, "gone");
                }
            }
            WriterMsg::Vanished { job } => match (claim_of(job), holder) {
                // A worker that cannot find a file says so and gives it back: another machine
                // may see it, and only the scanner decides that a file is gone.
                (Some(claim), Some(h)) => {
                    let error = format!(
                        "worker {}: {} not found here ({})",
                        h.worker,
                        job.key,
                        job.path.display()
                    );
                    tx_leases(&mut tx, &location)?.release(&h.worker, &claim, &error, now)?;
                }
                _ => {
                    tx.mark_gone(&job.key, now)?;
                }
            },
            WriterMsg::Skipped { key, kind } => tx.mark_skipped(key, kind, now)?,
            WriterMsg::Unskipped { key } => tx.unmark_skipped(key)?,
            WriterMsg::Swapped {
                model_id,
                recaption,
            } => {
                tally.requeued += tx.requeue(*model_id, *recaption, now)?;
                tally.swapped = true;
            }
            WriterMsg::Failed { job, hash, error } => {
                tally.failed += 1;
                if let (Some(claim), Some(h)) = (claim_of(job), holder) {
                    tx_leases(&mut tx, &location)?.fail_leased(
                        &h.worker,
                        &claim,
                        error,
                        h.max_attempts,
                        now,
                    )?;
                    continue;
                }
                tx.mark_failed(
                    &FailedImage {
                        path: &job.key,
                        size: job.size as i64,
                        mtime_ns: job.mtime_ns,
                        content_hash: hash.as_deref(),
                        error,
                    },
                    now,
                )?
            }
            WriterMsg::Batch(b) => {
                for item in &b.items {
                    let claim = claim_of(&item.job);
                    if let (Some(claim), Some(h)) = (&claim, holder) {
                        // Fencing: only while this worker still holds the lease (the row stays
                        // locked until the commit), or another worker's work would be undone.
                        if !tx_leases(&mut tx, &location)?.holds(
                            &h.worker,
                            &claim.path,
                            claim.token,
                        )? {
                            tally.fenced += 1;
                            continue;
                        }
                        if let Outcome::Failed(error) = &item.outcome {
                            tally.failed += 1;
                            tx_leases(&mut tx, &location)?.fail_leased(
                                &h.worker,
                                claim,
                                error,
                                h.max_attempts,
                                now,
                            )?;
                            continue;
                        }
                    }
                    match &item.outcome {
                        Outcome::Captioned(c) => {
                            let inserted = tx.insert_caption(
                                &NewCaption {
                                    content_hash: &item.hash,
                                    model_id: b.model_id,
                                    text: &c.text,
                                    tokens: &c.tokens,
                                    token_ids: &c.token_ids,
                                    score: c.score,
                                    finished: c.finished,
                                    beam_size: c.beam_size,
                                    alphas: &c.alphas,
                                    grid: c.grid,
                                },
                                now,
                            )?;
                            if inserted.is_some() {
                                tally.captioned += 1;
                            } else {
                                tally.reused += 1;
                            }
                        }
                        Outcome::AlreadyCaptioned => tally.reused += 1,
                        Outcome::Failed(error) => {
                            tally.failed += 1;
                            tx.mark_failed(
                                &FailedImage {
                                    path: &item.job.key,
                                    size: item.job.size as i64,
                                    mtime_ns: item.job.mtime_ns,
                                    content_hash: Some(&item.hash),
                                    error,
                                },
                                now,
                            )?;
                            continue;
                        }
                    }
                    tx.mark_done(
                        &ReadImage {
                            path: &item.job.key,
                            size: item.job.size as i64,
                            mtime_ns: item.job.mtime_ns,
                            content_hash: &item.hash,
                            width: item.width,
                            height: item.height,
                        },
                        now,
                    )?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::msg::{ItemResult, Job, StoredCaption};
    use crate::store::Store;
    use crossbeam_channel::unbounded;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    fn job(key: &str) -> Job {
        Job {
            path: PathBuf::from(key),
            key: key.into(),
            size: 10,
            mtime_ns: 5,
            lease: None,
        }
    }

    fn captioned(key: &str, hash: &str) -> ItemResult {
        ItemResult {
            job: job(key),
            hash: hash.into(),
            width: 4,
            height: 3,
            outcome: Outcome::Captioned(StoredCaption {
                text: "a cat".into(),
                tokens: vec!["<start>".into(), "a".into(), "cat".into(), "<end>".into()],
                token_ids: vec![1, 2, 3, 4],
                score: -1.0,
                finished: true,
                alphas: Vec::new(),
                grid: 2,
                beam_size: 3,
            }),
            reply: None,
        }
    }

    fn batch(model_id: i64, items: Vec<ItemResult>) -> WriterMsg {
        WriterMsg::Batch(BatchResult {
            model_id,
            model_name: "m".into(),
            infer_time: Duration::ZERO,
            items,
        })
    }

    #[test]
    fn a_committed_batch_is_acknowledged_and_captions_stay_unique_per_content_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("gaze.db")).unwrap();
        let model_id = crate::store::api::Registry::register_model(
            &mut store,
            &crate::store::registry::NewModel {
                content_hash: "model-hash",
                path: "/m.safetensors",
                name: "m",
                config_json: "{}",
                provenance_json: "{}",
            },
            1.0,
        )
        .unwrap()
        .id;
        let (_tx, rx) = unbounded();
        let (acks_tx, acks) = unbounded();
        let counters = Arc::new(Counters::default());
        let mut writer = Writer {
            store: Box::new(store),
            rx,
            acks: acks_tx,
            counters: counters.clone(),
            shutdown: Shutdown::default(),
            leases: None,
            telemetry: Default::default(),
        };
        // Queue updates alone finish no file: nothing to acknowledge.
        let pending = |key: &str| WriterMsg::Pending {
            key: key.into(),
            size: 10,
            mtime_ns: 5,
        };
        writer
            .apply(&mut [pending("/a.jpg"), pending("/b.jpg")])
            .unwrap();
        assert!(acks.try_recv().is_err());
        // Two names, one content: one caption row, both images done, both acknowledged.
        let first = batch(
            model_id,
            vec![captioned("/a.jpg", "same"), captioned("/b.jpg", "same")],
        );
        writer.apply(&mut [first]).unwrap();
        assert_eq!(
            acks.try_iter().collect::<Vec<_>>(),
            [Ack::Committed(vec!["/a.jpg".into(), "/b.jpg".into()])]
        );
        // The same content again, by the same model, from a third name: still one row.
        let again = batch(model_id, vec![captioned("/c.jpg", "same")]);
        writer
            .apply(&mut [
                again,
                WriterMsg::Failed {
                    job: job("/d.jpg"),
                    hash: None,
                    error: "not an image".into(),
                },
            ])
            .unwrap();
        assert_eq!(
            acks.try_iter().collect::<Vec<_>>(),
            [Ack::Committed(vec!["/c.jpg".into(), "/d.jpg".into()])]
        );
        let status = writer.store.status(0.0).unwrap();
        assert_eq!(status.captions, 1);
        assert_eq!(
            status.by_status[1],
            (crate::store::queue::ImageStatus::Done, 3)
        );
        let c = &counters;
        assert_eq!(
            (
                c.captioned.load(Relaxed),
                c.reused.load(Relaxed),
                c.failed.load(Relaxed)
            ),
            (1, 2, 1)
        );
        // A committed swap is acknowledged, so admission reads the pending rows.
        writer
            .apply(&mut [WriterMsg::Swapped {
                model_id,
                recaption: crate::config::Recaption::None,
            }])
            .unwrap();
        assert_eq!(acks.try_iter().collect::<Vec<_>>(), [Ack::Swapped]);
    }
}
