//! The model registry: every model gaze used or trained, which one is active, and the history
//! of activations (so a rollback returns to the model before). This is the only place that
//! registers a model or changes the active one.
//!
//! Guarantees: at most one model is active (a unique partial index); a model whose file failed
//! to load or check (`corrupt`) or that is still being judged (`candidate`) is never activated;
//! every change of the active model is a row in `model_activations`, and the images the new
//! model captions again (by the [`Recaption`] policy) are queued in the same transaction by
//! [`activate_and_requeue`] and [`rollback_and_requeue`]. Functions take a `&Connection` and do
//! not commit; run them in a transaction to change several things at once.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::queue;

text_enum! {
    /// Whether a model may be activated (`models.status`).
    ModelStatus {
        /// May be activated.
        Ready = "ready",
        /// Being judged by a retraining run.
        Candidate = "candidate",
        /// Lost against the active model; may still be activated by hand.
        Rejected = "rejected",
        /// Its file failed to load or check.
        Corrupt = "corrupt",
    }
}

text_enum! {
    /// Where a model came from (`models.kind`).
    ModelKind {
        /// Given to `gaze watch`.
        Loaded = "loaded",
        /// Made by a retraining run.
        Trained = "trained",
    }
}

/// Which stored images a newly active model captions again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Recaption {
    /// Only new images get the new model's captions.
    None,
    /// Images with no finished caption by any model (the search never reached `<end>`).
    #[default]
    Missing,
    /// Every stored image, once per content.
    All,
}

