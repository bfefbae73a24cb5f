//! The store's interface: everything the daemon, `gaze status`, `gaze query`, `gaze models`
//! and retraining ask of a store, in the store's own types (no backend's types appear here).
//!
//! [`super::Store`] (SQLite) implements it today; another backend implements the same traits.
//! A [`CaptionStore`] runs each call on its own, atomically; [`CaptionStore::begin`] opens a
//! [`StoreTx`] whose calls commit together or, when it is dropped uncommitted, not at all.
//! The traits are object-safe: callers hold a `&mut dyn CaptionStore` or a `Box<dyn StoreTx>`.

use serde_json::Value;

pub use super::captions::NewCaption;
pub use super::query::{AttentionRecord, Page, ResultRow, Selection, StatusReport};
pub use super::queue::{ImageState, ImageStatus, PendingImage, ReadImage};
pub use super::registry::{ModelKind, ModelRow, ModelStatus, NewModel, Recaption, Registered};
pub use super::runs::{RunEnd, RunRow, RunStatus};
use super::Result;

/// A failed attempt at reading or captioning an image.
#[derive(Debug, Clone)]
pub struct FailedImage<'a> {
    pub path: &'a str,
    pub size: i64,
    pub mtime_ns: i64,
    /// Known when the file was read before it failed.
    pub content_hash: Option<&'a str>,
    pub error: &'a str,
}

/// What activating a model changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation {
    /// The model active before; `None` when there was none, or when the model already was
    /// active (then nothing changed).
    pub previous: Option<i64>,
    /// Images queued again for the model, by the recaption policy.
    pub requeued: usize,
}

/// What a rollback changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollback {
    pub from: i64,
    pub to: i64,
    /// Images queued again for the model rolled back to, by the recaption policy.
    pub requeued: usize,
}

/// A retraining run to record as started.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// `schedule` or `manual`.
    pub trigger: &'a str,
    pub parent: Option<i64>,
    /// The promotion rule, as recorded with the run.
    pub rule: &'a Value,
    /// What the training data looked like (see `retrain::data::fingerprint`).
    pub fingerprint: &'a str,
}

/// The queue of images: one row per file seen in a watched folder.
pub trait Queue {
    fn image_state(&self, path: &str) -> Result<Option<ImageState>>;
    /// Images waiting to be captioned, oldest change first (what a model swap leaves to do).
    fn pending_paths(&self) -> Result<Vec<String>>;
    /// The pending images with the size and modification time they were recorded with.
    fn pending_images(&self) -> Result<Vec<PendingImage>>;
    /// Images not marked gone.
    fn live_paths(&self) -> Result<Vec<String>>;
    /// Entries recorded as not regular files.
    fn skipped_paths(&self) -> Result<Vec<String>>;
    /// A complete file is queued; a changed file starts its attempts afresh.
    fn mark_pending(&mut self, path: &str, size: i64, mtime_ns: i64, now: f64) -> Result<()>;
    /// Done: call it in the transaction that stores the caption.
    fn mark_done(&mut self, img: &ReadImage, now: f64) -> Result<()>;
    /// Failed; counts the attempt.
    fn mark_failed(&mut self, img: &FailedImage, now: f64) -> Result<()>;
    /// `path`, and everything under it if it was a folder, is gone; returns how many rows.
    fn mark_gone(&mut self, path: &str, now: f64) -> Result<usize>;
    fn mark_skipped(&mut self, path: &str, kind: &str, now: f64) -> Result<()>;
    fn unmark_skipped(&mut self, path: &str) -> Result<()>;
}

/// Captions and their attention maps, one per (content, model).
pub trait Captions {
    fn caption_exists(&self, content_hash: &str, model_id: i64) -> Result<bool>;
    /// Stores a caption and its attention; `None` when (content, model) already has one.
    fn insert_caption(&mut self, c: &NewCaption, now: f64) -> Result<Option<i64>>;
}

/// The model registry. The only way to change the active model is [`Registry::activate`] or
/// [`Registry::rollback`]: each records the change in the history and queues the new model's
/// work by the recaption policy, atomically.
pub trait Registry {
    /// Registers a model once per content hash (a known one takes the new path).
    fn register_model(&mut self, m: &NewModel, now: f64) -> Result<Registered>;
    fn model(&self, id: i64) -> Result<Option<ModelRow>>;
    fn model_by_hash(&self, content_hash: &str) -> Result<Option<ModelRow>>;
    fn active_model(&self) -> Result<Option<ModelRow>>;
    /// Every model, oldest first.
    fn list_models(&self) -> Result<Vec<ModelRow>>;
    /// Makes `id` the active model (recording `reason`) and queues its work by `recaption`.
    fn activate(
        &mut self,
        id: i64,
        reason: &str,
        recaption: Recaption,
        now: f64,
    ) -> Result<Activation>;
    /// Re-activates the model active before the current one and queues its work.
    fn rollback(&mut self, recaption: Recaption, now: f64) -> Result<Rollback>;
    /// Queues again, by `recaption`, the stored images the active `model_id` captions again
    /// (for a daemon that swapped models itself; `activate` already does this).
    fn requeue(&mut self, model_id: i64, recaption: Recaption, now: f64) -> Result<usize>;
    /// Marks a model as made by retraining from `parent`.
    fn set_trained(&mut self, id: i64, parent: Option<i64>, status: ModelStatus) -> Result<()>;
    fn set_status(&mut self, id: i64, status: ModelStatus) -> Result<()>;
    /// Records a model's latest held-out scores.
    fn set_metrics(&mut self, id: i64, metrics: &Value) -> Result<()>;
}

