//! `gaze worker`: captions the images of a shared PostgreSQL store, on any number of machines.
//!
//! A worker does not watch folders (a `gaze watch --no-caption` scanner, or a full `gaze watch`,
//! records what arrives). It claims pending images in batches under a lease, reads them through
//! its own `[watch] roots` mapping, and runs the same decode, batch and inference stages as the
//! daemon. The writer commits a result only while the worker still holds the image's lease, in
//! the transaction that stores the caption ([`super::writer`]), so a worker that was paused or
//! cut off past its lease never writes over the work of the one that took the image over.
//!
//! ```text
//! claim --Job(lease)--> decode --> batcher --> inference --> writer (fenced commits)
//!   ^  `-- extends its leases, reports itself                  |
//!   `---------------------------- Ack -------------------------'
//! follow: LISTEN for activations (and poll) --> ModelSwap --> inference
//! ```
//!
//! Threads: `claim` owns the leases held (claims, extends them while work is in flight, gives
//! back what is left at a stop); `follow` moves the worker to the registry's active model
//! within moments of an activation, loading the file only if its hash matches the registry's;
//! batches in flight finish on the old model.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use super::models::{self, ActiveModel};
use super::msg::{Ack, Job, JobLease, WriterMsg};
use super::writer::{self, LeaseHolder};
use super::{
    spawn, CaptionStages, Counters, DaemonError, DaemonOptions, ModelSwap, RunSummary, Shutdown,
    Thread,
};
use crate::config::Recaption;
use crate::model::CaptionModel;
use crate::store::api::{Claim, WorkerReport};
use crate::store::postgres::lease::{host_name, ActivationListener};
use crate::store::{unix_now, BoxedStore, Location};

/// What a worker needs beyond the pipeline's settings.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Batch size, decode threads, beam, limits, attempts, roots, exit when idle.
    pub pipeline: DaemonOptions,
    /// How long a claim lasts without being extended.
    pub lease_seconds: f64,
    /// Where this machine finds registered model files whose recorded path is not here.
    pub models_dir: Option<PathBuf>,
    /// What a model swap queues again (as `[retrain] recaption`).
    pub recaption: Recaption,
    /// This worker's name in the store (`host:pid` unless given).
    pub id: String,
}

/// The name a worker takes unless told otherwise: this host and process.
pub fn default_worker_id() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// How often a worker reports itself and looks at the registry.
const REPORT_EVERY: Duration = Duration::from_secs(2);
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// How long an idle claimer waits before claiming again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often a worker with no usable model tries again.
const MODEL_RETRY: Duration = Duration::from_secs(5);

/// A running worker.
pub struct Worker {
    threads: Vec<Thread>,
    shutdown: Shutdown,
    counters: Arc<Counters>,
}

