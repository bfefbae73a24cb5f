//! Discovery: finds files in the watched folders and says when each is complete. It owns the
//! include/exclude globs, the kernel notifications (or polling), the directory walks and the
//! settle policy, and it emits [`Found`] messages; it never reads or writes the database
//! (whether a complete file needs work is admission's question).
//!
//! Files are found three ways: a walk of every folder at start, kernel notifications (or
//! polling, for network filesystems), and a periodic walk, because notifications are lost on
//! some filesystems and when their queue overflows. A file is complete when the writer closed
//! it (close-after-write), or when its size and modification time have not changed for the
//! stability window (a file whose last change is older than the window already is).
//!
//! Walks never follow symbolic links unless asked to, and then never visit a folder twice (by
//! device and inode), so link loops end. Pipes, devices and sockets are reported, never read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use super::msg::Found;
use super::{DaemonError, Shutdown};

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

    /// Whether `path` lies under one of `roots` and its path relative to the nearest one
    /// passes the globs.
    pub(crate) fn accepts_under(&self, roots: &[PathBuf], path: &Path) -> bool {
        relative(roots, path).is_some_and(|rel| self.accepts(rel))
    }
}

/// `path` relative to the innermost of `roots` that holds it.
fn relative<'a>(roots: &[PathBuf], path: &'a Path) -> Option<&'a Path> {
    roots
        .iter()
        .filter_map(|r| path.strip_prefix(r).ok())
        .min_by_key(|rel| rel.components().count())
}

/// What notify reports, reduced to what discovery acts on.
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

pub(crate) struct DiscoverParts {
    pub roots: Vec<PathBuf>,
    pub filter: PathFilter,
    pub follow_symlinks: bool,
    pub poll_interval: Option<Duration>,
    pub rescan_interval: Option<Duration>,
    pub stable_window: Duration,
    pub out: Sender<Found>,
    /// Disconnects when admission has ended: discovery then ends too.
    pub admit_alive: Receiver<()>,
    pub shutdown: Shutdown,
}

pub(crate) struct Discover {
    p: DiscoverParts,
    events: Receiver<FsEvent>,
    /// Kept so `events` never disconnects, even when notify could not start.
    _events_tx: Sender<FsEvent>,
    /// Set when notify dropped or could not queue an event: a full walk follows.
    lost_events: Arc<AtomicBool>,
    _notify: Option<Box<dyn notify::Watcher + Send>>,
    walk: Walk,
    full_walk_running: bool,
    initial_walk_done: bool,
    next_rescan: Option<Instant>,
    settling: HashMap<PathBuf, Settling>,
    due: VecDeque<(Instant, PathBuf)>,
    /// New folders to walk once more: files created in them before notify watched them
    /// would otherwise wait for the next periodic walk.
    recheck_dirs: VecDeque<(Instant, PathBuf)>,
    /// Pipes, devices and sockets already reported (each is reported once).
    special_seen: HashSet<PathBuf>,
    /// The idleness last reported to admission.
    reported_idle: Option<bool>,
}

/// How long after a new folder appears it is walked a second time.
const NEW_FOLDER_RECHECK: Duration = Duration::from_millis(500);
/// Events waiting for discovery; beyond this they are dropped and a full walk is made.
const EVENT_QUEUE: usize = 8192;
/// Directory entries looked at between two looks at the events.
const WALK_BUDGET: usize = 256;

