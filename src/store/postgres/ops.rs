//! The store's interface on PostgreSQL: the same meaning as the SQLite SQL in `store::queue`,
//! `store::captions`, `store::registry`, `store::runs` and `store::query`, in PostgreSQL's
//! dialect (booleans, `tsvector` search, `RETURNING`), on a [`PgStore`] or inside a [`PgTx`].

use postgres::Row;
use serde_json::Value;

use super::{PgStore, PgTx};
use crate::store::api::{
    Activation, Captions, FailedImage, NewRun, Query, Queue, Registry, Rollback, Runs,
};
use crate::store::captions::{attention, NewCaption};
use crate::store::query::{
    attention_record, AttentionRecord, Page, ResultRow, Selection, StatusReport,
};
use crate::store::queue::{ImageState, ImageStatus, PendingImage, ReadImage};
use crate::store::registry::{ModelKind, ModelRow, ModelStatus, NewModel, Recaption, Registered};
use crate::store::runs::{self, RunEnd, RunRow, RunStatus};
use crate::store::{Result, StoreError};

/// A connection the interface runs on: a [`PgStore`] or a [`PgTx`].
pub(crate) trait PgConn {
    fn pg(&self) -> &PgStore;
}

impl PgConn for PgStore {
    fn pg(&self) -> &PgStore {
        self
    }
}

impl PgConn for PgTx<'_> {
    fn pg(&self) -> &PgStore {
        self.store()
    }
}

/// A status column's text as its enum, or the store's error.
fn parse<T>(pg: &PgStore, text: &str, parse: fn(&str) -> Option<T>, what: &str) -> Result<T> {
    parse(text).ok_or_else(|| StoreError::Corrupt {
        path: pg.path(),
        reason: format!("{text:?} is not a {what}"),
    })
}