impl std::str::FromStr for Recaption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Recaption::None),
            "missing" => Ok(Recaption::Missing),
            "all" => Ok(Recaption::All),
            other => Err(format!("expected none, missing or all, not {other:?}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("no model with id {0}")]
    NoSuchModel(i64),
    #[error("model {id} is {status}; only ready or rejected models can be activated")]
    NotActivatable { id: i64, status: ModelStatus },
    #[error("nothing to roll back to: the active model has no earlier model in the history")]
    NothingToRollBack,
    #[error("no model is active")]
    NoActiveModel,
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A row of `models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub content_hash: String,
    pub kind: ModelKind,
    pub status: ModelStatus,
    pub parent_id: Option<i64>,
    pub active: bool,
    pub created_at: f64,
    pub activated_at: Option<f64>,
    /// The latest held-out scores, when the model was scored.
    pub metrics: Option<Value>,
    /// The retraining run that made it, if any.
    pub run_id: Option<i64>,
    /// Captions written by it.
    pub captions: i64,
}

const MODEL_COLUMNS: &str = "m.id, m.name, m.path, m.content_hash, m.kind, m.status, m.parent_id,
     m.active, m.created_at, m.activated_at, m.metrics,
     (SELECT max(r.id) FROM retrain_runs r WHERE r.candidate_model_id = m.id),
     (SELECT count(*) FROM captions c WHERE c.model_id = m.id)";

fn model_row(r: &rusqlite::Row) -> rusqlite::Result<ModelRow> {
    let metrics: Option<String> = r.get(10)?;
    Ok(ModelRow {
        id: r.get(0)?,
        name: r.get(1)?,
        path: r.get(2)?,
        content_hash: r.get(3)?,
        kind: r.get(4)?,
        status: r.get(5)?,
        parent_id: r.get(6)?,
        active: r.get(7)?,
        created_at: r.get(8)?,
        activated_at: r.get(9)?,
        metrics: metrics.and_then(|s| serde_json::from_str(&s).ok()),
        run_id: r.get(11)?,
        captions: r.get(12)?,
    })
}

/// Every model, oldest first.
pub fn list_models(conn: &Connection) -> Result<Vec<ModelRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {MODEL_COLUMNS} FROM models m ORDER BY m.id"
    ))?;
    let rows = stmt.query_map([], model_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn model(conn: &Connection, id: i64) -> Result<Option<ModelRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {MODEL_COLUMNS} FROM models m WHERE m.id = ?1"),
            [id],
            model_row,
        )
        .optional()?)
}

pub fn model_by_hash(conn: &Connection, content_hash: &str) -> Result<Option<ModelRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {MODEL_COLUMNS} FROM models m WHERE m.content_hash = ?1"),
            [content_hash],
            model_row,
        )
        .optional()?)
}

pub fn active_model(conn: &Connection) -> Result<Option<ModelRow>> {
    Ok(active_model_row(conn)?)
}

/// [`active_model`] with SQLite's error, for queries that have no other.
pub(crate) fn active_model_row(conn: &Connection) -> rusqlite::Result<Option<ModelRow>> {
    conn.query_row(
        &format!("SELECT {MODEL_COLUMNS} FROM models m WHERE m.active = 1"),
        [],
        model_row,
    )
    .optional()
}

/// Makes `id` the active model and records why; returns the model that was active before
/// (`None` when there was none, or when `id` already was active: then nothing changes).
pub fn activate(conn: &Connection, id: i64, reason: &str, now: f64) -> Result<Option<i64>> {
    let target = model(conn, id)?.ok_or(RegistryError::NoSuchModel(id))?;
    if target.active {
        return Ok(None);
    }
    if !matches!(target.status, ModelStatus::Ready | ModelStatus::Rejected) {
        return Err(RegistryError::NotActivatable {
            id,
            status: target.status,
        });
    }
    let previous = active_model(conn)?.map(|m| m.id);
    switch_active(conn, id, previous, reason, now)?;
    Ok(previous)
}

fn switch_active(
    conn: &Connection,
    id: i64,
    previous: Option<i64>,
    reason: &str,
    now: f64,
) -> Result<()> {
    conn.execute("UPDATE models SET active = 0 WHERE active = 1", [])?;
    conn.execute(
        "UPDATE models SET active = 1, status = 'ready', activated_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    conn.execute(
        "INSERT INTO model_activations (model_id, previous_id, at, reason)
             VALUES (?1, ?2, ?3, ?4)",
        params![id, previous, now, reason],
    )?;
    Ok(())
}

/// The model active before the current one was activated.
fn previous_of(conn: &Connection, id: i64) -> Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT previous_id FROM model_activations WHERE model_id = ?1
             ORDER BY id DESC LIMIT 1",
            [id],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

/// Re-activates the model that was active before the current one. Rollbacks walk back
/// through the history: two rollbacks return two models back. Returns (from, to).
pub fn rollback(conn: &Connection, now: f64) -> Result<(i64, i64)> {
    let current = active_model(conn)?.ok_or(RegistryError::NoActiveModel)?;
    let target = previous_of(conn, current.id)?.ok_or(RegistryError::NothingToRollBack)?;
    let row = model(conn, target)?.ok_or(RegistryError::NoSuchModel(target))?;
    if matches!(row.status, ModelStatus::Corrupt | ModelStatus::Candidate) {
        return Err(RegistryError::NotActivatable {
            id: target,
            status: row.status,
        });
    }
    // The model rolled back to keeps its own predecessor, so the next rollback goes further.
    let before_target = previous_of(conn, target)?;
    switch_active(conn, target, before_target, "rollback", now)?;
    Ok((current.id, target))
}

/// Marks a model as made by retraining from `parent`, with a status.
pub fn set_trained(
    conn: &Connection,
    id: i64,
    parent: Option<i64>,
    status: ModelStatus,
) -> Result<()> {
    conn.execute(
        "UPDATE models SET kind = 'trained', parent_id = ?2, status = ?3 WHERE id = ?1",
        params![id, parent, status],
    )?;
    Ok(())
}

pub fn set_status(conn: &Connection, id: i64, status: ModelStatus) -> Result<()> {
    conn.execute(
        "UPDATE models SET status = ?2 WHERE id = ?1",
        params![id, status],
    )?;
    Ok(())
}

pub fn set_metrics(conn: &Connection, id: i64, metrics: &Value) -> Result<()> {
    conn.execute(
        "UPDATE models SET metrics = ?2 WHERE id = ?1",
        params![id, metrics.to_string()],
    )?;
    Ok(())
}

/// A model to register.
#[derive(Debug, Clone)]
pub struct NewModel<'a> {
    pub content_hash: &'a str,
    pub path: &'a str,
    pub name: &'a str,
    pub config_json: &'a str,
    pub provenance_json: &'a str,
}

/// A registered model's id, and whether it was known before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub id: i64,
    pub known: bool,
}

/// Registers a model (once per content hash; a known one keeps its row and takes the new
/// path). Activating it is a separate step ([`activate_and_requeue`]).
pub fn register(conn: &Connection, m: &NewModel, now: f64) -> rusqlite::Result<Registered> {
    let known = model_id_by_hash(conn, m.content_hash)?.is_some();
    conn.execute(
        "INSERT INTO models (content_hash, path, name, config, provenance, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (content_hash) DO UPDATE SET path = excluded.path",
        params![
            m.content_hash,
            m.path,
            m.name,
            m.config_json,
            m.provenance_json,
            now
        ],
    )?;
    let id = conn.query_row(
        "SELECT id FROM models WHERE content_hash = ?1",
        [m.content_hash],
        |r| r.get(0),
    )?;
    Ok(Registered { id, known })
}

/// The id of the model with this content hash, if registered.
pub fn model_id_by_hash(conn: &Connection, content_hash: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT id FROM models WHERE content_hash = ?1",
        [content_hash],
        |r| r.get(0),
    )
    .optional()
}

/// Puts back in the queue the stored images that a newly active `model_id` captions again, as
/// `recaption` says. Returns how many.
pub fn requeue(
    conn: &Connection,
    model_id: i64,
    recaption: Recaption,
    now: f64,
) -> rusqlite::Result<usize> {
    match recaption {
        Recaption::None => Ok(0),
        Recaption::Missing => queue::requeue_missing(conn, now),
        Recaption::All => queue::requeue_for_model(conn, model_id, now),
    }
}

/// [`activate`], then [`requeue`] when the active model changed. Run it in one transaction:
/// whoever activates a model (`gaze retrain --now`, `gaze models activate`, a daemon) then
/// leaves the new model's work as pending rows, which any daemon takes at its next scan.
/// Returns the model active before and how many images were queued again.
pub fn activate_and_requeue(
    conn: &Connection,
    id: i64,
    reason: &str,
    recaption: Recaption,
    now: f64,
) -> Result<(Option<i64>, usize)> {
    let was_active = model(conn, id)?
        .ok_or(RegistryError::NoSuchModel(id))?
        .active;
    let previous = activate(conn, id, reason, now)?;
    let requeued = if was_active {
        0
    } else {
        requeue(conn, id, recaption, now)?
    };
    Ok((previous, requeued))
}

/// [`rollback`], then [`requeue`] for the model rolled back to (in one transaction, as
/// [`activate_and_requeue`]). Returns (from, to) and how many images were queued again.
pub fn rollback_and_requeue(
    conn: &Connection,
    recaption: Recaption,
    now: f64,
) -> Result<((i64, i64), usize)> {
    let (from, to) = rollback(conn, now)?;
    let requeued = requeue(conn, to, recaption, now)?;
    Ok(((from, to), requeued))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::captions::{self, NewCaption};
    use crate::store::queue::{self, ImageStatus, ReadImage};
    use crate::store::runs::{
        fail_stale_runs, finish_run, last_decided_fingerprint, list_runs, run, set_run_log_path,
        start_run, tail, RunEnd, RunStatus,
    };
    use crate::store::Store;

    fn add(conn: &Connection, hash: &str) -> i64 {
        register(
            conn,
            &NewModel {
                content_hash: hash,
                path: &format!("/m/{hash}.safetensors"),
                name: hash,
                config_json: "{}",
                provenance_json: "{}",
            },
            1.0,
        )
        .unwrap()
        .id
    }

    fn active(conn: &Connection) -> i64 {
        active_model(conn).unwrap().unwrap().id
    }

    #[test]
    fn activate_and_rollback_walk_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.db")).unwrap();
        let c = store.conn();
        let (a, b, x) = (add(c, "a"), add(c, "b"), add(c, "x"));
        assert!(matches!(
            rollback(c, 1.0),
            Err(RegistryError::NoActiveModel)
        ));
        assert_eq!(activate(c, a, "start", 1.0).unwrap(), None);
        assert!(matches!(
            rollback(c, 1.0),
            Err(RegistryError::NothingToRollBack)
        ));
        assert_eq!(activate(c, b, "retrain", 2.0).unwrap(), Some(a));
        assert_eq!(activate(c, b, "retrain", 2.5).unwrap(), None, "no-op");
        set_trained(c, x, Some(b), ModelStatus::Ready).unwrap();
        assert_eq!(activate(c, x, "activate", 3.0).unwrap(), Some(b));
        // x -> b -> a, then nothing further.
        assert_eq!(rollback(c, 4.0).unwrap(), (x, b));
        assert_eq!(active(c), b);
        assert_eq!(rollback(c, 5.0).unwrap(), (b, a));
        assert_eq!(active(c), a);
        assert!(matches!(
            rollback(c, 6.0),
            Err(RegistryError::NothingToRollBack)
        ));
        let one: i64 = c
            .query_row("SELECT count(*) FROM models WHERE active = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(one, 1);
        let row = model(c, x).unwrap().unwrap();
        assert_eq!(
            (row.kind.as_str(), row.parent_id, row.active),
            ("trained", Some(b), false)
        );
        assert!(matches!(
            activate(c, 99, "activate", 7.0),
            Err(RegistryError::NoSuchModel(99))
        ));
    }

    #[test]
    fn corrupt_and_candidate_models_are_never_activated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.db")).unwrap();
        let c = store.conn();
        let (a, bad, cand, rej) = (add(c, "a"), add(c, "bad"), add(c, "cand"), add(c, "rej"));
        activate(c, a, "start", 1.0).unwrap();
        set_trained(c, bad, Some(a), ModelStatus::Corrupt).unwrap();
        set_trained(c, cand, Some(a), ModelStatus::Candidate).unwrap();
        set_trained(c, rej, Some(a), ModelStatus::Rejected).unwrap();
        for id in [bad, cand] {
            let e = activate(c, id, "activate", 2.0).unwrap_err();
            assert!(matches!(e, RegistryError::NotActivatable { .. }), "{e}");
        }
        assert_eq!(active(c), a);
        // A rejected model may still be chosen by hand; it becomes ready.
        assert_eq!(activate(c, rej, "activate", 3.0).unwrap(), Some(a));
        assert_eq!(model(c, rej).unwrap().unwrap().status, ModelStatus::Ready);
    }

    #[test]
    fn runs_are_recorded_and_stale_ones_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.db")).unwrap();
        let c = store.conn();
        let a = add(c, "a");
        let b = add(c, "b");
        let rule = serde_json::json!({"metric": "cider_d", "margin": 0.1});
        let r1 = start_run(c, "schedule", Some(a), &rule, "fp1", 1.0).unwrap();
        let scores = serde_json::json!({"cider_d": 0.5});
        finish_run(
            c,
            r1,
            &RunEnd {
                status: RunStatus::Rejected,
                candidate: Some(b),
                parent_metrics: Some(&scores),
                candidate_metrics: Some(&scores),
                log: "trained",
                error: None,
            },
            2.0,
        )
        .unwrap();
        assert_eq!(last_decided_fingerprint(c).unwrap().as_deref(), Some("fp1"));
        // A run left `running` by a process that died, with its log file.
        let r2 = start_run(c, "manual", Some(a), &rule, "fp2", 3.0).unwrap();
        let log = dir.path().join("run.log");
        std::fs::write(&log, "epoch 0 started\n").unwrap();
        set_run_log_path(c, r2, log.to_str().unwrap()).unwrap();
        c.execute(
            "UPDATE retrain_runs SET pid = 999999999 WHERE id = ?1",
            [r2],
        )
        .unwrap();
        // Ours (this process) is left alone.
        let r3 = start_run(c, "manual", Some(a), &rule, "fp3", 3.0).unwrap();
        assert_eq!(fail_stale_runs(c, |_| false, 4.0).unwrap(), 1);
        let runs = list_runs(c, 10).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![r3, r2, r1]
        );
        let dead = run(c, r2).unwrap().unwrap();
        assert_eq!(dead.status, RunStatus::Failed);
        assert!(dead.error.unwrap().contains("killed or crashed"));
        assert_eq!(dead.log.as_deref(), Some("epoch 0 started\n"));
        assert_eq!(run(c, r3).unwrap().unwrap().status, RunStatus::Running);
        assert_eq!(run(c, r1).unwrap().unwrap().candidate_metrics, Some(scores));
        // Failed runs do not count as decided.
        assert_eq!(last_decided_fingerprint(c).unwrap().as_deref(), Some("fp1"));
        let m = list_models(c).unwrap();
        assert_eq!(m[1].run_id, Some(r1));
    }

    #[test]
    fn requeue_missing_takes_images_without_a_finished_caption() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.db")).unwrap();
        let c = store.conn();
        let a = add(c, "a");
        let tokens: Vec<String> = vec!["<start>".into(), "x".into()];
        for (hash, finished) in [("h1", true), ("h2", false)] {
            captions::insert_caption(
                c,
                &NewCaption {
                    content_hash: hash,
                    model_id: a,
                    text: "x",
                    tokens: &tokens,
                    token_ids: &[1, 2],
                    score: -1.0,
                    finished,
                    beam_size: 1,
                    alphas: &[],
                    grid: 1,
                },
                1.0,
            )
            .unwrap();
            queue::mark_done(
                c,
                &ReadImage {
                    path: &format!("/{hash}.jpg"),
                    size: 1,
                    mtime_ns: 1,
                    content_hash: hash,
                    width: 1,
                    height: 1,
                },
                1.0,
            )
            .unwrap();
        }
        assert_eq!(queue::requeue_missing(c, 2.0).unwrap(), 1);
        let s = queue::image_state(c, "/h2.jpg").unwrap().unwrap();
        assert_eq!(s.status, ImageStatus::Pending);
        assert_eq!(tail("abcdef", 3), "[...]\ndef");
    }
}
