//! The SQLite implementation of the store's interface ([`super::api`]): [`Store`] runs each
//! call on its own (in a transaction of its own where it writes several rows), [`SqliteTx`]
//! runs calls in one transaction that the caller commits. The SQL itself is in the modules
//! that own each table.

use std::path::Path;

use rusqlite::{Connection, Transaction};
use serde_json::Value;

use super::api::{
    Activation, CaptionStore, Captions, FailedImage, NewRun, Query, Queue, Registry, Rollback,
    Runs, StoreTx,
};
use super::captions::{self, NewCaption};
use super::query::{
    self, AttentionError, AttentionRecord, Page, ResultRow, Selection, StatusReport,
};
use super::queue::{self, ImageState, PendingImage, ReadImage};
use super::registry::{
    self, ModelRow, ModelStatus, NewModel, Recaption, Registered, RegistryError,
};
use super::runs::{self, RunEnd, RunRow};
use super::{Result, Store, StoreError};

/// A transaction on a SQLite store.
pub struct SqliteTx<'a> {
    tx: Transaction<'a>,
    path: &'a Path,
}

/// A SQLite connection the interface runs on: a [`Store`] or a [`SqliteTx`].
pub trait SqliteConn {
    fn connection(&self) -> &Connection;
    fn db_path(&self) -> &Path;
    /// Runs `f` so that all of it or nothing takes effect.
    fn atomic<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T>;

    /// The store's error for a failed statement.
    fn sql(&self, action: &str) -> impl Fn(rusqlite::Error) -> StoreError {
        let path = self.db_path().to_path_buf();
        let action = action.to_string();
        move |e| StoreError::sqlite(&path, action.clone(), e)
    }

    /// The store's error for a failed registry call.
    fn reg(&self, action: &str) -> impl Fn(RegistryError) -> StoreError {
        let sql = self.sql(action);
        move |e| match e {
            RegistryError::Sqlite(e) => sql(e),
            RegistryError::NoSuchModel(id) => StoreError::NoSuchModel(id),
            RegistryError::NotActivatable { id, status } => {
                StoreError::NotActivatable { id, status }
            }
            RegistryError::NothingToRollBack => StoreError::NothingToRollBack,
            RegistryError::NoActiveModel => StoreError::NoActiveModel,
        }
    }
}

impl SqliteConn for Store {
    fn connection(&self) -> &Connection {
        &self.conn
    }
    fn db_path(&self) -> &Path {
        &self.path
    }
    fn atomic<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.sql("beginning a transaction"))?;
        let out = f(&tx)?;
        tx.commit().map_err(self.sql("committing"))?;
        Ok(out)
    }
}

impl SqliteConn for SqliteTx<'_> {
    fn connection(&self) -> &Connection {
        &self.tx
    }
    fn db_path(&self) -> &Path {
        self.path
    }
    fn atomic<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        // Part of the open transaction, which commits or rolls back as a whole.
        f(&self.tx)
    }
}

impl CaptionStore for Store {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn begin(&mut self) -> Result<Box<dyn StoreTx + '_>> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::sqlite(path, "beginning a transaction", e))?;
        Ok(Box::new(SqliteTx { tx, path }))
    }
}

impl StoreTx for SqliteTx<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        let path = self.path;
        self.tx
            .commit()
            .map_err(|e| StoreError::sqlite(path, "committing", e))
    }
}

