//! The folder-watching captioning daemon: stages on their own threads that talk only in
//! messages ([`msg`]) over channels. This module starts them, wires the channels, and waits
//! for them to end.
//!
//! ```text
//!            Found               Job                  Decoded             Vec<Decoded>
//! discover --------> admit ------------> decode pool ----------> batcher -------------> inference
//! (globs, notify,    (in-flight set,     (read, hash, decode,    (max batch,           (batched beam
//!  walks, settling)   attempts policy)    resize, normalise)      max wait)             search)
//!                     |     ^                 |                                           |
//!                     |     | Ack             | WriterMsg:                                | WriterMsg:
//!   WriterMsg:        |     | (committed      | Failed, Vanished                          | Batch,
//!   Pending, Gone,    |     |  keys, swap)    v                                           | Swapped
//!   Skipped ----------'---> writer (the only database writer) <---------------------------'
//!
//! models: chooses and loads the model at start. retrainer: promotes into inference's swap slot.
//! ```
//!
//! Guarantees:
//! - SQLite is the durable queue. An image is done only when the transaction holding its
//!   caption has committed; the walk at start takes every file that is not done, so killing
//!   the process at any moment loses nothing. `captions` is unique per (content, model), so
//!   nothing is captioned twice by one model, and the same bytes under two names share one
//!   caption.
//! - Memory is bounded whatever the burst: each channel between stages is bounded (the
//!   writer's acknowledgements are bounded by the files in flight), and what waits before the
//!   pipeline is a path and a few numbers per file.
//! - A bad file (unreadable, not an image, truncated, too large) is recorded as failed with a
//!   readable error and tried again a bounded number of times, or when it changes; it never
//!   stops the pipeline.
//! - Shutdown ([`Shutdown::request`]): admission stops taking files, decoded images and
//!   batches in flight are captioned and committed, then every thread ends.
//! - The model can be replaced while running ([`ModelSwap::promote`]): batches in flight
//!   finish on the old model, later ones use the new one, and every caption row names its
//!   model. The new model's work is queued in the store, and admission takes it from there.
//! - Database connections: the writer (read-write), admission and inference (read-only), and
//!   the retrainer when retraining is on. The single-writer lock is a `flock` on the database
//!   file, held until the final checkpoint.

mod admit;
mod batcher;
mod decode;
mod discover;
mod inference;
mod models;
mod msg;
mod retrainer;
pub mod worker;
mod writer;

pub(crate) use decode::prepare as prepare_image;
pub use discover::PathFilter;
pub use inference::ModelSwap;
pub(crate) use models::load_registered as load_registered_model;
pub use models::{register_model, ActiveModel};
pub(crate) use msg::{Answer, Decoded, Job, Reply};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded};

use crate::config::Config;
use crate::data::image::DecodeOptions;
use crate::model::BeamOptions;
use crate::store::path_key::Roots;
use crate::store::{BoxedStore, Location, Store, StoreError};
use msg::{Ack, Found, WriterMsg};

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
    #[error(
        "{db}: `gaze worker` needs a shared PostgreSQL store (a postgres:// URL); a SQLite \
         file serves one machine, where `gaze watch` does everything"
    )]
    NeedsServer { db: String },
    #[error("cannot watch for changes: {0}")]
    Notify(String),
    #[error("{db}: writing failed, stopping: {source}")]
    Write {
        db: PathBuf,
        // Boxed: a store error is large, and every stage returns this type.
        #[source]
        source: Box<StoreError>,
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
    /// The search; its `bad_endings` ids are replaced, for each model, by the ids of
    /// `bad_ending_words` in that model's word map.
    pub beam: BeamOptions,
    /// Words a caption may not end on (empty: the rule is off).
    pub bad_ending_words: Vec<String>,
    pub decode: DecodeOptions,
    pub max_file_bytes: u64,
    pub max_attempts: u32,
    /// Stop once every file found has been captioned or has failed.
    pub exit_when_idle: bool,
    /// Decoded HTTP uploads waiting for a batch (`[http] queue_depth`).
    pub upload_queue: usize,
    /// Scheduled retraining, when enabled.
    pub retrain: Option<crate::retrain::RetrainOptions>,
    /// Where retraining runs (cpu, cuda, cuda:N).
    pub device: String,
    /// How paths become stored keys (`[watch] roots`).
    pub keys: Roots,
}