impl Discover {
    /// Starts notifications on every root (a root that cannot be watched relies on the
    /// periodic walks).
    pub fn new(p: DiscoverParts) -> Result<Discover, DaemonError> {
        let mut d = Discover::without_notify(p);
        let (tx, lost) = (d._events_tx.clone(), d.lost_events.clone());
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(event) => forward(event, &tx, &lost),
            Err(e) => {
                tracing::warn!(error = %e, "file notification error; a rescan follows");
                lost.store(true, Ordering::SeqCst);
            }
        };
        let config = notify::Config::default().with_follow_symlinks(d.p.follow_symlinks);
        let mut notifier: Box<dyn notify::Watcher + Send> = match d.p.poll_interval {
            Some(interval) => Box::new(
                notify::PollWatcher::new(handler, config.with_poll_interval(interval))
                    .map_err(|e| DaemonError::Notify(e.to_string()))?,
            ),
            None => Box::new(
                notify::RecommendedWatcher::new(handler, config)
                    .map_err(|e| DaemonError::Notify(e.to_string()))?,
            ),
        };
        for root in &d.p.roots {
            if let Err(e) = notifier.watch(root, RecursiveMode::Recursive) {
                tracing::warn!(
                    folder = %root.display(),
                    error = %e,
                    "cannot watch this folder for changes; relying on periodic rescans"
                );
            }
        }
        d._notify = Some(notifier);
        Ok(d)
    }

    /// Discovery driven only by walks (and, in tests, by hand).
    fn without_notify(p: DiscoverParts) -> Discover {
        let (tx, rx) = bounded(EVENT_QUEUE);
        Discover {
            p,
            events: rx,
            _events_tx: tx,
            lost_events: Arc::new(AtomicBool::new(false)),
            _notify: None,
            walk: Walk::default(),
            full_walk_running: false,
            initial_walk_done: false,
            next_rescan: None,
            settling: HashMap::new(),
            due: VecDeque::new(),
            recheck_dirs: VecDeque::new(),
            special_seen: HashSet::new(),
            reported_idle: None,
        }
    }

    pub fn run(mut self) -> Result<(), DaemonError> {
        tracing::info!(
            folders = ?self.p.roots,
            poll = self.p.poll_interval.is_some(),
            "watching"
        );
        self.start_full_walk();
        while !self.p.shutdown.is_requested() && self.admit_alive() {
            if !self.step() {
                break;
            }
            let wait = self.next_wait();
            if !wait.is_zero() {
                match self.events.recv_timeout(wait) {
                    Ok(ev) => {
                        if !self.on_event(ev) {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
                }
            }
        }
        Ok(())
    }

    fn admit_alive(&self) -> bool {
        !matches!(
            self.p.admit_alive.try_recv(),
            Err(TryRecvError::Disconnected)
        )
    }

    /// One round: queued events, walks due, a slice of the current walk, settled files.
    /// Returns false when admission is gone.
    fn step(&mut self) -> bool {
        let mut handled = 0;
        while handled < EVENT_QUEUE {
            let Ok(ev) = self.events.try_recv() else {
                break;
            };
            if !self.on_event(ev) {
                return false;
            }
            handled += 1;
        }
        if self.lost_events.swap(false, Ordering::SeqCst) {
            tracing::info!("file events were lost; rescanning");
            self.start_full_walk();
        }
        if !self.full_walk_running && self.next_rescan.is_some_and(|t| Instant::now() >= t) {
            tracing::debug!("periodic rescan");
            self.start_full_walk();
        }
        self.recheck_new_dirs();
        if (self.full_walk_running || !self.walk.is_idle()) && !self.walk_step() {
            return false;
        }
        self.check_due() && self.report_idle()
    }

    /// How long to wait for an event before the next round.
    fn next_wait(&self) -> Duration {
        if !self.walk.is_idle() {
            return Duration::ZERO;
        }
        let next_due = self
            .due
            .front()
            .into_iter()
            .chain(self.recheck_dirs.front())
            .map(|(t, _)| t.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::MAX);
        next_due.min(Duration::from_millis(200))
    }

    fn is_idle(&self) -> bool {
        self.initial_walk_done
            && self.walk.is_idle()
            && self.settling.is_empty()
            && self.recheck_dirs.is_empty()
    }

    /// Tells admission when idleness changed. Returns false when admission is gone.
    fn report_idle(&mut self) -> bool {
        let idle = self.is_idle();
        if self.reported_idle == Some(idle) {
            return true;
        }
        self.reported_idle = Some(idle);
        self.emit(Found::Idle(idle))
    }

    fn emit(&self, found: Found) -> bool {
        self.p.out.send(found).is_ok()
    }

    fn start_full_walk(&mut self) {
        if self.walk.is_idle() {
            self.walk.reset();
        }
        for root in &self.p.roots {
            self.walk.push(root.clone());
        }
        self.full_walk_running = true;
    }

    /// Walks a little; at the end of a full walk, says so. Returns false when admission is
    /// gone.
    fn walk_step(&mut self) -> bool {
        let mut found = Vec::new();
        let finished = self
            .walk
            .step(WALK_BUDGET, self.p.follow_symlinks, |path, meta| {
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
        if finished && self.full_walk_running {
            self.full_walk_running = false;
            self.initial_walk_done = true;
            self.next_rescan = self.p.rescan_interval.map(|d| Instant::now() + d);
            self.forget_changed_specials();
            return self.emit(Found::WalkDone);
        }
        true
    }

    /// Entries reported as special that went, or became folders or regular files, are
    /// reported again if they turn special once more.
    fn forget_changed_specials(&mut self) {
        let follow = self.p.follow_symlinks;
        self.special_seen.retain(|path| {
            let meta = if follow {
                fs::metadata(path)
            } else {
                fs::symlink_metadata(path)
            };
            meta.is_ok_and(|m| !m.is_dir() && !m.is_file() && !m.file_type().is_symlink())
        });
    }

    /// Returns false when admission is gone.
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
                return self.emit(Found::Gone { path });
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
            if self.walk.is_idle() {
                self.walk.reset();
            }
            self.walk.push(path.clone());
            self.recheck_dirs
                .push_back((Instant::now() + NEW_FOLDER_RECHECK, path));
            true
        } else if meta.is_file() {
            self.saw_file(path, &meta, closed)
        } else {
            self.saw_special(path, &meta)
        }
    }

    /// A named pipe, device or socket was seen: reported once, never read (a pipe would
    /// block, a device never ends). Returns false when admission is gone.
    fn saw_special(&mut self, path: PathBuf, meta: &Metadata) -> bool {
        if !self.p.filter.accepts_under(&self.p.roots, &path) || self.special_seen.contains(&path) {
            return true;
        }
        let kind = crate::files::kind_of(meta.file_type());
        tracing::debug!(path = %path.display(), kind, "skipped: not a regular file");
        self.special_seen.insert(path.clone());
        self.emit(Found::Special { path, kind })
    }

    /// Walks again the new folders whose time has come, once the walk before has finished.
    fn recheck_new_dirs(&mut self) {
        let now = Instant::now();
        while self.walk.is_idle() && self.recheck_dirs.front().is_some_and(|(t, _)| *t <= now) {
            let Some((_, dir)) = self.recheck_dirs.pop_front() else {
                break;
            };
            if fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
                self.walk.reset();
                self.walk.push(dir);
            }
        }
    }

    /// A regular file was seen: emitted when complete, otherwise left to settle. Returns false
    /// when admission is gone.
    fn saw_file(&mut self, path: PathBuf, meta: &Metadata, closed: bool) -> bool {
        if !self.p.filter.accepts_under(&self.p.roots, &path) {
            return true;
        }
        self.special_seen.remove(&path);
        let (size, mtime_ns) = (meta.len(), mtime_ns(meta));
        if closed || age(meta) >= self.p.stable_window {
            self.settling.remove(&path);
            return self.emit(Found::File {
                path,
                size,
                mtime_ns,
            });
        }
        match self.settling.get(&path) {
            Some(s) if s.size == size && s.mtime_ns == mtime_ns => {}
            _ => self.settle(path, size, mtime_ns, Instant::now()),
        }
        true
    }

    /// Looks at `path` again one stability window after `now`.
    fn settle(&mut self, path: PathBuf, size: u64, mtime_ns: i64, now: Instant) {
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

    /// Looks again at files whose stability window has passed: an unchanged one is complete,
    /// a changed one waits another window. Returns false when admission is gone.
    fn check_due(&mut self) -> bool {
        let now = Instant::now();
        while self.due.front().is_some_and(|(t, _)| *t <= now) {
            let Some((due, path)) = self.due.pop_front() else {
                break;
            };
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
            if entry.size == size && entry.mtime_ns == mtime_ns {
                self.settling.remove(&path);
                if !self.emit(Found::File {
                    path,
                    size,
                    mtime_ns,
                }) {
                    return false;
                }
            } else {
                self.settle(path, size, mtime_ns, now);
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

/// A file's modification time in nanoseconds since the epoch (0 when unknown).
pub(crate) fn mtime_ns(meta: &Metadata) -> i64 {
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

/// A folder's identity, so a walk that follows links visits each folder once.
#[cfg(unix)]
type FolderId = (u64, u64);
#[cfg(not(unix))]
type FolderId = PathBuf;

#[cfg(unix)]
fn folder_id(_path: &Path, meta: &Metadata) -> FolderId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn folder_id(path: &Path, _meta: &Metadata) -> FolderId {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Resumable walks (with `walkdir`) over folders, a bounded number of entries at a time.
/// Folders already visited since the last [`Walk::reset`] are not walked again, whether met
/// through a link loop or another link to the same folder.
#[derive(Default)]
struct Walk {
    queued: VecDeque<PathBuf>,
    current: Option<walkdir::IntoIter>,
    visited: HashSet<FolderId>,
}

impl Walk {
    fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.current.is_none()
    }

    fn reset(&mut self) {
        self.visited.clear();
    }

    fn push(&mut self, dir: PathBuf) {
        self.queued.push_back(dir);
    }

    /// Looks at up to `budget` entries, reporting everything that is not a folder (regular
    /// files, and pipes, devices and sockets, which the caller reports as such). Returns true
    /// when every walk is finished.
    fn step(
        &mut self,
        budget: usize,
        follow: bool,
        mut on_entry: impl FnMut(PathBuf, Metadata),
    ) -> bool {
        let mut looked = 0;
        while looked < budget {
            if self.current.is_none() {
                let Some(dir) = self.queued.pop_front() else {
                    return true;
                };
                let walk = walkdir::WalkDir::new(dir)
                    .follow_links(follow)
                    .follow_root_links(follow);
                self.current = Some(walk.into_iter());
            }
            let Some(it) = self.current.as_mut() else {
                continue;
            };
            let entry = match it.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => {
                    // A link loop ends here; a broken link or an entry deleted meanwhile is
                    // nothing to report.
                    let quiet = e.loop_ancestor().is_some()
                        || e.io_error()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                    if !quiet {
                        let path = e.path().map(|p| p.display().to_string());
                        tracing::warn!(path, error = %e, "cannot read the folder");
                    }
                    continue;
                }
                Some(Ok(entry)) => entry,
            };
            looked += 1;
            if entry.file_type().is_symlink() {
                continue; // not followed
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                if !self.visited.insert(folder_id(entry.path(), &meta)) {
                    it.skip_current_dir();
                }
            } else {
                on_entry(entry.into_path(), meta);
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
    fn walks_follow_links_without_looping() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/one.jpg"), b"1").unwrap();
        fs::write(root.join("two.jpg"), b"2").unwrap();
        std::os::unix::fs::symlink(root, root.join("a/b/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("again")).unwrap();
        std::os::unix::fs::symlink(root.join("two.jpg"), root.join("link.jpg")).unwrap();
        let walk = |follow: bool| {
            let mut walk = Walk::default();
            walk.push(root.to_path_buf());
            let mut files = Vec::new();
            while !walk.step(1, follow, |p, _| {
                files.push(p.strip_prefix(root).unwrap().to_path_buf())
            }) {}
            files.sort();
            files
        };
        assert_eq!(
            walk(false),
            vec![PathBuf::from("a/b/one.jpg"), PathBuf::from("two.jpg")]
        );
        // Following links: the linked file is seen under its own name, the loop is not walked,
        // and a second link to a folder already walked is not walked again.
        let followed = walk(true);
        assert!(
            followed.contains(&PathBuf::from("link.jpg")),
            "{followed:?}"
        );
        assert!(followed.contains(&PathBuf::from("two.jpg")), "{followed:?}");
        let ones = followed.iter().filter(|p| p.ends_with("one.jpg")).count();
        assert_eq!(ones, 1, "{followed:?}");
        assert_eq!(followed.len(), 3, "{followed:?}");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_reported_and_non_utf8_names_walked() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let odd = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
        fs::write(&odd, b"x").unwrap();
        let sock = root.join("s.jpg");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut walk = Walk::default();
        walk.push(root.to_path_buf());
        let mut seen = Vec::new();
        while !walk.step(8, false, |p, m| seen.push((p, m.is_file()))) {}
        seen.sort();
        let mut want = vec![(odd, true), (sock, false)];
        want.sort();
        assert_eq!(seen, want);
    }

    struct Harness {
        d: Discover,
        rx: Receiver<Found>,
        _alive: Sender<()>,
    }

    fn harness(root: &Path, window: Duration) -> Harness {
        let (out, rx) = crossbeam_channel::unbounded();
        let (alive_tx, admit_alive) = bounded(1);
        let d = Discover::without_notify(DiscoverParts {
            roots: vec![root.to_path_buf()],
            filter: filter(),
            follow_symlinks: false,
            poll_interval: None,
            rescan_interval: None,
            stable_window: window,
            out,
            admit_alive,
            shutdown: Shutdown::default(),
        });
        Harness {
            d,
            rx,
            _alive: alive_tx,
        }
    }

    fn files(rx: &Receiver<Found>) -> Vec<PathBuf> {
        rx.try_iter()
            .filter_map(|f| match f {
                Found::File { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_settled_file_is_emitted_once_and_a_growing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let window = Duration::from_millis(300);
        let mut h = harness(&root, window);
        let (done, growing) = (root.join("done.jpg"), root.join("growing.jpg"));
        fs::write(&done, b"complete").unwrap();
        fs::write(&growing, b"gro").unwrap();
        // Both are new: seen changed, neither is complete yet.
        assert!(h.d.on_event(FsEvent::Changed(done.clone())));
        assert!(h.d.on_event(FsEvent::Changed(growing.clone())));
        assert!(h.d.check_due());
        assert!(files(&h.rx).is_empty());
        // The growing file changes within its window; the other does not.
        std::thread::sleep(window / 2);
        let mut f = fs::OpenOptions::new().append(true).open(&growing).unwrap();
        std::io::Write::write_all(&mut f, b"wing, and more").unwrap();
        drop(f);
        assert!(h.d.on_event(FsEvent::Changed(growing.clone())));
        std::thread::sleep(window / 2 + Duration::from_millis(100));
        assert!(h.d.check_due());
        assert_eq!(files(&h.rx), vec![done.clone()]);
        // Looking again emits nothing more: the settled file left the settle queue.
        assert!(h.d.check_due());
        assert!(files(&h.rx).is_empty());
        assert!(h.d.settling.contains_key(&growing));
        assert!(!h.d.settling.contains_key(&done));
        // A writer closing the file completes it at once.
        assert!(h.d.on_event(FsEvent::Closed(growing.clone())));
        assert_eq!(files(&h.rx), vec![growing]);
        assert!(h.d.settling.is_empty());
    }

    #[test]
    fn a_full_walk_emits_old_files_and_says_when_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/a.png"), b"a").unwrap();
        fs::write(root.join("notes.txt"), b"not an image").unwrap();
        let mut h = harness(&root, Duration::ZERO);
        h.d.start_full_walk();
        while !h.d.walk.is_idle() || h.d.full_walk_running {
            assert!(h.d.step());
        }
        let got: Vec<Found> = h.rx.try_iter().collect();
        assert!(
            matches!(&got[0], Found::File { path, size: 1, .. } if path.ends_with("sub/a.png"))
        );
        assert_eq!(got[1..], [Found::WalkDone, Found::Idle(true)]);
        // Deleting the file is reported as gone.
        fs::remove_file(root.join("sub/a.png")).unwrap();
        assert!(h.d.on_event(FsEvent::Changed(root.join("sub/a.png"))));
        assert_eq!(
            h.rx.try_iter().collect::<Vec<_>>(),
            [Found::Gone {
                path: root.join("sub/a.png")
            }]
        );
    }
}