impl<C: SqliteConn> Queue for C {
    fn image_state(&self, path: &str) -> Result<Option<ImageState>> {
        queue::image_state(self.connection(), path).map_err(self.sql("reading an image's state"))
    }
    fn pending_paths(&self) -> Result<Vec<String>> {
        queue::pending_paths(self.connection()).map_err(self.sql("listing pending images"))
    }
    fn pending_images(&self) -> Result<Vec<PendingImage>> {
        queue::pending_images(self.connection()).map_err(self.sql("listing pending images"))
    }
    fn live_paths(&self) -> Result<Vec<String>> {
        queue::live_paths(self.connection()).map_err(self.sql("listing images"))
    }
    fn skipped_paths(&self) -> Result<Vec<String>> {
        queue::skipped_paths(self.connection()).map_err(self.sql("listing skipped entries"))
    }
    fn mark_pending(&mut self, path: &str, size: i64, mtime_ns: i64, now: f64) -> Result<()> {
        self.atomic(|c| {
            queue::mark_pending(c, path, size, mtime_ns, now).map_err(self.sql("queueing an image"))
        })
    }
    fn mark_done(&mut self, img: &ReadImage, now: f64) -> Result<()> {
        queue::mark_done(self.connection(), img, now).map_err(self.sql("marking an image done"))
    }
    fn mark_failed(&mut self, img: &FailedImage, now: f64) -> Result<()> {
        queue::mark_failed(
            self.connection(),
            img.path,
            img.size,
            img.mtime_ns,
            img.content_hash,
            img.error,
            now,
        )
        .map_err(self.sql("marking an image failed"))
    }
    fn mark_gone(&mut self, path: &str, now: f64) -> Result<usize> {
        self.atomic(|c| queue::mark_gone(c, path, now).map_err(self.sql("marking images gone")))
    }
    fn mark_skipped(&mut self, path: &str, kind: &str, now: f64) -> Result<()> {
        queue::mark_skipped(self.connection(), path, kind, now)
            .map_err(self.sql("recording a skipped entry"))
    }
    fn unmark_skipped(&mut self, path: &str) -> Result<()> {
        queue::unmark_skipped(self.connection(), path)
            .map_err(self.sql("forgetting a skipped entry"))
    }
}

impl<C: SqliteConn> Captions for C {
    fn caption_exists(&self, content_hash: &str, model_id: i64) -> Result<bool> {
        captions::caption_exists(self.connection(), content_hash, model_id)
            .map_err(self.sql("looking up a caption"))
    }
    fn insert_caption(&mut self, c: &NewCaption, now: f64) -> Result<Option<i64>> {
        self.atomic(|conn| {
            captions::insert_caption(conn, c, now).map_err(self.sql("storing a caption"))
        })
    }
}

impl<C: SqliteConn> Registry for C {
    fn register_model(&mut self, m: &NewModel, now: f64) -> Result<Registered> {
        self.atomic(|c| registry::register(c, m, now).map_err(self.sql("registering a model")))
    }
    fn model(&self, id: i64) -> Result<Option<ModelRow>> {
        registry::model(self.connection(), id).map_err(self.reg("reading a model"))
    }
    fn model_by_hash(&self, content_hash: &str) -> Result<Option<ModelRow>> {
        registry::model_by_hash(self.connection(), content_hash)
            .map_err(self.reg("reading a model"))
    }
    fn active_model(&self) -> Result<Option<ModelRow>> {
        registry::active_model(self.connection()).map_err(self.reg("reading the active model"))
    }
    fn list_models(&self) -> Result<Vec<ModelRow>> {
        registry::list_models(self.connection()).map_err(self.reg("listing models"))
    }
    fn activate(
        &mut self,
        id: i64,
        reason: &str,
        recaption: Recaption,
        now: f64,
    ) -> Result<Activation> {
        self.atomic(|c| {
            let (previous, requeued) =
                registry::activate_and_requeue(c, id, reason, recaption, now)
                    .map_err(self.reg("activating a model"))?;
            Ok(Activation { previous, requeued })
        })
    }
    fn rollback(&mut self, recaption: Recaption, now: f64) -> Result<Rollback> {
        self.atomic(|c| {
            let ((from, to), requeued) = registry::rollback_and_requeue(c, recaption, now)
                .map_err(self.reg("rolling back"))?;
            Ok(Rollback { from, to, requeued })
        })
    }
    fn requeue(&mut self, model_id: i64, recaption: Recaption, now: f64) -> Result<usize> {
        registry::requeue(self.connection(), model_id, recaption, now)
            .map_err(self.sql("queueing images again"))
    }
    fn set_trained(&mut self, id: i64, parent: Option<i64>, status: ModelStatus) -> Result<()> {
        registry::set_trained(self.connection(), id, parent, status)
            .map_err(self.reg("recording a trained model"))
    }
    fn set_status(&mut self, id: i64, status: ModelStatus) -> Result<()> {
        registry::set_status(self.connection(), id, status)
            .map_err(self.reg("setting a model's status"))
    }
    fn set_metrics(&mut self, id: i64, metrics: &Value) -> Result<()> {
        registry::set_metrics(self.connection(), id, metrics)
            .map_err(self.reg("recording a model's scores"))
    }
}