impl DaemonOptions {
    /// The options of `cfg`; an error names a `[retrain]` setting that is wrong (checked only
    /// when retraining is enabled).
    pub fn from_config(cfg: &Config) -> Result<Self, crate::config::ConfigError> {
        let ms = Duration::from_millis;
        let (beam, bad_ending_words) = cfg.search()?;
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
            beam,
            bad_ending_words,
            decode: DecodeOptions {
                max_pixels: cfg.limits.max_pixels,
                max_file_bytes: cfg.limits.max_file_bytes,
            },
            max_file_bytes: cfg.limits.max_file_bytes,
            max_attempts: cfg.limits.max_attempts.max(1),
            exit_when_idle: false,
            upload_queue: cfg.http.queue_depth.max(1),
            retrain: cfg
                .retrain
                .enabled
                .then(|| crate::retrain::RetrainOptions::from_config(cfg))
                .transpose()?,
            device: cfg.model.device.clone(),
            keys: keys_of(cfg)?,
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
    pub(crate) fn summary(&self) -> RunSummary {
        RunSummary {
            captioned: self.captioned.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A running daemon.
pub struct Daemon {
    threads: Vec<Thread>,
    /// The retraining scheduler, joined after the pipeline has drained.
    retrainer: Option<JoinHandle<Result<(), DaemonError>>>,
    shutdown: Shutdown,
    swap: ModelSwap,
    counters: Arc<Counters>,
    telemetry: Arc<crate::telemetry::Telemetry>,
    /// Where HTTP uploads join the batches; `None` without a model.
    uploads: Option<Uploads>,
    /// The model captioning at start (`None`: `--no-caption`).
    active: Option<ActiveModel>,
    opts: DaemonOptions,
    /// The watched folders, every link resolved.
    roots: Vec<PathBuf>,
    db: Location,
    /// The single-writer lock of a SQLite file (a shared server needs none).
    _lock: Option<File>,
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

/// A stage's thread and its name (for the error when it panics).
type Thread = (String, JoinHandle<Result<(), DaemonError>>);

/// Complete files waiting for admission; discovery waits when admission is this far behind.
const FOUND_QUEUE: usize = 1024;
/// Messages waiting for the writer.
const WRITER_QUEUE: usize = 1024;

fn spawn(
    name: &str,
    f: impl FnOnce() -> Result<(), DaemonError> + Send + 'static,
) -> Result<Thread, DaemonError> {
    let handle = std::thread::Builder::new()
        .name(format!("gaze-{name}"))
        .spawn(f)
        .map_err(|source| DaemonError::Io {
            path: PathBuf::from(format!("<thread {name}>")),
            source,
        })?;
    Ok((name.to_string(), handle))
}

/// The watched folders made absolute; each must be a folder whose path is UTF-8.
fn watched_roots(folders: &[PathBuf]) -> Result<Vec<PathBuf>, DaemonError> {
    let mut roots = Vec::new();
    for folder in folders {
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
    Ok(roots)
}

/// A read-only store for a stage that only reads.
fn open_reader(db: &Location) -> Result<BoxedStore, DaemonError> {
    Ok(crate::store::open_read_only(db)?)
}

/// Starts the retraining scheduler when retraining is on.
fn start_retrainer(
    db: &Location,
    opts: &DaemonOptions,
    active: &ActiveModel,
    swap: &ModelSwap,
    shutdown: &Shutdown,
) -> Result<Option<JoinHandle<Result<(), DaemonError>>>, DaemonError> {
    let Some(settings) = &opts.retrain else {
        return Ok(None);
    };
    let parts = retrainer::Retrainer::new(
        db,
        settings.clone(),
        opts.device.clone(),
        active.clone(),
        swap.clone(),
        shutdown.clone(),
    )?;
    Ok(Some(spawn("retrain", move || parts.run())?.1))
}

/// Where images uploaded over HTTP join the batches of watched files: a bounded queue, so a
/// burst of uploads meets a full queue (and the client a 503) instead of growing a backlog.
#[derive(Clone)]
pub struct Uploads(crossbeam_channel::Sender<Decoded>);

/// Why an upload was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    Full,
    /// The pipeline is stopping.
    Closed,
}

impl Uploads {
    pub(crate) fn try_send(&self, d: Decoded) -> Result<(), QueueRefusal> {
        self.0.try_send(d).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => QueueRefusal::Full,
            crossbeam_channel::TrySendError::Disconnected(_) => QueueRefusal::Closed,
        })
    }
}

/// The stages that caption: the decode pool, the batcher and the inference worker, between
/// the queue of jobs (from admission, or from a worker's claims) and the writer.
pub(crate) struct CaptionStages {
    pub active: ActiveModel,
    pub swap: ModelSwap,
    pub db: Location,
    pub job_rx: crossbeam_channel::Receiver<Job>,
    /// HTTP uploads, decoded by the server (`gaze watch --http`, `gaze serve`).
    pub uploads: Option<crossbeam_channel::Receiver<Decoded>>,
    pub write_tx: crossbeam_channel::Sender<WriterMsg>,
    pub shutdown: Shutdown,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

impl CaptionStages {
    /// Starts them; they end when the job queue's senders are gone.
    pub fn spawn(self, opts: &DaemonOptions) -> Result<Vec<Thread>, DaemonError> {
        let (decoded_tx, decoded_rx) = bounded::<Decoded>(opts.batch_size);
        let (batch_tx, batch_rx) = bounded::<Vec<Decoded>>(1);
        let inference = inference::Worker::new(
            batch_rx,
            self.write_tx.clone(),
            self.active,
            self.swap,
            opts,
            open_reader(&self.db)?,
            self.telemetry.clone(),
        );
        let mut threads = vec![spawn("inference", move || inference.run())?];
        let (batch_size, max_wait) = (opts.batch_size, opts.max_wait);
        let uploads = self.uploads;
        threads.push(spawn("batcher", move || {
            batcher::run(decoded_rx, uploads, batch_tx, batch_size, max_wait);
            Ok(())
        })?);
        for i in 0..opts.decode_threads {
            let worker = decode::Worker {
                rx: self.job_rx.clone(),
                tx: decoded_tx.clone(),
                writer: self.write_tx.clone(),
                decode: opts.decode,
                max_file_bytes: opts.max_file_bytes,
                follow_symlinks: opts.follow_symlinks,
                shutdown: self.shutdown.clone(),
                telemetry: self.telemetry.clone(),
            };
            threads.push(spawn(&format!("decode-{i}"), move || {
                worker.run();
                Ok(())
            })?);
        }
        Ok(threads)
    }
}

/// The named roots of `[watch] roots`, checked.
pub fn keys_of(cfg: &Config) -> Result<Roots, crate::config::ConfigError> {
    Roots::new(cfg.watch.roots.clone())
        .map_err(|reason| crate::config::ConfigError::Invalid(format!("watch.roots: {reason}")))
}

impl Daemon {
    /// Opens (and upgrades) the database, records `model` as the active model (putting back
    /// in the queue what it has not captioned), and starts every stage.
    ///
    /// Without a model (`gaze watch --no-caption`) it only discovers files and records them
    /// pending, for `gaze worker`s to caption: no decoding, inference or retraining.
    pub fn start(
        db: &Location,
        model: Option<Arc<crate::model::CaptionModel>>,
        opts: DaemonOptions,
    ) -> Result<Daemon, DaemonError> {
        let lock = match db {
            Location::Sqlite(path) => Some(lock_database(path)?),
            // Several processes on several machines share a server; leases keep them apart.
            Location::Postgres(_) => None,
        };
        let mut store = crate::store::open(db)?;
        let active = match model {
            Some(model) => Some(models::choose_model(&mut *store, model)?),
            None => None,
        };
        let roots = watched_roots(&opts.folders)?;
        let watched = roots.clone();
        let filter = PathFilter::new(&opts.include, &opts.exclude)?;

        let shutdown = Shutdown::default();
        let swap = ModelSwap::default();
        let counters = Arc::new(Counters::default());
        let telemetry = Arc::new(crate::telemetry::Telemetry::default());

        let (found_tx, found_rx) = bounded::<Found>(FOUND_QUEUE);
        let (job_tx, job_rx) = bounded::<Job>(opts.queue_depth);
        let (write_tx, write_rx) = bounded::<WriterMsg>(WRITER_QUEUE);
        // Unbounded so the writer never waits on admission, which may be waiting on it; there
        // is at most one acknowledgement per file in flight.
        let (ack_tx, ack_rx) = unbounded::<Ack>();
        let (alive_tx, alive_rx) = bounded::<()>(1);

        let discover = discover::Discover::new(discover::DiscoverParts {
            roots: roots.clone(),
            filter: filter.clone(),
            follow_symlinks: opts.follow_symlinks,
            poll_interval: opts.poll_interval,
            rescan_interval: opts.rescan_interval,
            stable_window: opts.stable_window,
            out: found_tx,
            admit_alive: alive_rx,
            shutdown: shutdown.clone(),
        })?;
        let admit = admit::Admit::new(admit::AdmitParts {
            roots,
            filter,
            follow_symlinks: opts.follow_symlinks,
            max_attempts: opts.max_attempts,
            exit_when_idle: opts.exit_when_idle,
            keys: opts.keys.clone(),
            caption: active.is_some(),
            db: open_reader(db)?,
            found: found_rx,
            acks: ack_rx,
            jobs: job_tx,
            writer: write_tx.clone(),
            shutdown: shutdown.clone(),
            _alive: alive_tx,
        });
        let writer = writer::Writer {
            store,
            rx: write_rx,
            acks: ack_tx,
            counters: counters.clone(),
            shutdown: shutdown.clone(),
            leases: None,
            telemetry: telemetry.clone(),
        };
        // Downstream first, so every stage's consumer runs before it does.
        let mut threads = vec![spawn("writer", move || writer.run())?];
        let mut retrainer = None;
        let mut uploads = None;
        match &active {
            Some(active) => {
                retrainer = start_retrainer(db, &opts, active, &swap, &shutdown)?;
                let (upload_tx, upload_rx) = bounded::<Decoded>(opts.upload_queue.max(1));
                uploads = Some(Uploads(upload_tx));
                let stages = CaptionStages {
                    active: active.clone(),
                    swap: swap.clone(),
                    db: db.clone(),
                    job_rx: job_rx.clone(),
                    uploads: Some(upload_rx),
                    write_tx: write_tx.clone(),
                    shutdown: shutdown.clone(),
                    telemetry: telemetry.clone(),
                };
                threads.extend(stages.spawn(&opts)?);
            }
            None if opts.retrain.is_some() => {
                return Err(DaemonError::Registry {
                    path: PathBuf::from(db.to_string()),
                    reason: "retraining needs a model: it cannot run in a daemon started with \
                             --no-caption (run `gaze retrain --now`, or retrain in a worker's \
                             machine with `gaze watch --retrain`)"
                        .into(),
                });
            }
            None => {}
        }
        // Each stage ends when the senders into it are gone: keep only the stages' own.
        drop((job_rx, write_tx));
        threads.push(spawn("admit", move || admit.run())?);
        threads.push(spawn("discover", move || discover.run())?);

        Ok(Daemon {
            threads,
            retrainer,
            shutdown,
            swap,
            counters,
            telemetry,
            uploads,
            active,
            opts,
            roots: watched,
            db: db.clone(),
            _lock: lock,
        })
    }

    /// The watched folders, every link resolved.
    pub fn watched(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The run's counts, shared with the writer (for `GET /metrics`).
    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// What the stages measure (for `GET /metrics`).
    pub fn telemetry(&self) -> Arc<crate::telemetry::Telemetry> {
        self.telemetry.clone()
    }

    /// Where HTTP uploads join the batches; `None` when no model captions (`--no-caption`).
    pub fn uploads(&self) -> Option<Uploads> {
        self.uploads.clone()
    }

    /// The model captioning at start (the running one may since have been swapped).
    pub fn started_with(&self) -> Option<&ActiveModel> {
        self.active.as_ref()
    }

    /// The options the daemon runs with.
    pub fn options(&self) -> &DaemonOptions {
        &self.opts
    }

    /// Where the store is.
    pub fn location(&self) -> &Location {
        &self.db
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
        // Discovery was started last; join it first so the pipeline drains in order.
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
        if let Some(path) = self.db.sqlite_path() {
            if let Err(e) = Store::open(path).and_then(|s| s.checkpoint()) {
                tracing::warn!(error = %e, "final checkpoint failed; the -wal file keeps the commits");
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.counters.summary()),
        }
    }
}
