//! The watcher: finds files, waits until each is complete, and queues the ones not done.
//!
//! Files are found three ways: a scan of every folder at start, kernel notifications (or
//! polling, for network filesystems), and a periodic rescan, because notifications are lost
//! on some filesystems and when their queue overflows. A file is complete when the writer
//! closed it (close-after-write), or when its size and modification time have not changed for
//! the stability window (a file whose last change is older than the window already is).
//!
//! Whether a complete file needs work is read from the database: a file is queued when it is
//! new, changed (size or modification time), pending, gone and back, or failed fewer than
//! `max_attempts` times. Queued files wait in memory as paths (a few hundred bytes each) and
//! enter the pipeline as fast as its bounded channels take them.
//!
//! Scans never follow symbolic links unless asked to, and then never visit a folder twice
//! (by device and inode), so link loops end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, Metadata, ReadDir};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use rusqlite::Connection;

use super::{DaemonError, InFlight, Job, Shutdown, WriterMsg};
use crate::store::path_key::{key_path, path_key};
use crate::store::write::{self, ImageStatus};

/// Include and exclude globs, matched case-insensitively against a file's path relative to its
/// watched folder; `*` also crosses `/`. An empty include list takes every file.
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl PathFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, DaemonError> {
        let build = |patterns: &[String]| -> Result<GlobSet, DaemonError> {
            let mut set = GlobSetBuilder::new();
            for p in patterns {
                let glob = GlobBuilder::new(p)
                    .case_insensitive(true)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| DaemonError::Glob {
                        pattern: p.clone(),
                        reason: e.kind().to_string(),
                    })?;
                set.add(glob);
            }
            set.build().map_err(|e| DaemonError::Glob {
                pattern: patterns.join(", "),
                reason: e.to_string(),
            })
        };
        Ok(PathFilter {
            include: if include.is_empty() {
                None
            } else {
                Some(build(include)?)
            },
            exclude: build(exclude)?,
        })
    }

    pub fn accepts(&self, relative: &Path) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(relative))
            && !self.exclude.is_match(relative)
    }
}

/// What notify reports, reduced to what the watcher acts on.
enum FsEvent {
    /// Something happened at this path: look at it.
    Changed(PathBuf),
    /// A writer closed this file: it is complete.
    Closed(PathBuf),
}

/// A file seen recently changed, waiting for its size and time to settle.
struct Settling {
    size: u64,
    mtime_ns: i64,
    due: Instant,
}

pub(crate) struct WatcherParts {
    pub roots: Vec<PathBuf>,
    pub filter: PathFilter,
    pub follow_symlinks: bool,
    pub poll_interval: Option<Duration>,
    pub rescan_interval: Option<Duration>,
    pub stable_window: Duration,
    pub max_attempts: u32,
    pub exit_when_idle: bool,
    pub db: Connection,
    pub jobs: Sender<Job>,
    pub writer: Sender<WriterMsg>,
    pub in_flight: InFlight,
    pub shutdown: Shutdown,
    /// Set when stored images were queued again (a new model): a rescan takes them.
    pub rescan: Arc<AtomicBool>,
}

pub(crate) struct Watcher {
    p: WatcherParts,
    events: Receiver<FsEvent>,
    /// Kept so `events` never disconnects, even when notify could not start.
    _events_tx: Sender<FsEvent>,
    /// Set when notify dropped or could not queue an event: a rescan follows.
    lost_events: Arc<AtomicBool>,
    _notify: Option<Box<dyn notify::Watcher + Send>>,
    scan: Scan,
    full_scan_running: bool,
    initial_scan_done: bool,
    next_rescan: Option<Instant>,
    settling: HashMap<PathBuf, Settling>,
    due: VecDeque<(Instant, PathBuf)>,
    /// New folders to scan once more: files created in them before notify watched them
    /// would otherwise wait for the next rescan.
    recheck_dirs: VecDeque<(Instant, PathBuf)>,
    ready: VecDeque<Job>,
    /// Pipes, devices and sockets already recorded as skipped (each is logged once).
    special_seen: HashSet<PathBuf>,
}

/// How long after a new folder appears it is scanned a second time.
const NEW_FOLDER_RECHECK: Duration = Duration::from_millis(500);

/// Events waiting for the watcher; beyond this they are dropped and a rescan is made.
const EVENT_QUEUE: usize = 8192;
/// Directory entries looked at between two chances to dispatch work.
const SCAN_BUDGET: usize = 256;