impl<C: SqliteConn> Runs for C {
    fn start_run(&mut self, run: &NewRun, now: f64) -> Result<i64> {
        runs::start_run(
            self.connection(),
            run.trigger,
            run.parent,
            run.rule,
            run.fingerprint,
            now,
        )
        .map_err(self.sql("recording a retraining run"))
    }
    fn set_run_log_path(&mut self, id: i64, path: &str) -> Result<()> {
        runs::set_run_log_path(self.connection(), id, path)
            .map_err(self.sql("recording a run's log"))
    }
    fn finish_run(&mut self, id: i64, end: &RunEnd, now: f64) -> Result<()> {
        runs::finish_run(self.connection(), id, end, now)
            .map_err(self.sql("recording how a run ended"))
    }
    fn list_runs(&self, limit: usize) -> Result<Vec<RunRow>> {
        runs::list_runs(self.connection(), limit).map_err(self.sql("listing runs"))
    }
    fn run(&self, id: i64) -> Result<Option<RunRow>> {
        runs::run(self.connection(), id).map_err(self.sql("reading a run"))
    }
    fn last_decided_fingerprint(&self) -> Result<Option<String>> {
        runs::last_decided_fingerprint(self.connection()).map_err(self.sql("reading runs"))
    }
    fn fail_stale_runs(&mut self, alive: &dyn Fn(i64) -> bool, now: f64) -> Result<usize> {
        self.atomic(|c| {
            runs::fail_stale_runs(c, alive, now).map_err(self.sql("failing stale runs"))
        })
    }
}

