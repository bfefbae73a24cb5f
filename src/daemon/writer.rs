//! The writer: the only thread that writes the database. It commits each captioned batch in
//! one transaction (with whatever queue updates arrived just before it), and only then
//! releases the batch's files from the in-flight set, so a file is never both done in memory
//! and missing from disk. A transaction that fails is retried with backoff; if it keeps
//! failing the daemon stops, since nothing could be recorded.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rusqlite::Connection;

use super::{BatchResult, Counters, DaemonError, InFlight, Outcome, Shutdown, WriterMsg};
use crate::store::registry;
use crate::store::write::{self, NewCaption, ReadImage};
use crate::store::{unix_now, Store};

/// Small messages committed together at most.
const MAX_MESSAGES_PER_TRANSACTION: usize = 512;
const RETRIES: u32 = 5;

pub(crate) struct Writer {
    pub store: Store,
    /// Set after images were queued again for a new model: the watcher rescans.
    pub rescan: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub rx: Receiver<WriterMsg>,
    pub in_flight: InFlight,
    pub counters: std::sync::Arc<Counters>,
    pub shutdown: Shutdown,
}

#[derive(Default)]
struct Tally {
    requeued: usize,
    swapped: bool,
    captioned: u64,
    reused: u64,
    failed: u64,
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
            let started = Instant::now();
            let mut attempt = 0;
            let tally = loop {
                match commit(self.store.conn_mut(), &msgs) {
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
                            db: self.store.path().to_path_buf(),
                            source,
                        });
                    }
                }
            };
            let commit_time = started.elapsed();
            // After a swap, rescan even when this commit queued nothing: whoever promoted the
            // model may have queued its work in the promoting transaction already.
            if tally.requeued > 0 || tally.swapped {
                self.rescan.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            self.release(&msgs);
            self.report(&msgs, &tally, commit_time);
        }
        Ok(())
    }

    fn release(&self, msgs: &[WriterMsg]) {
        let mut keys: Vec<&str> = Vec::new();
        for m in msgs {
            match m {
                WriterMsg::Vanished { job } | WriterMsg::Failed { job, .. } => keys.push(&job.key),
                WriterMsg::Batch(b) => keys.extend(b.items.iter().map(|i| i.job.key.as_str())),
                WriterMsg::Pending { .. }
                | WriterMsg::Gone { .. }
                | WriterMsg::Skipped { .. }
                | WriterMsg::Unskipped { .. }
                | WriterMsg::Swapped { .. } => {}
            }
        }
        self.in_flight.remove_all(keys);
    }

    fn report(&self, msgs: &[WriterMsg], tally: &Tally, commit_time: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.captioned.fetch_add(tally.captioned, Relaxed);
        self.counters.reused.fetch_add(tally.reused, Relaxed);
        self.counters.failed.fetch_add(tally.failed, Relaxed);
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
fn commit(conn: &mut Connection, msgs: &[WriterMsg]) -> rusqlite::Result<Tally> {
    let now = unix_now();
    let tx = conn.transaction()?;
    let mut tally = Tally::default();
    for m in msgs {
        match m {
            WriterMsg::Pending {
                key,
                size,
                mtime_ns,
            } => write::mark_pending(&tx, key, *size as i64, *mtime_ns, now)?,
            WriterMsg::Gone { key } => {
                let n = write::mark_gone(&tx, key, now)?;
                if n > 0 {
                    tracing::info!(path = %key, images = n, "gone");
                }
            }
            WriterMsg::Vanished { job } => {
                write::mark_gone(&tx, &job.key, now)?;
            }
            WriterMsg::Skipped { key, kind } => write::mark_skipped(&tx, key, kind, now)?,
            WriterMsg::Unskipped { key } => write::unmark_skipped(&tx, key)?,
            WriterMsg::Swapped {
                model_id,
                recaption,
            } => {
                tally.requeued += registry::requeue(&tx, *model_id, *recaption, now)?;
                tally.swapped = true;
            }
            WriterMsg::Failed { job, hash, error } => {
                tally.failed += 1;
                write::mark_failed(
                    &tx,
                    &job.key,
                    job.size as i64,
                    job.mtime_ns,
                    hash.as_deref(),
                    error,
                    now,
                )?
            }
            WriterMsg::Batch(b) => {
                for item in &b.items {
                    match &item.outcome {
                        Outcome::Captioned(c) => {
                            let inserted = write::insert_caption(
                                &tx,
                                &NewCaption {
                                    content_hash: &item.hash,
                                    model_id: b.model_id,
                                    text: &c.text,
                                    tokens: &c.tokens,
                                    token_ids: &c.token_ids,
                                    score: c.score,
                                    finished: c.finished,
                                    beam_size: b.beam_size,
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
                            write::mark_failed(
                                &tx,
                                &item.job.key,
                                item.job.size as i64,
                                item.job.mtime_ns,
                                Some(&item.hash),
                                error,
                                now,
                            )?;
                            continue;
                        }
                    }
                    write::mark_done(
                        &tx,
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