impl Worker {
    /// Connects, settles the model (`model` registered and activated as `gaze watch --model`
    /// does; without one, the registry's active model, waiting until one loads) and starts
    /// every stage.
    pub fn start(
        db: &Location,
        model: Option<Arc<CaptionModel>>,
        device: candle_core::Device,
        opts: WorkerOptions,
    ) -> Result<Worker, DaemonError> {
        let Location::Postgres(url) = db else {
            return Err(DaemonError::NeedsServer { db: db.to_string() });
        };
        let mut store = crate::store::open(db)?;
        let Some(leases) = store.leases() else {
            return Err(DaemonError::NeedsServer { db: db.to_string() });
        };
        // The writer's transactions take milliseconds; one idle for longer than two leases
        // belongs to a worker that was paused or cut off, and its locks must not outlive it.
        let idle_limit = (opts.lease_seconds * 2.0).ceil().max(10.0) as u64;
        leases.limit_idle_transactions(idle_limit)?;
        let shutdown = Shutdown::default();
        let counters = Arc::new(Counters::default());
        let active = match model {
            Some(model) => models::choose_model(&mut *store, model)?,
            None => match wait_for_model(&mut store, &device, &opts, &shutdown)? {
                Some(active) => active,
                None => {
                    return Ok(Worker {
                        threads: Vec::new(),
                        shutdown,
                        counters,
                    })
                }
            },
        };
        tracing::info!(
            worker = %opts.id,
            model = %active.name,
            model_id = active.id,
            db = %db,
            "worker started"
        );

        let p = &opts.pipeline;
        // One batch in inference, one decoding, one waiting: enough to keep the model busy.
        let capacity = (p.batch_size * 3).min(p.queue_depth.max(p.batch_size));
        let (job_tx, job_rx) = bounded::<Job>(capacity);
        let (write_tx, write_rx) = bounded::<WriterMsg>(super::WRITER_QUEUE);
        let (ack_tx, ack_rx) = unbounded::<Ack>();
        let swap = ModelSwap::default();
        let model_id = Arc::new(AtomicI64::new(active.id));
        let blocked = Blocked::default();
        let telemetry = Arc::new(crate::telemetry::Telemetry::default());

        let writer = writer::Writer {
            store,
            rx: write_rx,
            acks: ack_tx,
            counters: counters.clone(),
            shutdown: shutdown.clone(),
            leases: Some(LeaseHolder {
                worker: opts.id.clone(),
                max_attempts: p.max_attempts,
            }),
            telemetry: telemetry.clone(),
        };
        let mut threads = vec![spawn("writer", move || writer.run())?];
        let stages = CaptionStages {
            active: active.clone(),
            swap: swap.clone(),
            db: db.clone(),
            job_rx,
            uploads: None,
            write_tx: write_tx.clone(),
            shutdown: shutdown.clone(),
            telemetry,
        };
        threads.extend(stages.spawn(p)?);
        drop(write_tx);

        let follow = Follow {
            url: url.clone(),
            db: db.clone(),
            store: crate::store::open_read_only(db)?,
            device,
            opts: opts.clone(),
            current: active.id,
            unloadable: None,
            model_id: model_id.clone(),
            blocked: blocked.clone(),
            swap,
            shutdown: shutdown.clone(),
        };
        threads.push(spawn("follow", move || follow.run())?);
        let claim = Claimer {
            store: crate::store::open(db)?,
            opts,
            capacity,
            jobs: Some(job_tx),
            acks: ack_rx,
            in_flight: HashMap::new(),
            counters: counters.clone(),
            model_id,
            blocked,
            started_at: unix_now(),
            shutdown: shutdown.clone(),
        };
        threads.push(spawn("claim", move || claim.run())?);
        Ok(Worker {
            threads,
            shutdown,
            counters,
        })
    }

    /// A handle that stops the worker (for signal handlers).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Waits for every thread to end and reports the first error.
    pub fn wait(mut self) -> Result<RunSummary, DaemonError> {
        let mut first_error = None;
        while let Some((name, handle)) = self.threads.pop() {
            let result = handle.join().unwrap_or(Err(DaemonError::Panic(name)));
            if let Err(e) = result {
                self.shutdown.request();
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.counters.summary()),
        }
    }
}

