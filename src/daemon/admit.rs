//! Admission: decides which complete files enter the pipeline, and owns the set of files in
//! flight (handed to the decode pool and not yet committed), so no file is queued twice.
//!
//! A complete file from discovery is admitted when the store says it needs work: it is new,
//! changed (size or modification time), pending, gone and back, or failed fewer than
//! `max_attempts` times. Admitted files are recorded pending through the writer, wait in
//! memory as paths (a few hundred bytes each) and enter the pipeline as fast as its bounded
//! channels take them. A file found again while in flight is looked at once more when the
//! writer acknowledges its commit, which is also what frees its slot.
//!
//! After a model swap the new model's work is already in the store as pending rows (queued in
//! the swap's own transaction, or by whoever promoted the model): admission reads them from
//! there instead of walking the folders again. At the end of each full walk it marks gone what
//! the store holds under the watched folders and no longer exists.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender, TrySendError};

use super::discover::{mtime_ns, PathFilter};
use super::msg::{Ack, Found, Job, WriterMsg};
use super::{DaemonError, Shutdown};
use crate::store::path_key::Roots;
use crate::store::queue::ImageStatus;
use crate::store::BoxedStore;

pub(crate) struct AdmitParts {
    pub roots: Vec<PathBuf>,
    pub filter: PathFilter,
    pub follow_symlinks: bool,
    pub max_attempts: u32,
    pub exit_when_idle: bool,
    /// How paths become stored keys (named roots of shared folders, or absolute paths).
    pub keys: Roots,
    /// Off (`gaze watch --no-caption`): files are only recorded pending, for `gaze worker`s.
    pub caption: bool,
    /// Read-only: admission decides, the writer records.
    /// A read-only store: admission reads the queue, the writer alone writes it.
    pub db: BoxedStore,
    pub found: Receiver<Found>,
    pub acks: Receiver<Ack>,
    pub jobs: Sender<Job>,
    pub writer: Sender<WriterMsg>,
    pub shutdown: Shutdown,
    /// Dropped when admission ends, which tells discovery to end.
    pub _alive: Sender<()>,
}

pub(crate) struct Admit {
    p: AdmitParts,
    /// Path key -> the size and modification time of the version being captioned.
    in_flight: HashMap<String, (u64, i64)>,
    /// Files found complete again while in flight (by key): looked at once their slot frees.
    deferred: HashMap<String, (PathBuf, u64, i64)>,
    ready: VecDeque<Job>,
    discovery_idle: bool,
}

/// How long to wait for a message while files wait for room in the decode queue.
const DISPATCH_RETRY: Duration = Duration::from_millis(20);
const IDLE_WAIT: Duration = Duration::from_millis(200);

impl Admit {
    pub fn new(p: AdmitParts) -> Admit {
        Admit {
            p,
            in_flight: HashMap::new(),
            deferred: HashMap::new(),
            ready: VecDeque::new(),
            discovery_idle: false,
        }
    }

    pub fn run(mut self) -> Result<(), DaemonError> {
        while !self.p.shutdown.is_requested() {
            let wait = if self.ready.is_empty() {
                IDLE_WAIT
            } else {
                DISPATCH_RETRY
            };
            let alive = select! {
                recv(self.p.found) -> msg => msg.is_ok_and(|f| self.on_found(f)),
                recv(self.p.acks) -> ack => ack.is_ok_and(|a| self.on_ack(a)),
                default(wait) => true,
            };
            // Discovery or the writer ended (a fatal error or a panic, reported by its thread).
            if !alive || !self.dispatch() {
                return Ok(());
            }
            if self.p.exit_when_idle && self.is_idle() {
                tracing::info!("every file is captioned or failed; exiting");
                return Ok(());
            }
        }
        tracing::info!(
            queued = self.ready.len(),
            "stopping: no new files are taken; what is queued stays pending for the next start"
        );
        Ok(())
    }

    fn is_idle(&self) -> bool {
        self.discovery_idle
            && self.p.found.is_empty()
            && self.ready.is_empty()
            && self.in_flight.is_empty()
    }

