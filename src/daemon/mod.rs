//! The folder-watching captioning daemon: a pipeline of threads joined by bounded channels.
//!
//! ```text
//! watcher (notify + scans) -> decode pool (read, hash, decode, resize, normalise)
//!   -> batcher (max batch, max wait) -> inference (batched beam search) -> writer (SQLite)
//! ```
//!
//! Guarantees:
//! - SQLite is the durable queue. An image is done only when the transaction holding its
//!   caption has committed; the scan at start takes every file that is not done, so killing
//!   the process at any moment loses nothing. `captions` is unique per (content, model), so
//!   nothing is captioned twice by one model, and the same bytes under two names share one
//!   caption.
//! - Memory is bounded whatever the burst: each channel is bounded, and what waits before
//!   the pipeline is a path and a few numbers per file.
//! - A bad file (unreadable, not an image, truncated, too large) is recorded as failed with a
//!   readable error and tried again a bounded number of times, or when it changes; it never
//!   stops the pipeline.
//! - Shutdown ([`Shutdown::request`]): the watcher stops taking files, decoded images and
//!   batches in flight are captioned and committed, then every thread ends.
//! - The model can be replaced while running ([`ModelSwap::promote`]): batches in flight
//!   finish on the old model, later ones use the new one, and every caption row names its
//!   model.

mod batcher;
mod decode;
mod inference;
mod retrainer;
mod watcher;
mod writer;

pub use inference::{register_model, ActiveModel, ModelSwap};
pub use watcher::PathFilter;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::bounded;
use rusqlite::{Connection, OpenFlags};

use crate::config::Config;
use crate::data::image::DecodeOptions;
use crate::model::BeamOptions;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a folder")]
    NotAFolder { path: PathBuf },
    #[error("glob {pattern:?}: {reason}")]
    Glob { pattern: String, reason: String },
    #[error(
        "{db}: another `gaze watch` is already using this database (perhaps under another \
         name: the lock is on the file itself)"
    )]
    Locked { db: PathBuf },
    #[error("cannot watch for changes: {0}")]
    Notify(String),
    #[error("{path}: cannot record the model: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{db}: writing failed, stopping: {source}")]
    Write {
        db: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {reason}")]
    Registry { path: PathBuf, reason: String },
    #[error("the {0} thread panicked")]
    Panic(String),
}

/// Everything the pipeline needs, usually built from a [`Config`].
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub folders: Vec<PathBuf>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub follow_symlinks: bool,
    /// Poll at this interval instead of using kernel notifications.
    pub poll_interval: Option<Duration>,
    pub rescan_interval: Option<Duration>,
    pub stable_window: Duration,
    pub batch_size: usize,
    pub max_wait: Duration,
    pub decode_threads: usize,
    pub queue_depth: usize,
    pub beam: BeamOptions,
    pub decode: DecodeOptions,
    pub max_file_bytes: u64,
    pub max_attempts: u32,
    /// Stop once every file found has been captioned or has failed.
    pub exit_when_idle: bool,
    /// Scheduled retraining, when enabled.
    pub retrain: Option<crate::retrain::RetrainOptions>,
    /// Where retraining runs (cpu, cuda, cuda:N).
    pub device: String,
}