impl Watcher {
    pub fn new(p: WatcherParts) -> Result<Watcher, DaemonError> {
        let (tx, rx) = bounded(EVENT_QUEUE);
        let lost = Arc::new(AtomicBool::new(false));
        let handler = {
            let tx = tx.clone();
            let lost = lost.clone();
            move |res: notify::Result<notify::Event>| match res {
                Ok(event) => forward(event, &tx, &lost),
                Err(e) => {
                    tracing::warn!(error = %e, "file notification error; a rescan follows");
                    lost.store(true, Ordering::SeqCst);
                }
            }
        };
        let config = notify::Config::default().with_follow_symlinks(p.follow_symlinks);
        let mut notifier: Box<dyn notify::Watcher + Send> = match p.poll_interval {
            Some(interval) => Box::new(
                notify::PollWatcher::new(handler, config.with_poll_interval(interval))
                    .map_err(|e| DaemonError::Notify(e.to_string()))?,
            ),
            None => Box::new(
                notify::RecommendedWatcher::new(handler, config)
                    .map_err(|e| DaemonError::Notify(e.to_string()))?,
            ),
        };
        for root in &p.roots {
            if let Err(e) = notifier.watch(root, RecursiveMode::Recursive) {
                tracing::warn!(
                    folder = %root.display(),
                    error = %e,
                    "cannot watch this folder for changes; relying on periodic rescans"
                );
            }
        }
        Ok(Watcher {
            p,
            events: rx,
            _events_tx: tx,
            lost_events: lost,
            _notify: Some(notifier),
            scan: Scan::default(),
            full_scan_running: false,
            initial_scan_done: false,
            next_rescan: None,
            settling: HashMap::new(),
            due: VecDeque::new(),
            recheck_dirs: VecDeque::new(),
            ready: VecDeque::new(),
            special_seen: HashSet::new(),
        })
    }

    pub fn run(mut self) -> Result<(), DaemonError> {
        tracing::info!(
            folders = ?self.p.roots,
            poll = self.p.poll_interval.is_some(),
            "watching"
        );
        self.start_full_scan();
        while !self.p.shutdown.is_requested() {
            let mut handled = 0;
            while handled < EVENT_QUEUE {
                match self.events.try_recv() {
                    Ok(ev) => {
                        if !self.on_event(ev) {
                            return Ok(());
                        }
                        handled += 1;
                    }
                    Err(_) => break,
                }
            }
            if self.lost_events.swap(false, Ordering::SeqCst) {
                tracing::info!("file events were lost; rescanning");
                self.start_full_scan();
            }
            if self.p.rescan.swap(false, Ordering::SeqCst) {
                tracing::info!("images were queued again for a new model; rescanning");
                self.start_full_scan();
            }
            if !self.full_scan_running && self.next_rescan.is_some_and(|t| Instant::now() >= t) {
                tracing::debug!("periodic rescan");
                self.start_full_scan();
            }
            self.recheck_new_dirs();
            if (self.full_scan_running || !self.scan.is_idle()) && !self.scan_step() {
                return Ok(());
            }
            if !self.check_due() || !self.dispatch() {
                return Ok(());
            }
            if self.p.exit_when_idle && self.is_idle() {
                tracing::info!("every file is captioned or failed; exiting");
                return Ok(());
            }
            let wait = if !self.scan.is_idle() {
                Duration::ZERO
            } else if !self.ready.is_empty() {
                Duration::from_millis(20)
            } else {
                let next_due = self
                    .due
                    .front()
                    .into_iter()
                    .chain(self.recheck_dirs.front())
                    .map(|(t, _)| t.saturating_duration_since(Instant::now()))
                    .min()
                    .unwrap_or(Duration::MAX);
                next_due.min(Duration::from_millis(200))
            };
            if !wait.is_zero() {
                match self.events.recv_timeout(wait) {
                    Ok(ev) => {
                        if !self.on_event(ev) {
                            return Ok(());
                        }
                    }
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
                }
            }
        }
        tracing::info!(
            queued = self.ready.len(),
            "stopping: no new files are taken; what is queued stays pending for the next start"
        );
        Ok(())
    }

    fn is_idle(&self) -> bool {
        self.initial_scan_done
            && self.scan.is_idle()
            && self.settling.is_empty()
            && self.recheck_dirs.is_empty()
            && self.ready.is_empty()
            && self.p.in_flight.is_empty()
    }

    fn start_full_scan(&mut self) {
        if self.scan.is_idle() {
            self.scan.reset();
        }
        for root in self.p.roots.clone() {
            self.scan.push_root(&root, self.p.follow_symlinks);
        }
        self.full_scan_running = true;
    }