/// The record of retraining runs.
pub trait Runs {
    /// Records a run of this process as started; returns its id.
    fn start_run(&mut self, run: &NewRun, now: f64) -> Result<i64>;
    fn set_run_log_path(&mut self, id: i64, path: &str) -> Result<()>;
    fn finish_run(&mut self, id: i64, end: &RunEnd, now: f64) -> Result<()>;
    /// Runs, newest first; at most `limit`.
    fn list_runs(&self, limit: usize) -> Result<Vec<RunRow>>;
    fn run(&self, id: i64) -> Result<Option<RunRow>>;
    /// The fingerprint of the newest run that was promoted or rejected.
    fn last_decided_fingerprint(&self) -> Result<Option<String>>;
    /// Records as failed every running run whose process is not `alive`; returns how many.
    fn fail_stale_runs(&mut self, alive: &dyn Fn(i64) -> bool, now: f64) -> Result<usize>;
}

/// Reading captions for people and other programs.
pub trait Query {
    /// A selection's rows; at most `limit`.
    fn select(&self, sel: &Selection, limit: usize) -> Result<Vec<ResultRow>>;
    /// At most `limit` rows, and how many match in all.
    fn select_page(&self, sel: &Selection, limit: usize) -> Result<Page>;
    /// A caption's stored attention; `None` when it has none.
    fn attention_of(&self, caption_id: i64) -> Result<Option<AttentionRecord>>;
    /// Where the store stands.
    fn status(&self, now: f64) -> Result<StatusReport>;
}

/// Every operation of a store, whether run alone or inside a transaction.
pub trait StoreOps: Queue + Captions + Registry + Runs + Query {}

impl<T: Queue + Captions + Registry + Runs + Query + ?Sized> StoreOps for T {}

/// A store: the one interface its users hold.
pub trait CaptionStore: StoreOps {
    /// Where the store is (a file, a server), for messages.
    fn location(&self) -> String;
    /// Opens a transaction: its calls take effect together at [`StoreTx::commit`].
    fn begin(&mut self) -> Result<Box<dyn StoreTx + '_>>;
    /// The leases that let several workers share the queue, where the store has them
    /// (PostgreSQL; a SQLite file serves one machine and has none).
    fn leases(&mut self) -> Option<&mut dyn Leases> {
        None
    }
}

/// A transaction on a store; dropping it uncommitted undoes its calls.
pub trait StoreTx: StoreOps {
    fn commit(self: Box<Self>) -> Result<()>;
    /// [`CaptionStore::leases`], inside the transaction.
    fn leases(&mut self) -> Option<&mut dyn Leases> {
        None
    }
}

/// A pending image a worker claimed: its path key, how it was recorded, and the lease token
/// its commit must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub path: String,
    pub size: i64,
    pub mtime_ns: i64,
    pub token: i64,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// What a worker says of itself each time it reports.
#[derive(Debug, Clone)]
pub struct WorkerReport<'a> {
    pub id: &'a str,
    pub host: &'a str,
    pub pid: i64,
    pub model_id: Option<i64>,
    pub started_at: f64,
    pub images_done: i64,
    pub images_per_second: f64,
    /// Why it claims nothing, when it cannot (a model it cannot load).
    pub error: Option<&'a str>,
}

/// A worker as `gaze status` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub model_id: Option<i64>,
    pub model: Option<String>,
    pub started_at: f64,
    pub seen_at: f64,
    pub seconds_since_seen: f64,
    pub images_done: i64,
    pub images_per_second: f64,
    /// Images it holds a live lease on.
    pub leases: i64,
    pub error: Option<String>,
}

/// Work shared by several workers through leases (see `store::postgres::lease`).
pub trait Leases {
    /// Claims up to `n` pending images that nobody holds a live lease on, for `lease_seconds`.
    fn claim(&mut self, worker: &str, n: usize, lease_seconds: f64) -> Result<Vec<Claim>>;
    /// Extends the live leases of `worker` with these tokens; returns how many it still holds.
    fn extend(&mut self, worker: &str, tokens: &[i64], lease_seconds: f64) -> Result<usize>;
    /// Whether `worker` still holds the lease `token` on `path`; inside a transaction, the row
    /// stays so until it ends (call it before storing the caption, in the same transaction).
    fn holds(&mut self, worker: &str, path: &str, token: i64) -> Result<bool>;
    /// Counts a failed attempt at a claimed image: failed at `max_attempts`, else pending again
    /// for any worker. False when the lease was no longer held (nothing changed).
    fn fail_leased(
        &mut self,
        worker: &str,
        claim: &Claim,
        error: &str,
        max_attempts: u32,
        now: f64,
    ) -> Result<bool>;
    /// Gives a claimed image back without counting an attempt (this worker cannot reach the
    /// file; another may), recording why.
    fn release(&mut self, worker: &str, claim: &Claim, error: &str, now: f64) -> Result<bool>;
    fn report_worker(&mut self, w: &WorkerReport) -> Result<()>;
    /// The workers seen lately.
    fn workers(&self) -> Result<Vec<WorkerRow>>;
    /// Takes the lock that lets one process at a time retrain; false when another holds it.
    /// It is held until [`Leases::unlock_retraining`] or the connection closes.
    fn try_lock_retraining(&mut self) -> Result<bool>;
    fn unlock_retraining(&mut self) -> Result<()>;
    /// Has the server end this connection's transactions that sit idle longer than `seconds`
    /// (a worker cut off mid-commit would otherwise keep its rows locked, and out of every
    /// other worker's claims, until the server noticed the connection was dead).
    fn limit_idle_transactions(&mut self, seconds: u64) -> Result<()>;
}