impl<C: SqliteConn> Query for C {
    fn select(&self, sel: &Selection, limit: usize) -> Result<Vec<ResultRow>> {
        query::select(self.connection(), sel, limit).map_err(self.sql("querying captions"))
    }
    fn select_page(&self, sel: &Selection, limit: usize) -> Result<Page> {
        query::select_page(self.connection(), sel, limit).map_err(self.sql("querying captions"))
    }
    fn attention_of(&self, caption_id: i64) -> Result<Option<AttentionRecord>> {
        query::attention_of(self.connection(), caption_id).map_err(|e| match e {
            AttentionError::Sqlite(e) => self.sql("reading attention")(e),
            AttentionError::Bad(id, reason) => StoreError::BadAttention(id, reason),
        })
    }
    fn status(&self, now: f64) -> Result<StatusReport> {
        let version = super::user_version(self.connection(), self.db_path())?;
        query::status(self.connection(), version, now).map_err(self.sql("summing up the store"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::captions::{caption_exists, insert_caption};
    use crate::store::queue::*;
    use crate::store::registry::NewModel;
    use crate::store::registry::{self, ModelKind};
    use crate::store::runs::RunStatus;

    fn caption<'a>(hash: &'a str, model: i64, tokens: &'a [String]) -> NewCaption<'a> {
        NewCaption {
            content_hash: hash,
            model_id: model,
            text: "a cat",
            tokens,
            token_ids: &[1, 2, 3, 4],
            score: -1.5,
            finished: true,
            beam_size: 3,
            alphas: &[],
            grid: 2,
        }
    }

    #[test]
    fn queue_states_and_one_caption_per_content_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("g.db")).unwrap();
        let tx = store.conn_mut().transaction().unwrap();
        let m = NewModel {
            content_hash: "mh",
            path: "/m.safetensors",
            name: "m",
            config_json: "{}",
            provenance_json: "{}",
        };
        let id = registry::register(&tx, &m, 1.0).unwrap().id;
        assert_eq!(registry::register(&tx, &m, 2.0).unwrap().id, id);
        registry::activate(&tx, id, "start", 1.0).unwrap();
        let id2 = registry::register(
            &tx,
            &NewModel {
                content_hash: "mh2",
                ..m.clone()
            },
            3.0,
        )
        .unwrap()
        .id;
        registry::activate(&tx, id2, "start", 1.0).unwrap();
        registry::activate(&tx, id, "start", 1.0).unwrap();

        mark_pending(&tx, "/a/x.jpg", 10, 5, 1.0).unwrap();
        mark_failed(&tx, "/a/x.jpg", 10, 5, None, "bad", 1.0).unwrap();
        mark_failed(&tx, "/a/x.jpg", 10, 5, None, "bad", 1.0).unwrap();
        let s = image_state(&tx, "/a/x.jpg").unwrap().unwrap();
        assert_eq!((s.status, s.attempts), (ImageStatus::Failed, 2));
        // Unchanged: attempts kept. Changed: attempts reset.
        mark_pending(&tx, "/a/x.jpg", 10, 5, 1.0).unwrap();
        assert_eq!(image_state(&tx, "/a/x.jpg").unwrap().unwrap().attempts, 2);
        mark_pending(&tx, "/a/x.jpg", 11, 6, 1.0).unwrap();
        let s = image_state(&tx, "/a/x.jpg").unwrap().unwrap();
        assert_eq!((s.status, s.attempts), (ImageStatus::Pending, 0));

        let tokens: Vec<String> = ["<start>", "a", "cat", "<end>"].map(String::from).into();
        assert!(insert_caption(&tx, &caption("h1", id, &tokens), 1.0)
            .unwrap()
            .is_some());
        assert!(insert_caption(&tx, &caption("h1", id, &tokens), 1.0)
            .unwrap()
            .is_none());
        assert!(caption_exists(&tx, "h1", id).unwrap());
        assert!(!caption_exists(&tx, "h1", id2).unwrap());
        for p in ["/a/x.jpg", "/a/sub/y.jpg", "/ab.jpg"] {
            let img = ReadImage {
                path: p,
                size: 11,
                mtime_ns: 6,
                content_hash: "h1",
                width: 4,
                height: 3,
            };
            mark_done(&tx, &img, 2.0).unwrap();
        }
        // A new active model without captions puts the done images back in the queue.
        assert_eq!(requeue_for_model(&tx, id2, 3.0).unwrap(), 3);
        assert_eq!(requeue_for_model(&tx, id, 3.0).unwrap(), 0);
        // Gone by folder prefix, not by string prefix.
        assert_eq!(mark_gone(&tx, "/a", 4.0).unwrap(), 2);
        assert_eq!(live_paths(&tx).unwrap(), vec!["/ab.jpg".to_string()]);
        tx.commit().unwrap();
        let captions: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM captions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(captions, 1);
    }

    fn new_model(hash: &str) -> NewModel<'_> {
        NewModel {
            content_hash: hash,
            path: "/m.safetensors",
            name: hash,
            config_json: "{}",
            provenance_json: "{}",
        }
    }