    /// Scans a little; at the end of a full scan, marks gone what is no longer there.
    /// Returns false when the pipeline is gone.
    fn scan_step(&mut self) -> bool {
        let mut found = Vec::new();
        let finished = self
            .scan
            .step(SCAN_BUDGET, self.p.follow_symlinks, |path, meta| {
                found.push((path, meta))
            });
        for (path, meta) in found {
            let alive = if meta.is_file() {
                self.saw_file(path, &meta, false)
            } else {
                self.saw_special(path, &meta)
            };
            if !alive {
                return false;
            }
        }
        if finished && self.full_scan_running {
            self.full_scan_running = false;
            self.initial_scan_done = true;
            self.next_rescan = self.p.rescan_interval.map(|d| Instant::now() + d);
            return self.mark_missing_gone();
        }
        true
    }

    fn mark_missing_gone(&mut self) -> bool {
        let paths = match write::live_paths(&self.p.db) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list known images to find deleted ones");
                return true;
            }
        };
        // Skipped entries that went, or became folders or regular files, lose their row.
        match write::skipped_paths(&self.p.db) {
            Ok(skipped) => {
                for key in skipped {
                    let path = key_path(&key);
                    let meta = if self.p.follow_symlinks {
                        fs::metadata(&path)
                    } else {
                        fs::symlink_metadata(&path)
                    };
                    let special = meta
                        .is_ok_and(|m| !m.is_dir() && !m.is_file() && !m.file_type().is_symlink());
                    if !special {
                        self.special_seen.remove(&path);
                        if self.p.writer.send(WriterMsg::Unskipped { key }).is_err() {
                            return false;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list skipped entries"),
        }
        for key in paths {
            let path = key_path(&key);
            if !self.p.roots.iter().any(|r| path.starts_with(r)) {
                continue;
            }
            if matches!(fs::symlink_metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
                && !self.p.in_flight.contains(&key)
                && self.p.writer.send(WriterMsg::Gone { key }).is_err()
            {
                return false;
            }
        }
        true
    }

    /// Returns false when the pipeline is gone.
    fn on_event(&mut self, ev: FsEvent) -> bool {
        let (path, closed) = match ev {
            FsEvent::Changed(p) => (p, false),
            FsEvent::Closed(p) => (p, true),
        };
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.settling.remove(&path);
                self.special_seen.remove(&path);
                return self
                    .p
                    .writer
                    .send(WriterMsg::Gone {
                        key: path_key(&path),
                    })
                    .is_ok();
            }
            Err(_) => return true,
        };
        let meta = if meta.file_type().is_symlink() {
            if !self.p.follow_symlinks {
                return true;
            }
            match fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => return true,
            }
        } else {
            meta
        };
        if meta.is_dir() {
            // A folder created or moved in: its files may predate the watch on it.
            if self.scan.is_idle() {
                self.scan.reset();
            }
            self.scan.push_dir(&path, &meta);
            self.recheck_dirs
                .push_back((Instant::now() + NEW_FOLDER_RECHECK, path));
            true
        } else if meta.is_file() {
            self.saw_file(path, &meta, closed)
        } else {
            self.saw_special(path, &meta)
        }
    }

    /// A named pipe, device or socket was seen: never read (a pipe would block, a device never
    /// ends), recorded once as skipped so `gaze status` counts it. Returns false when the
    /// pipeline is gone.
    fn saw_special(&mut self, path: PathBuf, meta: &Metadata) -> bool {
        let Some(rel) = self.relative(&path) else {
            return true;
        };
        if !self.p.filter.accepts(rel) || self.special_seen.contains(&path) {
            return true;
        }
        let kind = crate::files::kind_of(meta.file_type());
        tracing::debug!(path = %path.display(), kind, "skipped: not a regular file");
        let key = path_key(&path);
        self.special_seen.insert(path);
        self.p.writer.send(WriterMsg::Skipped { key, kind }).is_ok()
    }

    /// Scans again the new folders whose time has come, once the scan before has finished.
    fn recheck_new_dirs(&mut self) {
        let now = Instant::now();
        while self.scan.is_idle() && self.recheck_dirs.front().is_some_and(|(t, _)| *t <= now) {
            let (_, dir) = self.recheck_dirs.pop_front().expect("front exists");
            if let Ok(meta) = fs::metadata(&dir) {
                if meta.is_dir() {
                    self.scan.reset();
                    self.scan.push_dir(&dir, &meta);
                }
            }
        }
    }

    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        self.p
            .roots
            .iter()
            .filter_map(|r| path.strip_prefix(r).ok())
            .min_by_key(|rel| rel.components().count())
    }

    /// A regular file was seen. Returns false when the pipeline is gone.
    fn saw_file(&mut self, path: PathBuf, meta: &Metadata, closed: bool) -> bool {
        let Some(rel) = self.relative(&path) else {
            return true;
        };
        if !self.p.filter.accepts(rel) {
            return true;
        }
        // A path that is not UTF-8 is stored losslessly (see store::path_key).
        let key = path_key(&path);
        self.special_seen.remove(&path);
        let (size, mtime_ns) = (meta.len(), mtime_ns(meta));
        let settled = closed || age(meta) >= self.p.stable_window;
        if settled && !self.p.in_flight.contains(&key) {
            self.settling.remove(&path);
            return self.consider(path, size, mtime_ns);
        }
        match self.settling.get(&path) {
            Some(s) if s.size == size && s.mtime_ns == mtime_ns => {}
            _ => {
                let due = Instant::now() + self.p.stable_window;
                self.settling.insert(
                    path.clone(),
                    Settling {
                        size,
                        mtime_ns,
                        due,
                    },
                );
                self.due.push_back((due, path));
            }
        }
        true
    }

    /// Looks again at files whose stability window has passed. Returns false when the
    /// pipeline is gone.
    fn check_due(&mut self) -> bool {
        let now = Instant::now();
        while self.due.front().is_some_and(|(t, _)| *t <= now) {
            let (due, path) = self.due.pop_front().expect("front exists");
            let Some(entry) = self.settling.get(&path) else {
                continue;
            };
            if entry.due != due {
                continue; // superseded by a later change
            }
            let meta = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => {
                    self.settling.remove(&path);
                    continue;
                }
            };
            let (size, mtime_ns) = (meta.len(), mtime_ns(&meta));
            let unchanged = entry.size == size && entry.mtime_ns == mtime_ns;
            let busy = self.p.in_flight.contains(&path_key(&path));
            if unchanged && !busy {
                self.settling.remove(&path);
                if !self.consider(path, size, mtime_ns) {
                    return false;
                }
            } else {
                let due = now + self.p.stable_window;
                self.settling.insert(
                    path.clone(),
                    Settling {
                        size,
                        mtime_ns,
                        due,
                    },
                );
                self.due.push_back((due, path));
            }
        }
        true
    }

    /// Queues a complete file unless the database says it is done (or has failed too often).
    /// Returns false when the pipeline is gone.
    fn consider(&mut self, path: PathBuf, size: u64, mtime_ns: i64) -> bool {
        let key = path_key(&path);
        if self.p.in_flight.contains(&key) {
            return true;
        }
        let state = match write::image_state(&self.p.db, &key) {
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
                ImageStatus::Pending | ImageStatus::Gone => true,
                ImageStatus::Failed => s.attempts < self.p.max_attempts,
            },
        };
        if !take {
            return true;
        }
        self.p.in_flight.insert(&key);
        if self
            .p
            .writer
            .send(WriterMsg::Pending {
                key: key.clone(),
                size,
                mtime_ns,
            })
            .is_err()
        {
            return false;
        }
        self.ready.push_back(Job {
            path,
            key,
            size,
            mtime_ns,
        });
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