    /// Returns false when the pipeline is gone.
    fn on_found(&mut self, found: Found) -> bool {
        match found {
            Found::File {
                path,
                size,
                mtime_ns,
            } => {
                let key = self.p.keys.key(&path);
                if self.in_flight.contains_key(&key) {
                    self.deferred.insert(key, (path, size, mtime_ns));
                    return true;
                }
                self.consider(path, key, size, mtime_ns)
            }
            Found::Special { path, kind } => self.send(WriterMsg::Skipped {
                key: self.p.keys.key(&path),
                kind,
            }),
            Found::Gone { path } => self.send(WriterMsg::Gone {
                key: self.p.keys.key(&path),
            }),
            Found::WalkDone => self.mark_missing_gone(),
            Found::Idle(idle) => {
                self.discovery_idle = idle;
                true
            }
        }
    }

    /// Returns false when the pipeline is gone.
    fn on_ack(&mut self, ack: Ack) -> bool {
        match ack {
            Ack::Committed(keys) => {
                for key in keys {
                    let done = self.in_flight.remove(&key);
                    let Some((path, size, mtime_ns)) = self.deferred.remove(&key) else {
                        continue;
                    };
                    // The version just committed was seen twice (a walk and an event): it is
                    // not taken again, so a failing file counts one attempt per version.
                    if done == Some((size, mtime_ns)) {
                        continue;
                    }
                    // Taken again only as it was found; a later change is found again itself.
                    if self.stat(&path) == Some((size, mtime_ns))
                        && !self.consider(path, key, size, mtime_ns)
                    {
                        return false;
                    }
                }
                true
            }
            Ack::Swapped => self.requeue_from_store(),
        }
    }

    fn send(&self, msg: WriterMsg) -> bool {
        self.p.writer.send(msg).is_ok()
    }

    /// The size and modification time of the regular file at `path`, if it is one.
    fn stat(&self, path: &Path) -> Option<(u64, i64)> {
        let meta = if self.p.follow_symlinks {
            fs::metadata(path)
        } else {
            fs::symlink_metadata(path)
        };
        meta.ok()
            .filter(|m| m.is_file())
            .map(|m| (m.len(), mtime_ns(&m)))
    }

