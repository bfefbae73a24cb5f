//! The retraining scheduler inside the daemon: runs a cycle when the schedule says (and, unless
//! told otherwise, only when the data or settings changed since the last decided run), and
//! hands a promoted model to the inference worker through the swap slot with the recaption
//! policy. It also follows the registry: a model activated from outside (`gaze models
//! activate`, `gaze models rollback`) is loaded, checked against its hash and swapped in.
//!
//! Training runs on this thread inside a rayon pool of `threads` threads, so captioning keeps
//! the rest of the machine; a shutdown stops training after the current batch and the run is
//! recorded as failed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::models::{load_registered, ActiveModel};
use super::{DaemonError, ModelSwap, Shutdown};
use crate::retrain::{run_cycle, CycleOptions, Parent, RetrainOptions, RunStatus};
use crate::store::api::CaptionStore;
use crate::store::runs::process_alive;
use crate::store::{unix_now, Location, StoreError};

/// How often the registry is read for models activated from outside.
const REGISTRY_POLL: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);

pub(crate) struct Retrainer {
    db: Location,
    settings: RetrainOptions,
    schedule: crate::retrain::Schedule,
    device: String,
    current: ActiveModel,
    swap: ModelSwap,
    shutdown: Shutdown,
    /// A registry model that failed to load, not tried again until the registry changes.
    unloadable: Option<i64>,
}

impl Retrainer {
    pub fn new(
        db: &Location,
        settings: RetrainOptions,
        device: String,
        current: ActiveModel,
        swap: ModelSwap,
        shutdown: Shutdown,
    ) -> Result<Self, DaemonError> {
        let schedule = settings.schedule.clone();
        Ok(Retrainer {
            db: db.clone(),
            settings,
            schedule,
            device,
            current,
            swap,
            shutdown,
            unloadable: None,
        })
    }

    pub fn run(mut self) -> Result<(), DaemonError> {
        let mut store = crate::store::open(&self.db)?;
        let stale = store
            .fail_stale_runs(&process_alive, unix_now())
            .map_err(|e| self.registry_error(e))?;
        if stale > 0 {
            tracing::warn!(
                runs = stale,
                "earlier retraining runs were cut short; recorded as failed"
            );
        }
        let started = unix_now();
        let mut due = self.schedule.next_after(started, started);
        tracing::info!(
            schedule = %self.settings.schedule_text,
            first_in_s = format!("{:.0}", due - started),
            threads = self.settings.train_threads(),
            "retraining scheduled"
        );
        let mut last_poll = std::time::Instant::now();
        while !self.shutdown.is_requested() {
            std::thread::sleep(TICK);
            if last_poll.elapsed() >= REGISTRY_POLL {
                last_poll = std::time::Instant::now();
                self.follow_registry(&*store);
            }
            let now = unix_now();
            if now < due {
                continue;
            }
            self.maybe_run(&*store);
            due = self.schedule.next_after(now, unix_now());
        }
        Ok(())
    }

    fn registry_error(&self, e: StoreError) -> DaemonError {
        DaemonError::Registry {
            path: PathBuf::from(self.db.to_string()),
            reason: e.to_string(),
        }
    }

    /// Runs a cycle unless nothing changed since the last decided run.
    fn maybe_run(&mut self, store: &dyn CaptionStore) {
        if self.settings.only_when_changed {
            match crate::retrain::data::fingerprint(&self.settings) {
                Ok(fp) => {
                    if store.last_decided_fingerprint().ok().flatten().as_deref()
                        == Some(fp.as_str())
                    {
                        tracing::debug!("retraining skipped: data and settings unchanged");
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the retraining data"),
            }
        }
        let parent = Parent {
            id: self.current.id,
            model: self.current.model.clone(),
        };
        let opts = CycleOptions {
            settings: &self.settings,
            device: self.device.clone(),
            trigger: "schedule",
            stop: self.shutdown.0.clone(),
        };
        match run_cycle(&self.db, Some(&parent), &opts) {
            Ok(report) => {
                if let (RunStatus::Promoted, Some((id, name, model))) =
                    (report.status, report.promoted)
                {
                    let next = ActiveModel { id, name, model };
                    tracing::info!(
                        run = report.run_id,
                        model_id = id,
                        recaption = ?self.settings.recaption,
                        "promoted model handed to the inference worker"
                    );
                    self.current = next.clone();
                    self.swap.promote_with(next, self.settings.recaption);
                }
            }
            Err(e) => tracing::error!(error = %e, "a retraining run could not be recorded"),
        }
    }

    /// Swaps in a model activated in the registry by someone else.
    fn follow_registry(&mut self, store: &dyn CaptionStore) {
        let row = match store.active_model() {
            Ok(Some(row)) if row.id != self.current.id && Some(row.id) != self.unloadable => row,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registry");
                return;
            }
        };
        match load_registered(&row, &self.current.model.device, None) {
            Ok(model) => {
                tracing::info!(
                    model = %row.name,
                    model_id = row.id,
                    "the registry's active model changed; swapping it in"
                );
                let next = ActiveModel {
                    id: row.id,
                    name: row.name,
                    model: Arc::new(model),
                };
                self.current = next.clone();
                self.swap.promote_with(next, self.settings.recaption);
            }
            Err(reason) => {
                // Keep captioning with the model in hand; say so once per change.
                tracing::error!(
                    model_id = row.id,
                    %reason,
                    "the registry's active model cannot be loaded; captioning continues with model {}",
                    self.current.id
                );
                self.unloadable = Some(row.id);
            }
        }
    }
}