impl DaemonOptions {
    /// The options of `cfg`; an error names a `[retrain]` setting that is wrong (checked only
    /// when retraining is enabled).
    pub fn from_config(cfg: &Config) -> Result<Self, crate::config::ConfigError> {
        let ms = Duration::from_millis;
        Ok(DaemonOptions {
            folders: cfg.watch.folders.clone(),
            include: cfg.watch.include.clone(),
            exclude: cfg.watch.exclude.clone(),
            follow_symlinks: cfg.watch.follow_symlinks,
            poll_interval: cfg.watch.poll.then(|| ms(cfg.watch.poll_interval_ms)),
            rescan_interval: (cfg.watch.rescan_interval_secs > 0)
                .then(|| Duration::from_secs(cfg.watch.rescan_interval_secs)),
            stable_window: ms(cfg.watch.stable_ms),
            batch_size: cfg.pipeline.batch_size.max(1),
            max_wait: ms(cfg.pipeline.max_wait_ms),
            decode_threads: cfg.pipeline.decode_threads.max(1),
            queue_depth: cfg.pipeline.queue_depth.max(1),
            beam: BeamOptions {
                beam_size: cfg.model.beam_size.max(1),
                max_steps: cfg.model.max_steps,
                ..BeamOptions::default()
            },
            decode: DecodeOptions {
                max_pixels: cfg.limits.max_pixels,
                max_file_bytes: cfg.limits.max_file_bytes,
            },
            max_file_bytes: cfg.limits.max_file_bytes,
            max_attempts: cfg.limits.max_attempts.max(1),
            exit_when_idle: false,
            retrain: cfg
                .retrain
                .enabled
                .then(|| crate::retrain::RetrainOptions::from_config(cfg))
                .transpose()?,
            device: cfg.model.device.clone(),
        })
    }
}

/// Asks the pipeline to stop: no new files, finish what is in flight.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Images captioned by the model in this run.
    pub captioned: u64,
    /// Images done without running the model (their content already had a caption).
    pub reused: u64,
    /// Failures recorded in this run.
    pub failed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    captioned: AtomicU64,
    reused: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn summary(&self) -> RunSummary {
        RunSummary {
            captioned: self.captioned.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Paths handed to the pipeline and not yet committed, so no file is queued twice.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A panicking thread cannot leave the set half-changed; keep using it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn insert(&self, key: &str) {
        self.lock().insert(key.to_string());
    }
    fn contains(&self, key: &str) -> bool {
        self.lock().contains(key)
    }
    fn remove_all<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut set = self.lock();
        for k in keys {
            set.remove(k);
        }
    }
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// A file the watcher hands to the decode pool.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub path: PathBuf,
    /// The path as stored in the database (UTF-8).
    pub key: String,
    pub size: u64,
    pub mtime_ns: i64,
}

/// A decoded, normalised image on its way to a batch.
pub(crate) struct Decoded {
    pub job: Job,
    pub hash: String,
    pub width: u32,
    pub height: u32,
    /// CHW, 3 x 256 x 256, normalised.
    pub pixels: Vec<f32>,
}

/// A caption as the writer stores it.
#[derive(Debug, Clone)]
pub(crate) struct StoredCaption {
    pub text: String,
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    pub score: f32,
    pub finished: bool,
    pub alphas: Vec<Vec<f32>>,
    pub grid: usize,
}

pub(crate) enum Outcome {
    Captioned(StoredCaption),
    /// The content already has (or, earlier in this batch, gets) a caption by this model.
    AlreadyCaptioned,
    Failed(String),
}

pub(crate) struct ItemResult {
    pub job: Job,
    pub hash: String,
    pub width: u32,
    pub height: u32,
    pub outcome: Outcome,
}

pub(crate) struct BatchResult {
    pub model_id: i64,
    pub model_name: String,
    pub beam_size: usize,
    pub infer_time: Duration,
    pub items: Vec<ItemResult>,
}

/// What the writer commits.
pub(crate) enum WriterMsg {
    /// A complete file is queued.
    Pending {
        key: String,
        size: u64,
        mtime_ns: i64,
    },
    /// A path (file or folder) no longer exists.
    Gone {
        key: String,
    },
    /// A pipe, device or socket the include globs take: counted, never read.
    Skipped {
        key: String,
        kind: &'static str,
    },
    /// A skipped entry went, or is no longer a pipe, device or socket.
    Unskipped {
        key: String,
    },
    /// A queued file disappeared before it was read.
    Vanished {
        job: Job,
    },
    Failed {
        job: Job,
        hash: Option<String>,
        error: String,
    },
    Batch(BatchResult),
    /// The inference worker switched to `model_id`: queue stored images again as `recaption`
    /// says (after every batch of the old model, which came before on the queue).
    Swapped {
        model_id: i64,
        recaption: crate::config::Recaption,
    },
}