    /// Queues a complete file unless the store says it is done (or has failed too often).
    /// Returns false when the pipeline is gone.
    fn consider(&mut self, path: PathBuf, key: String, size: u64, mtime_ns: i64) -> bool {
        if self.in_flight.contains_key(&key) {
            return true;
        }
        let state = match self.p.db.image_state(&key) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %key, error = %e, "cannot read the image's state; queueing it");
                None
            }
        };
        let take = match state {
            None => true,
            Some(s) if s.size != size as i64 || s.mtime_ns != mtime_ns => true,
            Some(s) => match s.status {
                ImageStatus::Done => false,
                // Queued already, for the workers.
                ImageStatus::Pending if !self.p.caption => false,
                ImageStatus::Pending | ImageStatus::Gone => true,
                ImageStatus::Failed => s.attempts < self.p.max_attempts,
            },
        };
        if !take {
            return true;
        }
        let pending = WriterMsg::Pending {
            key: key.clone(),
            size,
            mtime_ns,
        };
        if !self.p.caption {
            return self.send(pending);
        }
        self.in_flight.insert(key.clone(), (size, mtime_ns));
        if !self.send(pending) {
            return false;
        }
        self.ready.push_back(Job {
            path,
            key,
            size,
            mtime_ns,
            lease: None,
        });
        true
    }

    /// After a model swap: takes the pending rows under the watched folders whose files are
    /// still as recorded. Returns false when the pipeline is gone.
    fn requeue_from_store(&mut self) -> bool {
        let rows = match self.p.db.pending_images() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the pending images after a model swap");
                return true;
            }
        };
        let mut taken = 0usize;
        for row in rows {
            let (key, size, mtime_ns) = (row.path, row.size, row.mtime_ns);
            let Ok(path) = self.p.keys.path(&key) else {
                continue;
            };
            if self.in_flight.contains_key(&key)
                || !self.p.filter.accepts_under(&self.p.roots, &path)
                || self.stat(&path) != Some((size, mtime_ns))
            {
                continue;
            }
            if !self.consider(path, key, size, mtime_ns) {
                return false;
            }
            taken += 1;
        }
        tracing::info!(
            images = taken,
            "pending images taken from the store for the new model"
        );
        true
    }

    /// At the end of a full walk: marks gone the stored images under the watched folders that
    /// no longer exist (unless in flight), and forgets skipped entries that went or changed
    /// kind. Returns false when the pipeline is gone.
    fn mark_missing_gone(&mut self) -> bool {
        match self.p.db.skipped_paths() {
            Ok(skipped) => {
                for key in skipped {
                    let Ok(path) = self.p.keys.path(&key) else {
                        continue;
                    };
                    let meta = if self.p.follow_symlinks {
                        fs::metadata(&path)
                    } else {
                        fs::symlink_metadata(&path)
                    };
                    let special = meta
                        .is_ok_and(|m| !m.is_dir() && !m.is_file() && !m.file_type().is_symlink());
                    if !special && !self.send(WriterMsg::Unskipped { key }) {
                        return false;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list skipped entries"),
        }
        let paths = match self.p.db.live_paths() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list known images to find deleted ones");
                return true;
            }
        };
        for key in paths {
            // Keys under roots this machine does not mount are another scanner's.
            let Ok(path) = self.p.keys.path(&key) else {
                continue;
            };
            if !self.p.roots.iter().any(|r| path.starts_with(r))
                || self.in_flight.contains_key(&key)
            {
                continue;
            }
            let missing = matches!(fs::symlink_metadata(&path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound);
            if missing && !self.send(WriterMsg::Gone { key }) {
                return false;
            }
        }
        true
    }

    /// Hands queued files to the decode pool until its queue is full. Returns false when the
    /// pipeline is gone.
    fn dispatch(&mut self) -> bool {
        while let Some(job) = self.ready.pop_front() {
            match self.p.jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.ready.push_front(job);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::path_key::path_key;
    use crate::store::queue::{self as write, ReadImage};
    use crate::store::Store;
    use crossbeam_channel::unbounded;

    struct Harness {
        admit: Admit,
        store: Store,
        jobs: Receiver<Job>,
        writer: Receiver<WriterMsg>,
        root: PathBuf,
        _dir: tempfile::TempDir,
        _acks: Sender<Ack>,
        _found: Sender<Found>,
    }

    fn harness(max_attempts: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap().join("photos");
        fs::create_dir(&root).unwrap();
        let db = dir.path().join("gaze.db");
        let store = Store::open(&db).unwrap();
        let (found_tx, found) = unbounded();
        let (acks_tx, acks) = unbounded();
        let (jobs_tx, jobs) = unbounded();
        let (writer_tx, writer) = unbounded();
        let d = crate::config::WatchSection::default();
        let admit = Admit::new(AdmitParts {
            roots: vec![root.clone()],
            filter: PathFilter::new(&d.include, &d.exclude).unwrap(),
            follow_symlinks: false,
            max_attempts,
            exit_when_idle: true,
            keys: Roots::default(),
            caption: true,
            db: Box::new(Store::open_read_only(&db).unwrap()),
            found,
            acks,
            jobs: jobs_tx,
            writer: writer_tx,
            shutdown: Shutdown::default(),
            _alive: unbounded().0,
        });
        Harness {
            admit,
            store,
            jobs,
            writer,
            root,
            _dir: dir,
            _acks: acks_tx,
            _found: found_tx,
        }
    }

    impl Harness {
        /// Writes a file and returns how discovery would report it complete.
        fn file(&self, name: &str) -> Found {
            let path = self.root.join(name);
            fs::write(&path, name.as_bytes()).unwrap();
            let meta = fs::metadata(&path).unwrap();
            Found::File {
                path,
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
            }
        }

        fn dispatched(&mut self) -> Vec<String> {
            assert!(self.admit.dispatch());
            self.jobs.try_iter().map(|j| j.key).collect()
        }

        /// Records what the writer would for `found`, as of `status`.
        fn record(&self, found: &Found, status: &str) {
            let Found::File {
                path,
                size,
                mtime_ns,
            } = found
            else {
                panic!("not a file")
            };
            let (conn, key) = (self.store.conn(), path_key(path));
            write::mark_pending(conn, &key, *size as i64, *mtime_ns, 1.0).unwrap();
            match status {
                "done" => write::mark_done(
                    conn,
                    &ReadImage {
                        path: &key,
                        size: *size as i64,
                        mtime_ns: *mtime_ns,
                        content_hash: "h",
                        width: 1,
                        height: 1,
                    },
                    2.0,
                )
                .unwrap(),
                "failed" => {
                    write::mark_failed(conn, &key, *size as i64, *mtime_ns, None, "bad", 2.0)
                        .unwrap()
                }
                _ => {}
            }
        }
    }

    fn key_of(found: &Found) -> String {
        match found {
            Found::File { path, .. } => path_key(path),
            _ => panic!("not a file"),
        }
    }

    #[test]
    fn a_model_swap_dispatches_the_pending_rows_from_the_store() {
        let mut h = harness(3);
        let (done, pending) = (h.file("done.jpg"), h.file("pending.jpg"));
        h.record(&done, "done");
        h.record(&pending, "pending");
        // A pending row whose file went, and one outside the watched folders: not taken.
        let gone = h.file("gone.jpg");
        h.record(&gone, "pending");
        fs::remove_file(h.root.join("gone.jpg")).unwrap();
        write::mark_pending(h.store.conn(), "/elsewhere/x.jpg", 1, 1, 1.0).unwrap();
        assert!(h.admit.on_ack(Ack::Swapped));
        assert_eq!(h.dispatched(), vec![key_of(&pending)]);
        assert!(matches!(
            h.writer.try_recv().unwrap(),
            WriterMsg::Pending { key, .. } if key == key_of(&pending)
        ));
        // Taken once: a second swap while it is in flight does not queue it again.
        assert!(h.admit.on_ack(Ack::Swapped));
        assert!(h.dispatched().is_empty());
    }

    #[test]
    fn an_ack_frees_the_in_flight_slot() {
        let mut h = harness(3);
        let a = h.file("a.jpg");
        assert!(h.admit.on_found(Found::Idle(true)));
        assert!(h.admit.on_found(a.clone()));
        assert_eq!(h.dispatched(), vec![key_of(&a)]);
        assert!(!h.admit.is_idle());
        // Found again while in flight: not queued twice.
        assert!(h.admit.on_found(a.clone()));
        assert!(h.dispatched().is_empty());
        // The writer commits it as done and acknowledges: the slot frees, and the file found
        // meanwhile is looked at again and left alone (the store has it done).
        h.record(&a, "done");
        assert!(h.admit.on_ack(Ack::Committed(vec![key_of(&a)])));
        assert!(h.dispatched().is_empty());
        assert!(h.admit.is_idle());
        assert!(h.admit.in_flight.is_empty() && h.admit.deferred.is_empty());
    }

    #[test]
    fn a_failing_file_seen_twice_while_in_flight_counts_one_attempt() {
        let mut h = harness(3);
        let bad = h.file("bad.jpg");
        assert!(h.admit.on_found(bad.clone()));
        assert_eq!(h.dispatched(), vec![key_of(&bad)]);
        // A walk and an event both report the same version while it is being read.
        assert!(h.admit.on_found(bad.clone()));
        h.record(&bad, "failed");
        assert!(h.admit.on_ack(Ack::Committed(vec![key_of(&bad)])));
        assert!(
            h.dispatched().is_empty(),
            "the same version was taken again"
        );
        let state = write::image_state(h.store.conn(), &key_of(&bad))
            .unwrap()
            .unwrap();
        assert_eq!((state.status, state.attempts), (ImageStatus::Failed, 1));
        assert!(h.admit.in_flight.is_empty() && h.admit.deferred.is_empty());
    }

    #[test]
    fn a_failing_file_is_tried_up_to_the_attempts_limit() {
        let mut h = harness(3);
        let bad = h.file("bad.jpg");
        for attempt in 1..=3 {
            assert!(h.admit.on_found(bad.clone()));
            assert_eq!(h.dispatched(), vec![key_of(&bad)], "attempt {attempt}");
            h.record(&bad, "failed");
            assert!(h.admit.on_ack(Ack::Committed(vec![key_of(&bad)])));
        }
        let state = write::image_state(h.store.conn(), &key_of(&bad))
            .unwrap()
            .unwrap();
        assert_eq!((state.status, state.attempts), (ImageStatus::Failed, 3));
        assert!(h.admit.on_found(bad.clone()));
        assert!(h.dispatched().is_empty(), "tried past the limit");
        // A change to the file starts its attempts afresh.
        std::thread::sleep(Duration::from_millis(10));
        let changed = h.file("bad.jpg");
        fs::write(h.root.join("bad.jpg"), b"now longer").unwrap();
        let meta = fs::metadata(h.root.join("bad.jpg")).unwrap();
        let changed = match changed {
            Found::File { path, .. } => Found::File {
                path,
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
            },
            other => other,
        };
        assert!(h.admit.on_found(changed));
        assert_eq!(h.dispatched(), vec![key_of(&bad)]);
    }
}