    /// Stores `n` done images, each with a caption by `model` (finished or not).
    fn captioned(store: &mut dyn CaptionStore, model: i64, n: usize, finished: bool, tag: &str) {
        let tokens: Vec<String> = ["<start>", "a", "cat", "<end>"].map(String::from).into();
        let mut tx = store.begin().unwrap();
        for i in 0..n {
            let (path, hash) = (format!("/p/{tag}{i}.jpg"), format!("{tag}{i}"));
            let mut c = caption(&hash, model, &tokens);
            c.finished = finished;
            tx.insert_caption(&c, 1.0).unwrap().unwrap();
            tx.mark_done(
                &ReadImage {
                    path: &path,
                    size: 1,
                    mtime_ns: 1,
                    content_hash: &hash,
                    width: 1,
                    height: 1,
                },
                1.0 + i as f64,
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn history(store: &Store) -> Vec<(i64, Option<i64>, String)> {
        let mut stmt = store
            .conn()
            .prepare("SELECT model_id, previous_id, reason FROM model_activations ORDER BY id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn the_interface_registers_activates_with_history_and_requeues_by_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mut sqlite = Store::open(&dir.path().join("g.db")).unwrap();
        let store: &mut dyn CaptionStore = &mut sqlite;
        let a = store.register_model(&new_model("a"), 1.0).unwrap();
        assert_eq!(
            a,
            Registered {
                id: a.id,
                known: false
            }
        );
        assert!(store.register_model(&new_model("a"), 2.0).unwrap().known);
        let b = store.register_model(&new_model("b"), 2.0).unwrap().id;
        let a = a.id;
        let first = store.activate(a, "start", Recaption::All, 2.0).unwrap();
        assert_eq!(
            first,
            Activation {
                previous: None,
                requeued: 0
            }
        );
        captioned(store, a, 3, true, "f");
        captioned(store, a, 2, false, "u");
        assert!(store.pending_paths().unwrap().is_empty());

        // `missing`: only the images without a finished caption.
        let swap = store
            .activate(b, "activate", Recaption::Missing, 3.0)
            .unwrap();
        assert_eq!(
            swap,
            Activation {
                previous: Some(a),
                requeued: 2
            }
        );
        assert_eq!(
            store.pending_paths().unwrap(),
            vec!["/p/u0.jpg", "/p/u1.jpg"]
        );
        // Activating the active model again changes nothing and queues nothing.
        let again = store.activate(b, "activate", Recaption::All, 3.5).unwrap();
        assert_eq!(
            again,
            Activation {
                previous: None,
                requeued: 0
            }
        );

        // A rollback with `all` queues every image without a caption by the model rolled back
        // to: none here, since model a captioned them all.
        let back = store.rollback(Recaption::All, 4.0).unwrap();
        assert_eq!(
            back,
            Rollback {
                from: b,
                to: a,
                requeued: 0
            }
        );
        // `all` to a model with no captions queues every done image.
        let swap = store.activate(b, "retrain", Recaption::All, 5.0).unwrap();
        assert_eq!(swap.requeued, 3);
        assert_eq!(store.pending_paths().unwrap().len(), 5);
        assert!(matches!(
            store.activate(99, "activate", Recaption::None, 6.0),
            Err(StoreError::NoSuchModel(99))
        ));
        store.set_trained(a, None, ModelStatus::Corrupt).unwrap();
        let err = store
            .activate(a, "activate", Recaption::None, 6.0)
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotActivatable {
                    status: ModelStatus::Corrupt,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.active_model().unwrap().unwrap().id, b);
        assert_eq!(store.model(a).unwrap().unwrap().kind, ModelKind::Trained);

        // Every change of the active model is in the history, with its reason.
        let reason = |m: i64, p: Option<i64>, r: &str| (m, p, r.to_string());
        assert_eq!(
            history(&sqlite),
            vec![
                reason(a, None, "start"),
                reason(b, Some(a), "activate"),
                // The model rolled back to keeps its own predecessor (none).
                reason(a, None, "rollback"),
                reason(b, Some(a), "retrain"),
            ]
        );
    }

    #[test]
    fn a_transaction_takes_effect_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sqlite = Store::open(&dir.path().join("g.db")).unwrap();
        let store: &mut dyn CaptionStore = &mut sqlite;
        {
            let mut tx = store.begin().unwrap();
            tx.mark_pending("/x.jpg", 1, 1, 1.0).unwrap();
            tx.register_model(&new_model("m"), 1.0).unwrap();
        }
        assert!(store.pending_paths().unwrap().is_empty());
        assert!(store.list_models().unwrap().is_empty());
        let mut tx = store.begin().unwrap();
        tx.mark_pending("/x.jpg", 1, 1, 1.0).unwrap();
        tx.mark_failed(
            &FailedImage {
                path: "/y.jpg",
                size: 1,
                mtime_ns: 1,
                content_hash: None,
                error: "bad",
            },
            1.0,
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(store.pending_paths().unwrap(), vec!["/x.jpg"]);
        let failed = store.image_state("/y.jpg").unwrap().unwrap();
        assert_eq!((failed.status, failed.attempts), (ImageStatus::Failed, 1));
        let report = store.status(2.0).unwrap();
        assert_eq!(report.backlog, 1);
        assert_eq!(report.by_status[2], (ImageStatus::Failed, 1));
    }

    #[test]
    fn runs_through_the_interface() {
        let dir = tempfile::tempdir().unwrap();
        let mut sqlite = Store::open(&dir.path().join("g.db")).unwrap();
        let store: &mut dyn CaptionStore = &mut sqlite;
        let rule = serde_json::json!({"metric": "cider_d", "margin": 0.0});
        let run = NewRun {
            trigger: "manual",
            parent: None,
            rule: &rule,
            fingerprint: "fp",
        };
        let id = store.start_run(&run, 1.0).unwrap();
        assert_eq!(store.run(id).unwrap().unwrap().status, RunStatus::Running);
        store
            .finish_run(id, &RunEnd::failed("log", "broke"), 2.0)
            .unwrap();
        let row = store.run(id).unwrap().unwrap();
        assert_eq!(
            (row.status, row.error.as_deref()),
            (RunStatus::Failed, Some("broke"))
        );
        assert_eq!(store.last_decided_fingerprint().unwrap(), None);
        assert_eq!(store.fail_stale_runs(&|_| false, 3.0).unwrap(), 0);
        assert_eq!(store.list_runs(5).unwrap().len(), 1);
    }

    /// Every status value goes into SQLite and comes back as itself, as the same text as ever.
    #[test]
    fn status_enums_round_trip() {
        fn check<T>(all: &[T], text: impl Fn(&T) -> &'static str)
        where
            T: rusqlite::types::ToSql
                + rusqlite::types::FromSql
                + serde::Serialize
                + std::fmt::Display
                + PartialEq
                + std::fmt::Debug,
        {
            let conn = rusqlite::Connection::open_in_memory().unwrap();
            for v in all {
                let back: T = conn.query_row("SELECT ?1", [v], |r| r.get(0)).unwrap();
                assert_eq!(&back, v);
                let stored: String = conn.query_row("SELECT ?1", [v], |r| r.get(0)).unwrap();
                assert_eq!(stored, text(v));
                assert_eq!(serde_json::to_value(v).unwrap(), text(v));
                assert_eq!(format!("{v:<10}|"), format!("{:<10}|", text(v)));
            }
            let bad: rusqlite::Result<T> = conn.query_row("SELECT 'nonsense'", [], |r| r.get(0));
            assert!(bad.is_err());
        }
        check(ImageStatus::ALL, |v| v.as_str());
        check(ModelStatus::ALL, |v| v.as_str());
        check(ModelKind::ALL, |v| v.as_str());
        check(RunStatus::ALL, |v| v.as_str());
        assert_eq!(ImageStatus::ALL.len(), 4);
        assert_eq!(ModelStatus::ALL.len(), 4);
        assert_eq!(RunStatus::ALL.len(), 4);
    }
}