/// A running daemon.
pub struct Daemon {
    threads: Vec<(String, JoinHandle<Result<(), DaemonError>>)>,
    /// The retraining scheduler, joined after the pipeline has drained.
    retrainer: Option<JoinHandle<Result<(), DaemonError>>>,
    shutdown: Shutdown,
    swap: ModelSwap,
    counters: Arc<Counters>,
    db: PathBuf,
    _lock: File,
}

/// Registers the model the daemon was given and decides which model captions:
/// - a model not seen before becomes active, and stored images it has not captioned are
///   queued again (the user brought a new model);
/// - a known model that is no longer active (the registry moved on: a promotion, `gaze models
///   activate` or `rollback`) gives way to the registry's active model, when that one's file
///   still loads and has the recorded hash; nothing is queued again.
fn choose_model(
    store: &mut Store,
    model: Arc<crate::model::CaptionModel>,
) -> Result<ActiveModel, DaemonError> {
    let path = store.path().to_path_buf();
    let registry_err = |e: crate::store::registry::RegistryError| DaemonError::Registry {
        path: path.clone(),
        reason: e.to_string(),
    };
    let device = model.device.clone();
    let (configured, known) = inference::register_model_as(store.conn_mut(), model, false)?;
    let current = crate::store::registry::active_model(store.conn()).map_err(registry_err)?;
    if let Some(row) = current.filter(|r| known && r.id != configured.id) {
        match load_registered(&row, &device) {
            Ok(m) => {
                tracing::info!(
                    model = %row.name,
                    model_id = row.id,
                    configured = %configured.name,
                    "keeping the registry's active model"
                );
                return Ok(ActiveModel {
                    id: row.id,
                    name: row.name,
                    model: Arc::new(m),
                });
            }
            Err(reason) => tracing::warn!(
                model_id = row.id,
                %reason,
                "the registry's active model cannot be used; the configured model takes over"
            ),
        }
    }
    let now = crate::store::unix_now();
    let changed = crate::store::registry::activate(store.conn(), configured.id, "start", now)
        .map_err(registry_err)?
        .is_some()
        || !known;
    let requeued = if changed {
        crate::store::write::requeue_for_model(store.conn(), configured.id, now).map_err(
            |source| DaemonError::Model {
                path: configured.model.source.clone(),
                source,
            },
        )?
    } else {
        0
    };
    tracing::info!(
        model = %configured.name,
        model_id = configured.id,
        requeued,
        db = %path.display(),
        "model active"
    );
    Ok(configured)
}

/// Loads a registered model's file, checking its hash against the registry's.
pub(crate) fn load_registered(
    row: &crate::store::registry::ModelRow,
    device: &candle_core::Device,
) -> Result<crate::model::CaptionModel, String> {
    let path = Path::new(&row.path);
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    if hash != row.content_hash {
        return Err(format!(
            "{}: the file changed since it was registered (hash {} instead of {})",
            path.display(),
            &hash[..12],
            &row.content_hash[..row.content_hash.len().min(12)]
        ));
    }
    drop(bytes);
    crate::model::CaptionModel::load(path, &crate::model::LoadOptions::default(), device)
        .map_err(|e| e.to_string())
}