fn json(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

macro_rules! impl_queue {
    ($t:ty) => {
        impl Queue for $t {
    fn image_state(&self, path: &str) -> Result<Option<ImageState>> {
        let pg = self.pg();
        let Some(r) = pg.query_opt(
            "SELECT size, mtime_ns, status, attempts FROM images WHERE path = $1",
            &[&path],
            "reading an image's state",
        )?
        else {
            return Ok(None);
        };
        let status: String = pg.get(&r, 2)?;
        let attempts: i64 = pg.get(&r, 3)?;
        Ok(Some(ImageState {
            size: pg.get(&r, 0)?,
            mtime_ns: pg.get(&r, 1)?,
            status: parse(pg, &status, ImageStatus::parse, "status")?,
            attempts: attempts.clamp(0, u32::MAX as i64) as u32,
        }))
    }
    fn pending_paths(&self) -> Result<Vec<String>> {
        Ok(self.pending_images()?.into_iter().map(|p| p.path).collect())
    }
    fn pending_images(&self) -> Result<Vec<PendingImage>> {
        let pg = self.pg();
        pg.query(
            "SELECT path, size, mtime_ns FROM images WHERE status = 'pending'
             ORDER BY updated_at, id",
            &[],
            "listing pending images",
        )?
        .iter()
        .map(|r| {
            Ok(PendingImage {
                path: pg.get(r, 0)?,
                size: pg.get::<i64>(r, 1)?.max(0) as u64,
                mtime_ns: pg.get(r, 2)?,
            })
        })
        .collect()
    }
    fn live_paths(&self) -> Result<Vec<String>> {
        strings(
            self.pg(),
            "SELECT path FROM images WHERE status != 'gone'",
            "listing images",
        )
    }
    fn skipped_paths(&self) -> Result<Vec<String>> {
        strings(
            self.pg(),
            "SELECT path FROM skipped_files",
            "listing skipped entries",
        )
    }
    fn mark_pending(&mut self, path: &str, size: i64, mtime_ns: i64, now: f64) -> Result<()> {
        let pg = self.pg();
        pg.atomic(|| {
            // A changed file starts its attempts afresh, and a lease on its old content is
            // void: the new token fences off the worker that held it.
            pg.execute(
                "INSERT INTO images (path, size, mtime_ns, status, first_seen, updated_at)
                     VALUES ($1, $2, $3, 'pending', $4, $4)
                 ON CONFLICT (path) DO UPDATE SET
                     attempts = CASE WHEN images.size != excluded.size
                                       OR images.mtime_ns != excluded.mtime_ns
                                     THEN 0 ELSE images.attempts END,
                     error = CASE WHEN images.size != excluded.size
                                    OR images.mtime_ns != excluded.mtime_ns
                                  THEN NULL ELSE images.error END,
                     lease_token = CASE WHEN images.size != excluded.size
                                          OR images.mtime_ns != excluded.mtime_ns
                                        THEN nextval('lease_tokens')
                                        ELSE images.lease_token END,
                     size = excluded.size,
                     mtime_ns = excluded.mtime_ns,
                     status = 'pending',
                     updated_at = excluded.updated_at",
                &[&path, &size, &mtime_ns, &now],
                "queueing an image",
            )?;
            pg.execute(
                "DELETE FROM skipped_files WHERE path = $1",
                &[&path],
                "forgetting a skipped entry",
            )?;
            Ok(())
        })
    }
    fn mark_done(&mut self, img: &ReadImage, now: f64) -> Result<()> {
        self.pg().execute(
            "INSERT INTO images (path, content_hash, size, mtime_ns, width, height, status,
                                 first_seen, updated_at, done_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 'done', $7, $7, $7)
             ON CONFLICT (path) DO UPDATE SET
                 content_hash = excluded.content_hash, size = excluded.size,
                 mtime_ns = excluded.mtime_ns, width = excluded.width,
                 height = excluded.height, status = 'done', error = NULL,
                 updated_at = excluded.updated_at, done_at = excluded.done_at,
                 lease_owner = NULL, lease_until = NULL",
            &[
                &img.path,
                &img.content_hash,
                &img.size,
                &img.mtime_ns,
                &(img.width as i64),
                &(img.height as i64),
                &now,
            ],
            "marking an image done",
        )?;
        Ok(())
    }
    fn mark_failed(&mut self, img: &FailedImage, now: f64) -> Result<()> {
        self.pg().execute(
            "INSERT INTO images (path, content_hash, size, mtime_ns, status, error, attempts,
                                 first_seen, updated_at)
                 VALUES ($1, $2, $3, $4, 'failed', $5, 1, $6, $6)
             ON CONFLICT (path) DO UPDATE SET
                 content_hash = coalesce(excluded.content_hash, images.content_hash),
                 size = excluded.size, mtime_ns = excluded.mtime_ns, status = 'failed',
                 error = excluded.error, attempts = images.attempts + 1,
                 updated_at = excluded.updated_at, lease_owner = NULL, lease_until = NULL",
            &[
                &img.path,
                &img.content_hash,
                &img.size,
                &img.mtime_ns,
                &img.error,
                &now,
            ],
            "marking an image failed",
        )?;
        Ok(())
    }
    fn mark_gone(&mut self, path: &str, now: f64) -> Result<usize> {
        let pg = self.pg();
        let (prefix, escaped_prefix) = crate::store::path_key::folder_prefixes(path);
        pg.atomic(|| {
            pg.execute(
                "DELETE FROM skipped_files
                 WHERE path = $1 OR starts_with(path, $2) OR starts_with(path, $3)",
                &[&path, &prefix, &escaped_prefix],
                "forgetting skipped entries",
            )?;
            let n = pg.execute(
                "UPDATE images SET status = 'gone', updated_at = $4,
                                   lease_owner = NULL, lease_until = NULL
                 WHERE status != 'gone'
                   AND (path = $1 OR starts_with(path, $2) OR starts_with(path, $3))",
                &[&path, &prefix, &escaped_prefix, &now],
                "marking images gone",
            )?;
            Ok(n as usize)
        })
    }
    fn mark_skipped(&mut self, path: &str, kind: &str, now: f64) -> Result<()> {
        self.pg().execute(
            "INSERT INTO skipped_files (path, kind, seen_at) VALUES ($1, $2, $3)
             ON CONFLICT (path) DO UPDATE SET kind = excluded.kind, seen_at = excluded.seen_at",
            &[&path, &kind, &now],
            "recording a skipped entry",
        )?;
        Ok(())
    }
    fn unmark_skipped(&mut self, path: &str) -> Result<()> {
        self.pg().execute(
            "DELETE FROM skipped_files WHERE path = $1",
            &[&path],
            "forgetting a skipped entry",
        )?;
        Ok(())
    }
        }
    };
}
impl_queue!(PgStore);
impl_queue!(PgTx<'_>);

fn strings(pg: &PgStore, sql: &str, action: &str) -> Result<Vec<String>> {
    pg.query(sql, &[], action)?
        .iter()
        .map(|r| pg.get(r, 0))
        .collect()
}

macro_rules! impl_captions {
    ($t:ty) => {
        impl Captions for $t {
    fn caption_exists(&self, content_hash: &str, model_id: i64) -> Result<bool> {
        let pg = self.pg();
        let r = pg.query_one(
            "SELECT EXISTS (SELECT 1 FROM captions WHERE content_hash = $1 AND model_id = $2)",
            &[&content_hash, &model_id],
            "looking up a caption",
        )?;
        pg.get(&r, 0)
    }
    fn insert_caption(&mut self, c: &NewCaption, now: f64) -> Result<Option<i64>> {
        let pg = self.pg();
        pg.atomic(|| insert_caption(pg, c, now))
    }
        }
    };
}
impl_captions!(PgStore);
impl_captions!(PgTx<'_>);

/// Stores a caption and its attention; `None` when (content, model) already has one.
pub(crate) fn insert_caption(pg: &PgStore, c: &NewCaption, now: f64) -> Result<Option<i64>> {
    let tokens = serde_json::to_string(c.tokens).expect("strings serialise");
    let token_ids = serde_json::to_string(c.token_ids).expect("integers serialise");
    let Some(r) = pg.query_opt(
        "INSERT INTO captions (content_hash, model_id, text, tokens, token_ids, score,
                               finished, beam_size, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (content_hash, model_id) DO NOTHING
         RETURNING id",
        &[
            &c.content_hash,
            &c.model_id,
            &c.text,
            &tokens,
            &token_ids,
            &(c.score as f64),
            &c.finished,
            &(c.beam_size as i64),
            &now,
        ],
        "storing a caption",
    )?
    else {
        return Ok(None);
    };
    let id: i64 = pg.get(&r, 0)?;
    pg.execute(
        "INSERT INTO attention (caption_id, grid, steps, encoding, weights)
             VALUES ($1, $2, $3, $4, $5)",
        &[
            &id,
            &(c.grid as i64),
            &(c.alphas.len() as i64),
            &attention::ENCODING,
            &attention::encode(c.alphas, c.grid),
        ],
        "storing attention",
    )?;
    Ok(Some(id))
}

const MODEL_COLUMNS: &str = "m.id, m.name, m.path, m.content_hash, m.kind, m.status, m.parent_id,
     m.active, m.created_at, m.activated_at, m.metrics,
     (SELECT max(r.id) FROM retrain_runs r WHERE r.candidate_model_id = m.id),
     (SELECT count(*) FROM captions c WHERE c.model_id = m.id)";

fn model_row(pg: &PgStore, r: &Row) -> Result<ModelRow> {
    let kind: String = pg.get(r, 4)?;
    let status: String = pg.get(r, 5)?;
    Ok(ModelRow {
        id: pg.get(r, 0)?,
        name: pg.get(r, 1)?,
        path: pg.get(r, 2)?,
        content_hash: pg.get(r, 3)?,
        kind: parse(pg, &kind, ModelKind::parse, "model kind")?,
        status: parse(pg, &status, ModelStatus::parse, "model status")?,
        parent_id: pg.get(r, 6)?,
        active: pg.get(r, 7)?,
        created_at: pg.get(r, 8)?,
        activated_at: pg.get(r, 9)?,
        metrics: json(pg.get(r, 10)?),
        run_id: pg.get(r, 11)?,
        captions: pg.get(r, 12)?,
    })
}

fn one_model(
    pg: &PgStore,
    filter: &str,
    arg: &(dyn postgres::types::ToSql + Sync),
) -> Result<Option<ModelRow>> {
    pg.query_opt(
        &format!("SELECT {MODEL_COLUMNS} FROM models m WHERE {filter}"),
        &[arg],
        "reading a model",
    )?
    .map(|r| model_row(pg, &r))
    .transpose()
}

fn active_model(pg: &PgStore) -> Result<Option<ModelRow>> {
    pg.query_opt(
        &format!("SELECT {MODEL_COLUMNS} FROM models m WHERE m.active"),
        &[],
        "reading the active model",
    )?
    .map(|r| model_row(pg, &r))
    .transpose()
}

/// Makes `id` active and records it; `previous` is what a later rollback returns to.
fn switch_active(
    pg: &PgStore,
    id: i64,
    previous: Option<i64>,
    reason: &str,
    now: f64,
) -> Result<()> {
    pg.execute(
        "UPDATE models SET active = false WHERE active",
        &[],
        "activating a model",
    )?;
    pg.execute(
        "UPDATE models SET active = true, status = 'ready', activated_at = $2 WHERE id = $1",
        &[&id, &now],
        "activating a model",
    )?;
    pg.execute(
        "INSERT INTO model_activations (model_id, previous_id, at, reason)
             VALUES ($1, $2, $3, $4)",
        &[&id, &previous, &now, &reason],
        "recording an activation",
    )?;
    Ok(())
}

/// The model active before `id` was last activated.
fn previous_of(pg: &PgStore, id: i64) -> Result<Option<i64>> {
    let r = pg.query_opt(
        "SELECT previous_id FROM model_activations WHERE model_id = $1
         ORDER BY id DESC LIMIT 1",
        &[&id],
        "reading the activation history",
    )?;
    match r {
        Some(r) => pg.get(&r, 0),
        None => Ok(None),
    }
}

fn requeue(pg: &PgStore, model_id: i64, recaption: Recaption, now: f64) -> Result<usize> {
    let n = match recaption {
        Recaption::None => 0,
        Recaption::Missing => pg.execute(
            "UPDATE images SET status = 'pending', updated_at = $1
             WHERE status = 'done'
               AND NOT EXISTS (SELECT 1 FROM captions c
                               WHERE c.content_hash = images.content_hash AND c.finished)",
            &[&now],
            "queueing images again",
        )?,
        Recaption::All => pg.execute(
            "UPDATE images SET status = 'pending', updated_at = $2
             WHERE status = 'done'
               AND NOT EXISTS (SELECT 1 FROM captions c
                               WHERE c.content_hash = images.content_hash
                                 AND c.model_id = $1)",
            &[&model_id, &now],
            "queueing images again",
        )?,
    };
    Ok(n as usize)
}

/// Tells workers that the active model changed (they also poll; this makes it quick).
fn notify_activation(pg: &PgStore, id: i64) -> Result<()> {
    pg.execute(
        "SELECT pg_notify($1, $2)",
        &[&super::lease::ACTIVATION_CHANNEL, &id.to_string()],
        "telling workers of the new model",
    )?;
    Ok(())
}

macro_rules! impl_registry {
    ($t:ty) => {
        impl Registry for $t {
    fn register_model(&mut self, m: &NewModel, now: f64) -> Result<Registered> {
        let pg = self.pg();
        pg.atomic(|| {
            let known = pg
                .query_opt(
                    "SELECT id FROM models WHERE content_hash = $1",
                    &[&m.content_hash],
                    "registering a model",
                )?
                .is_some();
            let r = pg.query_one(
                "INSERT INTO models (content_hash, path, name, config, provenance, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (content_hash) DO UPDATE SET path = excluded.path
                 RETURNING id",
                &[
                    &m.content_hash,
                    &m.path,
                    &m.name,
                    &m.config_json,
                    &m.provenance_json,
                    &now,
                ],
                "registering a model",
            )?;
            Ok(Registered {
                id: pg.get(&r, 0)?,
                known,
            })
        })
    }
    fn model(&self, id: i64) -> Result<Option<ModelRow>> {
        one_model(self.pg(), "m.id = $1", &id)
    }
    fn model_by_hash(&self, content_hash: &str) -> Result<Option<ModelRow>> {
        one_model(self.pg(), "m.content_hash = $1", &content_hash)
    }
    fn active_model(&self) -> Result<Option<ModelRow>> {
        active_model(self.pg())
    }
    fn list_models(&self) -> Result<Vec<ModelRow>> {
        let pg = self.pg();
        pg.query(
            &format!("SELECT {MODEL_COLUMNS} FROM models m ORDER BY m.id"),
            &[],
            "listing models",
        )?
        .iter()
        .map(|r| model_row(pg, r))
        .collect()
    }
    fn activate(
        &mut self,
        id: i64,
        reason: &str,
        recaption: Recaption,
        now: f64,
    ) -> Result<Activation> {
        let pg = self.pg();
        pg.atomic(|| {
            // One activation at a time: the row lock orders concurrent ones.
            pg.execute(
                "SELECT id FROM models WHERE id = $1 OR active FOR UPDATE",
                &[&id],
                "locking the registry",
            )?;
            let target = one_model(pg, "m.id = $1", &id)?.ok_or(StoreError::NoSuchModel(id))?;
            if target.active {
                return Ok(Activation {
                    previous: None,
                    requeued: 0,
                });
            }
            if !matches!(target.status, ModelStatus::Ready | ModelStatus::Rejected) {
                return Err(StoreError::NotActivatable {
                    id,
                    status: target.status,
                });
            }
            let previous = active_model(pg)?.map(|m| m.id);
            switch_active(pg, id, previous, reason, now)?;
            let requeued = requeue(pg, id, recaption, now)?;
            notify_activation(pg, id)?;
            Ok(Activation { previous, requeued })
        })
    }
    fn rollback(&mut self, recaption: Recaption, now: f64) -> Result<Rollback> {
        let pg = self.pg();
        pg.atomic(|| {
            pg.execute(
                "SELECT id FROM models WHERE active FOR UPDATE",
                &[],
                "locking the registry",
            )?;
            let current = active_model(pg)?.ok_or(StoreError::NoActiveModel)?;
            let target = previous_of(pg, current.id)?.ok_or(StoreError::NothingToRollBack)?;
            let row =
                one_model(pg, "m.id = $1", &target)?.ok_or(StoreError::NoSuchModel(target))?;
            if matches!(row.status, ModelStatus::Corrupt | ModelStatus::Candidate) {
                return Err(StoreError::NotActivatable {
                    id: target,
                    status: row.status,
                });
            }
            // The model rolled back to keeps its own predecessor, so rollbacks walk back.
            let before_target = previous_of(pg, target)?;
            switch_active(pg, target, before_target, "rollback", now)?;
            let requeued = requeue(pg, target, recaption, now)?;
            notify_activation(pg, target)?;
            Ok(Rollback {
                from: current.id,
                to: target,
                requeued,
            })
        })
    }
    fn requeue(&mut self, model_id: i64, recaption: Recaption, now: f64) -> Result<usize> {
        requeue(self.pg(), model_id, recaption, now)
    }
    fn set_trained(&mut self, id: i64, parent: Option<i64>, status: ModelStatus) -> Result<()> {
        self.pg().execute(
            "UPDATE models SET kind = 'trained', parent_id = $2, status = $3 WHERE id = $1",
            &[&id, &parent, &status.as_str()],
            "recording a trained model",
        )?;
        Ok(())
    }
    fn set_status(&mut self, id: i64, status: ModelStatus) -> Result<()> {
        self.pg().execute(
            "UPDATE models SET status = $2 WHERE id = $1",
            &[&id, &status.as_str()],
            "setting a model's status",
        )?;
        Ok(())
    }
    fn set_metrics(&mut self, id: i64, metrics: &Value) -> Result<()> {
        self.pg().execute(
            "UPDATE models SET metrics = $2 WHERE id = $1",
            &[&id, &metrics.to_string()],
            "recording a model's scores",
        )?;
        Ok(())
    }
        }
    };
}
impl_registry!(PgStore);
impl_registry!(PgTx<'_>);

const RUN_COLUMNS: &str = "id, started_at, finished_at, status, trigger, pid, parent_model_id,
     candidate_model_id, rule, parent_metrics, candidate_metrics, fingerprint, log_path, log,
     error";

fn run_row(pg: &PgStore, r: &Row) -> Result<RunRow> {
    let status: String = pg.get(r, 3)?;
    Ok(RunRow {
        id: pg.get(r, 0)?,
        started_at: pg.get(r, 1)?,
        finished_at: pg.get(r, 2)?,
        status: parse(pg, &status, RunStatus::parse, "run status")?,
        trigger: pg.get(r, 4)?,
        pid: pg.get(r, 5)?,
        parent_model_id: pg.get(r, 6)?,
        candidate_model_id: pg.get(r, 7)?,
        rule: json(pg.get(r, 8)?),
        parent_metrics: json(pg.get(r, 9)?),
        candidate_metrics: json(pg.get(r, 10)?),
        fingerprint: pg.get(r, 11)?,
        log_path: pg.get(r, 12)?,
        log: pg.get(r, 13)?,
        error: pg.get(r, 14)?,
    })
}

fn finish_run(pg: &PgStore, id: i64, end: &RunEnd, now: f64) -> Result<()> {
    pg.execute(
        "UPDATE retrain_runs SET finished_at = $2, status = $3, candidate_model_id = $4,
             parent_metrics = $5, candidate_metrics = $6, log = $7, error = $8
         WHERE id = $1",
        &[
            &id,
            &now,
            &end.status.as_str(),
            &end.candidate,
            &end.parent_metrics.map(|v| v.to_string()),
            &end.candidate_metrics.map(|v| v.to_string()),
            &end.log,
            &end.error,
        ],
        "recording how a run ended",
    )?;
    Ok(())
}

macro_rules! impl_runs {
    ($t:ty) => {
        impl Runs for $t {
    fn start_run(&mut self, run: &NewRun, now: f64) -> Result<i64> {
        let pg = self.pg();
        let r = pg.query_one(
            "INSERT INTO retrain_runs (started_at, status, trigger, pid, host, parent_model_id,
                                       rule, fingerprint)
                 VALUES ($1, 'running', $2, $3, $4, $5, $6, $7)
             RETURNING id",
            &[
                &now,
                &run.trigger,
                &(std::process::id() as i64),
                &super::lease::host_name(),
                &run.parent,
                &run.rule.to_string(),
                &run.fingerprint,
            ],
            "recording a retraining run",
        )?;
        pg.get(&r, 0)
    }
    fn set_run_log_path(&mut self, id: i64, path: &str) -> Result<()> {
        self.pg().execute(
            "UPDATE retrain_runs SET log_path = $2 WHERE id = $1",
            &[&id, &path],
            "recording a run's log",
        )?;
        Ok(())
    }
    fn finish_run(&mut self, id: i64, end: &RunEnd, now: f64) -> Result<()> {
        finish_run(self.pg(), id, end, now)
    }
    fn list_runs(&self, limit: usize) -> Result<Vec<RunRow>> {
        let pg = self.pg();
        let limit = limit.min(i64::MAX as usize) as i64;
        pg.query(
            &format!("SELECT {RUN_COLUMNS} FROM retrain_runs ORDER BY id DESC LIMIT $1"),
            &[&limit],
            "listing runs",
        )?
        .iter()
        .map(|r| run_row(pg, r))
        .collect()
    }
    fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let pg = self.pg();
        pg.query_opt(
            &format!("SELECT {RUN_COLUMNS} FROM retrain_runs WHERE id = $1"),
            &[&id],
            "reading a run",
        )?
        .map(|r| run_row(pg, &r))
        .transpose()
    }
    fn last_decided_fingerprint(&self) -> Result<Option<String>> {
        let pg = self.pg();
        match pg.query_opt(
            "SELECT fingerprint FROM retrain_runs WHERE status IN ('promoted', 'rejected')
             ORDER BY id DESC LIMIT 1",
            &[],
            "reading runs",
        )? {
            Some(r) => pg.get(&r, 0),
            None => Ok(None),
        }
    }
    fn fail_stale_runs(&mut self, alive: &dyn Fn(i64) -> bool, now: f64) -> Result<usize> {
        let pg = self.pg();
        let me = std::process::id() as i64;
        let host = super::lease::host_name();
        pg.atomic(|| {
            // Only this host can tell whether one of its processes lives; runs copied from a
            // SQLite store name no host and are judged here.
            let stale = pg.query(
                "SELECT id, pid, log_path FROM retrain_runs
                 WHERE status = 'running' AND (host = $1 OR host = '') FOR UPDATE",
                &[&host],
                "listing running runs",
            )?;
            let mut n = 0;
            for r in &stale {
                let (id, pid, log_path): (i64, i64, Option<String>) =
                    (pg.get(r, 0)?, pg.get(r, 1)?, pg.get(r, 2)?);
                if pid == me || alive(pid) {
                    continue;
                }
                let log = log_path
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|s| runs::tail(&s, runs::LOG_KEEP))
                    .unwrap_or_default();
                let error = format!(
                    "the process running it (pid {pid} on {host}) ended before the run \
                     finished (killed or crashed); the active model was not changed"
                );
                finish_run(pg, id, &RunEnd::failed(&log, &error), now)?;
                n += 1;
            }
            Ok(n)
        })
    }
        }
    };
}
impl_runs!(PgStore);
impl_runs!(PgTx<'_>);

const COLUMNS: &str = "i.id, i.path, i.status, i.content_hash, i.width, i.height, i.attempts,
    i.error, c.id, c.text, c.score, c.finished, c.beam_size, m.id, m.name,
    to_char(to_timestamp(c.created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";

fn result_row(pg: &PgStore, r: &Row) -> Result<ResultRow> {
    let status: String = pg.get(r, 2)?;
    Ok(ResultRow {
        image_id: pg.get(r, 0)?,
        path: pg.get(r, 1)?,
        status: parse(pg, &status, ImageStatus::parse, "status")?,
        content_hash: pg.get(r, 3)?,
        width: pg.get(r, 4)?,
        height: pg.get(r, 5)?,
        attempts: pg.get(r, 6)?,
        error: pg.get(r, 7)?,
        caption_id: pg.get(r, 8)?,
        caption: pg.get(r, 9)?,
        score: pg.get(r, 10)?,
        finished: pg.get(r, 11)?,
        beam_size: pg.get(r, 12)?,
        model_id: pg.get(r, 13)?,
        model: pg.get(r, 14)?,
        created_at: pg.get(r, 15)?,
    })
}

/// A selection's value for `$1`.
enum Arg {
    None,
    Text(String),
    Id(i64),
}

/// A selection as SQL without a LIMIT, its argument, and the selection's own bound on the
/// number of rows; `None` when it can match nothing.
fn selection_sql(sel: &Selection) -> Option<(String, Arg, Option<usize>)> {
    let joined = "FROM images i
        LEFT JOIN captions c ON c.content_hash = i.content_hash
        LEFT JOIN models m ON m.id = c.model_id";
    Some(match sel {
        Selection::Path(p) => (
            format!("SELECT {COLUMNS} {joined} WHERE i.path = $1 ORDER BY c.id"),
            Arg::Text(p.clone()),
            None,
        ),
        Selection::ImageId(id) => (
            format!("SELECT {COLUMNS} {joined} WHERE i.id = $1 ORDER BY c.id"),
            Arg::Id(*id),
            None,
        ),
        Selection::Recent(n) => (
            format!(
                "SELECT {COLUMNS} {joined} WHERE i.status = 'done' AND c.id IS NOT NULL
                 ORDER BY i.done_at DESC, i.id DESC, c.id"
            ),
            Arg::None,
            Some(*n),
        ),
        Selection::Failed => (
            format!(
                "SELECT {COLUMNS} FROM images i
                 LEFT JOIN captions c ON false
                 LEFT JOIN models m ON false
                 WHERE i.status = 'failed' ORDER BY i.updated_at DESC, i.id DESC"
            ),
            Arg::None,
            None,
        ),
        Selection::Search(words) => {
            // No words match nothing.
            words.split_whitespace().next()?;
            // plainto_tsquery takes the words as plain text (no operators) and needs all.
            (
                format!(
                    "SELECT {COLUMNS}
                     FROM captions c
                     JOIN models m ON m.id = c.model_id
                     JOIN images i ON i.content_hash = c.content_hash
                     WHERE c.search @@ plainto_tsquery('english', $1)
                     ORDER BY ts_rank(c.search, plainto_tsquery('english', $1)) DESC, i.id, c.id"
                ),
                Arg::Text(words.clone()),
                None,
            )
        }
    })
}

fn run_selection(pg: &PgStore, sql: &str, arg: &Arg, limit: Option<i64>) -> Result<Vec<Row>> {
    let action = "querying captions";
    match (arg, limit) {
        (Arg::None, None) => pg.query(sql, &[], action),
        (Arg::None, Some(l)) => pg.query(&format!("{sql} LIMIT $1"), &[&l], action),
        (Arg::Text(t), None) => pg.query(sql, &[t], action),
        (Arg::Text(t), Some(l)) => pg.query(&format!("{sql} LIMIT $2"), &[t, &l], action),
        (Arg::Id(id), None) => pg.query(sql, &[id], action),
        (Arg::Id(id), Some(l)) => pg.query(&format!("{sql} LIMIT $2"), &[id, &l], action),
    }
}

macro_rules! impl_query {
    ($t:ty) => {
        impl Query for $t {
            fn select(&self, sel: &Selection, limit: usize) -> Result<Vec<ResultRow>> {
                let pg = self.pg();
                let Some((sql, arg, bound)) = selection_sql(sel) else {
                    return Ok(Vec::new());
                };
                let limit = bound.map_or(limit, |b| b.min(limit)).min(i64::MAX as usize) as i64;
                run_selection(pg, &sql, &arg, Some(limit))?
                    .iter()
                    .map(|r| result_row(pg, r))
                    .collect()
            }
            fn select_page(&self, sel: &Selection, limit: usize) -> Result<Page> {
                let rows = self.select(sel, limit)?;
                if rows.len() < limit {
                    let total = rows.len();
                    return Ok(Page { rows, total });
                }
                let Some((sql, arg, bound)) = selection_sql(sel) else {
                    return Ok(Page { rows, total: 0 });
                };
                let pg = self.pg();
                let counted =
                    run_selection(pg, &format!("SELECT count(*) FROM ({sql}) s"), &arg, None)?;
                let count: i64 = match counted.first() {
                    Some(r) => pg.get(r, 0)?,
                    None => 0,
                };
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                Ok(Page {
                    total: bound.map_or(count, |b| b.min(count)).max(rows.len()),
                    rows,
                })
            }
            fn attention_of(&self, caption_id: i64) -> Result<Option<AttentionRecord>> {
                let pg = self.pg();
                let Some(r) = pg.query_opt(
                    "SELECT c.tokens, a.grid, a.steps, a.encoding, a.weights
             FROM captions c JOIN attention a ON a.caption_id = c.id WHERE c.id = $1",
                    &[&caption_id],
                    "reading attention",
                )?
                else {
                    return Ok(None);
                };
                let tokens: String = pg.get(&r, 0)?;
                let grid: i64 = pg.get(&r, 1)?;
                let steps: i64 = pg.get(&r, 2)?;
                let encoding: String = pg.get(&r, 3)?;
                let blob: Vec<u8> = pg.get(&r, 4)?;
                attention_record(&tokens, grid, steps, &encoding, &blob)
                    .map(Some)
                    .map_err(|reason| StoreError::BadAttention(caption_id, reason))
            }
            fn status(&self, now: f64) -> Result<StatusReport> {
                let pg = self.pg();
                let mut by_status: Vec<(ImageStatus, i64)> =
                    ImageStatus::ALL.iter().map(|s| (*s, 0)).collect();
                for r in pg.query(
                    "SELECT status, count(*) FROM images GROUP BY status",
                    &[],
                    "counting images",
                )? {
                    let status: String = pg.get(&r, 0)?;
                    let n: i64 = pg.get(&r, 1)?;
                    if let Some(slot) = ImageStatus::parse(&status)
                        .and_then(|s| by_status.iter_mut().find(|(k, _)| *k == s))
                    {
                        slot.1 = n;
                    }
                }
                let r = pg.query_one(
                    "SELECT (SELECT count(*) FROM images WHERE done_at >= $1),
                    (SELECT count(*) FROM captions),
                    (SELECT count(*) FROM models),
                    (SELECT count(*) FROM skipped_files)",
                    &[&(now - 60.0)],
                    "summing up the store",
                )?;
                let done_last_minute: i64 = pg.get(&r, 0)?;
                let images = by_status.iter().map(|(_, n)| n).sum();
                let backlog = by_status[0].1;
                Ok(StatusReport {
                    schema_version: pg.found_version()?,
                    images,
                    by_status,
                    backlog,
                    captions: pg.get(&r, 1)?,
                    done_last_minute,
                    images_per_second: done_last_minute as f64 / 60.0,
                    active_model: active_model(pg)?,
                    models: pg.get(&r, 2)?,
                    skipped: pg.get(&r, 3)?,
                    workers: super::lease::recent_workers(pg, now)?,
                })
            }
        }
    };
}
impl_query!(PgStore);
impl_query!(PgTx<'_>);