/// Loads the registry's active model, trying again until one loads or a stop is asked for
/// (`None`). Meanwhile the worker reports why it claims nothing.
fn wait_for_model(
    store: &mut BoxedStore,
    device: &candle_core::Device,
    opts: &WorkerOptions,
    shutdown: &Shutdown,
) -> Result<Option<ActiveModel>, DaemonError> {
    let started_at = unix_now();
    loop {
        let reason = match store.active_model()? {
            Some(row) => match models::load_registered(&row, device, opts.models_dir.as_deref()) {
                Ok(model) => {
                    return Ok(Some(ActiveModel {
                        id: row.id,
                        name: row.name,
                        model: Arc::new(model),
                    }))
                }
                Err(reason) => format!("cannot load the active model {}: {reason}", row.id),
            },
            None => "no model is active in the registry; give one with --model".to_string(),
        };
        tracing::warn!(worker = %opts.id, %reason, "claiming nothing until a model loads");
        if let Some(leases) = store.leases() {
            let report = WorkerReport {
                id: &opts.id,
                host: &host_name(),
                pid: std::process::id() as i64,
                model_id: None,
                started_at,
                images_done: 0,
                images_per_second: 0.0,
                error: Some(&reason),
            };
            if let Err(e) = leases.report_worker(&report) {
                tracing::warn!(error = %e, "cannot report the worker");
            }
        }
        let until = Instant::now() + MODEL_RETRY;
        while Instant::now() < until {
            if shutdown.is_requested() {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Claims images, keeps their leases alive while they are in flight, and reports the worker.
struct Claimer {
    store: BoxedStore,
    opts: WorkerOptions,
    /// Images in flight at most.
    capacity: usize,
    /// Dropped at a stop, which drains the pipeline.
    jobs: Option<Sender<Job>>,
    acks: Receiver<Ack>,
    /// Key -> lease token of every image claimed and not yet committed.
    in_flight: HashMap<String, i64>,
    counters: Arc<Counters>,
    model_id: Arc<AtomicI64>,
    blocked: Blocked,
    started_at: f64,
    shutdown: Shutdown,
}

/// Why the worker claims nothing now (the registry's active model does not load here), if so.
#[derive(Clone, Default)]
struct Blocked(Arc<Mutex<Option<String>>>);

impl Blocked {
    fn set(&self, reason: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }
    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Claimer {
    fn run(mut self) -> Result<(), DaemonError> {
        let lease = self.opts.lease_seconds;
        let extend_every = Duration::from_secs_f64((lease / 3.0).max(0.05));
        let (mut last_extend, mut last_report) = (Instant::now(), Instant::now());
        let mut done_at_report = 0u64;
        while !self.shutdown.is_requested() {
            if !self.take_acks(IDLE_WAIT) {
                break;
            }
            if last_extend.elapsed() >= extend_every {
                last_extend = Instant::now();
                self.extend();
            }
            if last_report.elapsed() >= REPORT_EVERY {
                let done = self.done();
                let rate = (done - done_at_report) as f64 / last_report.elapsed().as_secs_f64();
                (last_report, done_at_report) = (Instant::now(), done);
                let blocked = self.blocked.get();
                self.report(rate, blocked.as_deref());
            }
            // A model this machine cannot load is active: claim nothing rather than caption
            // with the old one.
            if self.blocked.get().is_some() {
                continue;
            }
            let room = self.capacity.saturating_sub(self.in_flight.len());
            let batch = self.opts.pipeline.batch_size;
            if room < batch.min(self.capacity) && !self.in_flight.is_empty() {
                continue;
            }
            let claimed = match self.claim(room) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming failed; trying again");
                    std::thread::sleep(IDLE_WAIT);
                    continue;
                }
            };
            if claimed == 0 && self.in_flight.is_empty() && self.opts.pipeline.exit_when_idle {
                match self.store.status(unix_now()) {
                    Ok(s) if s.backlog == 0 => {
                        tracing::info!("nothing left to caption; exiting");
                        break;
                    }
                    _ => {}
                }
            }
        }
        self.stop();
        Ok(())
    }

    fn done(&self) -> u64 {
        let s = self.counters.summary();
        s.captioned + s.reused
    }

    /// Frees the slots of committed images; waits up to `wait` for the first ack. False when
    /// the pipeline is gone.
    fn take_acks(&mut self, wait: Duration) -> bool {
        let mut next = self.acks.recv_timeout(wait);
        loop {
            match next {
                Ok(Ack::Committed(keys)) => {
                    for key in keys {
                        self.in_flight.remove(&key);
                    }
                }
                Ok(Ack::Swapped) => {}
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
            next = self.acks.recv_timeout(Duration::ZERO);
        }
    }

    /// Claims up to `room` images and hands them to the decode pool. Returns how many.
    fn claim(&mut self, room: usize) -> Result<usize, crate::store::StoreError> {
        if room == 0 {
            return Ok(0);
        }
        let (id, lease) = (self.opts.id.clone(), self.opts.lease_seconds);
        let claims = self.leases().claim(&id, room, lease)?;
        let n = claims.len();
        for claim in claims {
            let path = match self.opts.pipeline.keys.path(&claim.path) {
                Ok(p) => p,
                Err(unmapped) => {
                    let error = format!("worker {id}: {unmapped}");
                    tracing::warn!(path = %claim.path, %error, "cannot reach the file here");
                    self.leases().release(&id, &claim, &error, unix_now())?;
                    continue;
                }
            };
            self.in_flight.insert(claim.path.clone(), claim.token);
            let job = Job {
                path,
                key: claim.path.clone(),
                size: claim.size.max(0) as u64,
                mtime_ns: claim.mtime_ns,
                lease: Some(JobLease {
                    token: claim.token,
                    attempts: claim.attempts,
                }),
            };
            if !self.send(job) {
                break;
            }
        }
        Ok(n)
    }

    /// False when the pipeline is gone or a stop was asked for.
    fn send(&self, mut job: Job) -> bool {
        let Some(jobs) = &self.jobs else { return false };
        loop {
            match jobs.send_timeout(job, IDLE_WAIT) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(j)) if !self.shutdown.is_requested() => job = j,
                Err(_) => return false,
            }
        }
    }

    fn leases(&mut self) -> &mut dyn crate::store::api::Leases {
        self.store.leases().expect("checked at start")
    }

    fn extend(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let tokens: Vec<i64> = self.in_flight.values().copied().collect();
        let (id, lease) = (self.opts.id.clone(), self.opts.lease_seconds);
        match self.leases().extend(&id, &tokens, lease) {
            Ok(held) if held < tokens.len() => tracing::warn!(
                lost = tokens.len() - held,
                "leases ran out before they could be extended; other workers may take those images"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot extend leases"),
        }
    }

    fn report(&mut self, images_per_second: f64, error: Option<&str>) {
        let id = self.opts.id.clone();
        let report = WorkerReport {
            id: &id,
            host: &host_name(),
            pid: std::process::id() as i64,
            model_id: Some(self.model_id.load(Ordering::Relaxed)),
            started_at: self.started_at,
            images_done: self.done() as i64,
            images_per_second,
            error,
        };
        if let Err(e) = self.leases().report_worker(&report) {
            tracing::warn!(error = %e, "cannot report the worker");
        }
    }

    /// Drains the pipeline (the batches in flight commit), then gives back what is left.
    fn stop(&mut self) {
        self.jobs = None;
        while self.take_acks(Duration::from_millis(100)) {
            // Leases stay alive while the last batches finish.
            self.extend();
        }
        let (id, now) = (self.opts.id.clone(), unix_now());
        let left: Vec<(String, i64)> = self.in_flight.drain().collect();
        for (key, token) in &left {
            let claim = Claim {
                path: key.clone(),
                size: 0,
                mtime_ns: 0,
                token: *token,
                attempts: 0,
            };
            let note = format!("worker {id} stopped before captioning it");
            if let Err(e) = self.leases().release(&id, &claim, &note, now) {
                tracing::warn!(path = %key, error = %e, "cannot give an image back");
            }
        }
        if !left.is_empty() {
            tracing::info!(images = left.len(), "images given back for other workers");
        }
        self.report(0.0, Some("stopped"));
    }
}

/// Moves the worker to the registry's active model when it changes.
struct Follow {
    url: String,
    db: Location,
    store: BoxedStore,
    device: candle_core::Device,
    opts: WorkerOptions,
    current: i64,
    /// A model that failed to load, not tried again until the registry changes.
    unloadable: Option<i64>,
    model_id: Arc<AtomicI64>,
    blocked: Blocked,
    swap: ModelSwap,
    shutdown: Shutdown,
}

impl Follow {
    fn run(mut self) -> Result<(), DaemonError> {
        let mut listener = match ActivationListener::connect(&self.url) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for activations; polling instead");
                None
            }
        };
        let mut last_look = Instant::now();
        while !self.shutdown.is_requested() {
            let heard = match &mut listener {
                Some(l) => l.wait(Duration::from_millis(500)),
                None => {
                    std::thread::sleep(Duration::from_millis(500));
                    false
                }
            };
            if heard || last_look.elapsed() >= FOLLOW_EVERY {
                last_look = Instant::now();
                self.look();
            }
        }
        Ok(())
    }

    fn look(&mut self) {
        let row = match self.store.active_model() {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(db = %self.db, error = %e, "cannot read the registry");
                return;
            }
        };
        if row.id == self.current {
            self.unloadable = None;
            self.blocked.set(None);
            return;
        }
        if Some(row.id) == self.unloadable {
            return;
        }
        match models::load_registered(&row, &self.device, self.opts.models_dir.as_deref()) {
            Ok(model) => {
                tracing::info!(model = %row.name, model_id = row.id, "the registry's active model changed; taking it");
                self.swap.promote_with(
                    ActiveModel {
                        id: row.id,
                        name: row.name,
                        model: Arc::new(model),
                    },
                    self.opts.recaption,
                );
                self.current = row.id;
                self.unloadable = None;
                self.model_id.store(row.id, Ordering::Relaxed);
                self.blocked.set(None);
            }
            Err(reason) => {
                tracing::error!(
                    model_id = row.id,
                    %reason,
                    "cannot load the registry's active model; claiming nothing until it loads"
                );
                self.unloadable = Some(row.id);
                self.blocked.set(Some(format!(
                    "cannot load the active model {}: {reason}",
                    row.id
                )));
            }
        }
    }
}