/// Takes the single-writer lock of the database at `db`: an advisory lock (`flock`) on the
/// database file itself, so every name that reaches it (a symbolic link, a hard link, another
/// path) meets the same lock. The file is created empty if missing (SQLite reads a 0-byte file
/// as an empty database).
///
/// SQLite locks with POSIX record locks, which `flock` does not touch; but closing *any*
/// descriptor of a file drops a process's record locks on it. So the returned descriptor stays
/// open until the daemon has ended, and [`is_running`] is called before a connection is opened.
fn lock_database(db: &Path) -> Result<File, DaemonError> {
    let io = |source| DaemonError::Io {
        path: db.to_path_buf(),
        source,
    };
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(db)
            .map_err(io)?
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other(format!(
            "not a regular file (it is {})",
            crate::files::kind_of(meta.file_type())
        ))));
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::Locked {
            db: db.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

/// Whether a daemon holds the database's lock now (under any of the file's names). Call it
/// before opening a connection in this process (see [`lock_database`]).
pub fn is_running(db: &Path) -> bool {
    let Ok((file, _)) = crate::files::open_regular(db, true) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

impl Daemon {
    /// Opens (and upgrades) the database, records `model` as the active model (putting back
    /// in the queue what it has not captioned), and starts every thread.
    pub fn start(
        db: &Path,
        model: Arc<crate::model::CaptionModel>,
        opts: DaemonOptions,
    ) -> Result<Daemon, DaemonError> {
        let lock = lock_database(db)?;

        let mut store = Store::open(db)?;
        let active = choose_model(&mut store, model)?;

        let mut roots = Vec::new();
        for folder in &opts.folders {
            let root = std::fs::canonicalize(folder).map_err(|source| DaemonError::Io {
                path: folder.clone(),
                source,
            })?;
            if !root.is_dir() {
                return Err(DaemonError::NotAFolder {
                    path: folder.clone(),
                });
            }
            if root.to_str().is_none() {
                return Err(DaemonError::Io {
                    path: folder.clone(),
                    source: std::io::Error::other("the folder's path is not valid UTF-8"),
                });
            }
            roots.push(root);
        }
        let filter = PathFilter::new(&opts.include, &opts.exclude)?;
        let reader = |purpose: &str| -> Result<Connection, DaemonError> {
            let conn = Connection::open_with_flags(
                db,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|c| c.busy_timeout(crate::store::BUSY_TIMEOUT).map(|_| c))
            .map_err(|e| StoreError::sqlite(db, format!("opening a reader for {purpose}"), e))?;
            Ok(conn)
        };

        let shutdown = Shutdown::default();
        let swap = ModelSwap::default();
        let rescan = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let in_flight = InFlight::default();

        let (job_tx, job_rx) = bounded::<Job>(opts.queue_depth);
        let (decoded_tx, decoded_rx) = bounded::<Decoded>(opts.batch_size);
        let (batch_tx, batch_rx) = bounded::<Vec<Decoded>>(1);
        let (write_tx, write_rx) = bounded::<WriterMsg>(1024);

        let watch = watcher::Watcher::new(watcher::WatcherParts {
            roots,
            filter,
            follow_symlinks: opts.follow_symlinks,
            poll_interval: opts.poll_interval,
            rescan_interval: opts.rescan_interval,
            stable_window: opts.stable_window,
            max_attempts: opts.max_attempts,
            exit_when_idle: opts.exit_when_idle,
            db: reader("the watcher")?,
            jobs: job_tx,
            writer: write_tx.clone(),
            in_flight: in_flight.clone(),
            shutdown: shutdown.clone(),
            rescan: rescan.clone(),
        })?;

        let mut threads = Vec::new();
        let spawn = |name: String,
                     threads: &mut Vec<(String, JoinHandle<Result<(), DaemonError>>)>,
                     f: Box<dyn FnOnce() -> Result<(), DaemonError> + Send>|
         -> Result<(), DaemonError> {
            let handle = std::thread::Builder::new()
                .name(format!("gaze-{name}"))
                .spawn(f)
                .map_err(|source| DaemonError::Io {
                    path: PathBuf::from(format!("<thread {name}>")),
                    source,
                })?;
            threads.push((name, handle));
            Ok(())
        };

        let writer_parts = writer::Writer {
            store,
            rescan,
            rx: write_rx,
            in_flight: in_flight.clone(),
            counters: counters.clone(),
            shutdown: shutdown.clone(),
        };
        spawn(
            "writer".into(),
            &mut threads,
            Box::new(move || writer_parts.run()),
        )?;
        let retrainer = match &opts.retrain {
            Some(settings) => {
                let parts = retrainer::Retrainer::new(
                    db,
                    settings.clone(),
                    opts.device.clone(),
                    active.clone(),
                    swap.clone(),
                    shutdown.clone(),
                )?;
                Some(
                    std::thread::Builder::new()
                        .name("gaze-retrain".into())
                        .spawn(move || parts.run())
                        .map_err(|source| DaemonError::Io {
                            path: PathBuf::from("<thread retrain>"),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let inference_parts = inference::Worker {
            rx: batch_rx,
            tx: write_tx.clone(),
            current: active,
            swap: swap.clone(),
            beam: opts.beam.clone(),
            db: reader("inference")?,
        };
        spawn(
            "inference".into(),
            &mut threads,
            Box::new(move || inference_parts.run()),
        )?;
        let (batch_size, max_wait) = (opts.batch_size, opts.max_wait);
        spawn(
            "batcher".into(),
            &mut threads,
            Box::new(move || {
                batcher::run(decoded_rx, batch_tx, batch_size, max_wait);
                Ok(())
            }),
        )?;
        for i in 0..opts.decode_threads {
            let worker = decode::Worker {
                rx: job_rx.clone(),
                tx: decoded_tx.clone(),
                writer: write_tx.clone(),
                decode: opts.decode,
                max_file_bytes: opts.max_file_bytes,
                follow_symlinks: opts.follow_symlinks,
                shutdown: shutdown.clone(),
            };
            spawn(
                format!("decode-{i}"),
                &mut threads,
                Box::new(move || {
                    worker.run();
                    Ok(())
                }),
            )?;
        }
        drop((job_rx, decoded_tx, write_tx));
        spawn(
            "watcher".into(),
            &mut threads,
            Box::new(move || watch.run()),
        )?;

        Ok(Daemon {
            threads,
            retrainer,
            shutdown,
            swap,
            counters,
            db: db.to_path_buf(),
            _lock: lock,
        })
    }

    /// A handle that stops the daemon (for signal handlers).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The slot through which a new model is promoted into the running daemon.
    pub fn model_swap(&self) -> ModelSwap {
        self.swap.clone()
    }

    /// Counts so far.
    pub fn summary(&self) -> RunSummary {
        self.counters.summary()
    }

    /// Waits for every thread to end (after a shutdown request, an idle exit, or a fatal
    /// error) and reports the first error.
    pub fn wait(mut self) -> Result<RunSummary, DaemonError> {
        let mut first_error = None;
        // The watcher was started last; join it first so the pipeline drains in order.
        while let Some((name, handle)) = self.threads.pop() {
            let result = match handle.join() {
                Ok(r) => r,
                Err(_) => Err(DaemonError::Panic(name)),
            };
            if let Err(e) = result {
                self.shutdown.request();
                first_error.get_or_insert(e);
            }
        }
        // The pipeline has ended (shutdown, idle exit or error): stop retraining too.
        if let Some(handle) = self.retrainer.take() {
            self.shutdown.request();
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(DaemonError::Panic("retrain".into())));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        // Every connection of the pipeline is closed now. The last to close may have been a
        // read-only one, which cannot fold the WAL back into the database file; a final
        // checkpoint does, so a stopped daemon leaves one complete file (a plain copy of it is
        // a backup). Still under the lock.
        if let Err(e) = Store::open(&self.db).and_then(|s| s.checkpoint()) {
            tracing::warn!(error = %e, "final checkpoint failed; the -wal file keeps the commits");
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.counters.summary()),
        }
    }
}