fn forward(event: notify::Event, tx: &Sender<FsEvent>, lost: &AtomicBool) {
    if event.need_rescan() {
        lost.store(true, Ordering::SeqCst);
    }
    let closed = matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    // Opens and reads (the decode pool's own among them) say nothing new.
    if matches!(event.kind, EventKind::Access(_)) && !closed {
        return;
    }
    for path in event.paths {
        let ev = if closed {
            FsEvent::Closed(path)
        } else {
            FsEvent::Changed(path)
        };
        if tx.try_send(ev).is_err() {
            lost.store(true, Ordering::SeqCst);
        }
    }
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// How long ago the file last changed (zero for times in the future).
fn age(meta: &Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::ZERO)
}

/// A folder's identity, so a scan that follows links visits each folder once.
#[cfg(unix)]
fn folder_id(_path: &Path, meta: &Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn folder_id(path: &Path, _meta: &Metadata) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A resumable walk over folders, a bounded number of entries at a time.
#[derive(Default)]
struct Scan {
    stack: Vec<PathBuf>,
    current: Option<(PathBuf, ReadDir)>,
    #[cfg(unix)]
    visited: HashSet<(u64, u64)>,
    #[cfg(not(unix))]
    visited: HashSet<PathBuf>,
}

impl Scan {
    fn is_idle(&self) -> bool {
        self.stack.is_empty() && self.current.is_none()
    }

    fn reset(&mut self) {
        self.visited.clear();
    }

    fn push_root(&mut self, root: &Path, follow: bool) {
        let meta = if follow {
            fs::metadata(root)
        } else {
            fs::symlink_metadata(root)
        };
        match meta {
            Ok(m) if m.is_dir() => self.push_dir(root, &m),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(folder = %root.display(), error = %e, "cannot scan the folder")
            }
        }
    }

    fn push_dir(&mut self, dir: &Path, meta: &Metadata) {
        if self.visited.insert(folder_id(dir, meta)) {
            self.stack.push(dir.to_path_buf());
        }
    }

    /// Looks at up to `budget` entries, reporting everything that is not a folder (regular
    /// files, and pipes, devices and sockets, which the caller skips). Returns true when the
    /// walk is finished.
    fn step(
        &mut self,
        budget: usize,
        follow: bool,
        mut on_file: impl FnMut(PathBuf, Metadata),
    ) -> bool {
        let mut looked = 0;
        while looked < budget {
            if self.current.is_none() {
                let Some(dir) = self.stack.pop() else {
                    return true;
                };
                match fs::read_dir(&dir) {
                    Ok(rd) => self.current = Some((dir, rd)),
                    Err(e) => {
                        tracing::warn!(folder = %dir.display(), error = %e, "cannot read the folder");
                        continue;
                    }
                }
            }
            let (dir, rd) = self.current.as_mut().expect("set above");
            let entry = match rd.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(folder = %dir.display(), error = %e, "cannot read the folder");
                    self.current = None;
                    continue;
                }
                Some(Ok(entry)) => entry,
            };
            looked += 1;
            let path = entry.path();
            let meta = match entry.file_type() {
                Ok(t) if t.is_symlink() => {
                    if !follow {
                        continue;
                    }
                    fs::metadata(&path)
                }
                Ok(_) => entry.metadata(),
                Err(e) => Err(e),
            };
            match meta {
                Ok(m) if m.is_dir() => self.push_dir(&path, &m),
                Ok(m) => on_file(path, m),
                Err(_) => {}
            }
        }
        self.is_idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> PathFilter {
        let d = crate::config::WatchSection::default();
        PathFilter::new(&d.include, &d.exclude).unwrap()
    }

    #[test]
    fn default_globs() {
        let f = filter();
        for ok in [
            "a.jpg",
            "x/y/Z.JPEG",
            "p.png",
            "deep/er/c.webp",
            "a.b/c.tif",
        ] {
            assert!(f.accepts(Path::new(ok)), "{ok}");
        }
        for no in [
            "a.txt",
            ".hidden.jpg",
            "x/.hidden.jpg",
            ".cache/a.jpg",
            "x/.y/z.png",
            "a.jpg.part",
            "dl.png.crdownload",
        ] {
            assert!(!f.accepts(Path::new(no)), "{no}");
        }
        let all = PathFilter::new(&[], &["*.txt".into()]).unwrap();
        assert!(all.accepts(Path::new("anything.bin")));
        assert!(!all.accepts(Path::new("a/b.TXT")));
        assert!(PathFilter::new(&["a[".into()], &[]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn scans_follow_links_without_looping() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/one.jpg"), b"1").unwrap();
        fs::write(root.join("two.jpg"), b"2").unwrap();
        std::os::unix::fs::symlink(root, root.join("a/b/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("two.jpg"), root.join("link.jpg")).unwrap();
        let walk = |follow: bool| {
            let mut scan = Scan::default();
            scan.push_root(root, follow);
            let mut files = Vec::new();
            while !scan.step(1, follow, |p, _| {
                files.push(p.strip_prefix(root).unwrap().to_path_buf())
            }) {}
            files.sort();
            files
        };
        assert_eq!(
            walk(false),
            vec![PathBuf::from("a/b/one.jpg"), PathBuf::from("two.jpg")]
        );
        // Following links: the linked file is seen under its own name, the loop is not walked.
        assert_eq!(
            walk(true),
            vec![
                PathBuf::from("a/b/one.jpg"),
                PathBuf::from("link.jpg"),
                PathBuf::from("two.jpg")
            ]
        );
    }
}
