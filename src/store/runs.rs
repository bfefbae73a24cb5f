//! Retraining runs: the `retrain_runs` table, one row per cycle (started `running`, then
//! promoted, rejected or failed, with its rule, the scores of both models and its log).
//!
//! Functions take a `&Connection` and do not commit.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

text_enum! {
    /// Where a retraining run stands (`retrain_runs.status`).
    RunStatus {
        Running = "running",
        Promoted = "promoted",
        Rejected = "rejected",
        Failed = "failed",
    }
}

/// A retraining run, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub status: RunStatus,
    pub trigger: String,
    pub pid: i64,
    pub parent_model_id: Option<i64>,
    pub candidate_model_id: Option<i64>,
    pub rule: Option<Value>,
    pub parent_metrics: Option<Value>,
    pub candidate_metrics: Option<Value>,
    pub fingerprint: Option<String>,
    pub log_path: Option<String>,
    pub log: Option<String>,
    pub error: Option<String>,
}

const RUN_COLUMNS: &str = "id, started_at, finished_at, status, trigger, pid, parent_model_id,
     candidate_model_id, rule, parent_metrics, candidate_metrics, fingerprint, log_path, log,
     error";

fn run_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    let json = |i: usize| -> rusqlite::Result<Option<Value>> {
        let s: Option<String> = r.get(i)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    };
    Ok(RunRow {
        id: r.get(0)?,
        started_at: r.get(1)?,
        finished_at: r.get(2)?,
        status: r.get(3)?,
        trigger: r.get(4)?,
        pid: r.get(5)?,
        parent_model_id: r.get(6)?,
        candidate_model_id: r.get(7)?,
        rule: json(8)?,
        parent_metrics: json(9)?,
        candidate_metrics: json(10)?,
        fingerprint: r.get(11)?,
        log_path: r.get(12)?,
        log: r.get(13)?,
        error: r.get(14)?,
    })
}

/// Records a run as started; returns its id.
pub fn start_run(
    conn: &Connection,
    trigger: &str,
    parent: Option<i64>,
    rule: &Value,
    fingerprint: &str,
    now: f64,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO retrain_runs (started_at, status, trigger, pid, parent_model_id, rule,
                                   fingerprint)
             VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?6)",
        params![
            now,
            trigger,
            std::process::id() as i64,
            parent,
            rule.to_string(),
            fingerprint
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

pub fn set_run_log_path(conn: &Connection, id: i64, path: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE retrain_runs SET log_path = ?2 WHERE id = ?1",
        params![id, path],
    )?;
    Ok(())
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunEnd<'a> {
    /// Promoted, rejected or failed.
    pub status: RunStatus,
    pub candidate: Option<i64>,
    pub parent_metrics: Option<&'a Value>,
    pub candidate_metrics: Option<&'a Value>,
    pub log: &'a str,
    pub error: Option<&'a str>,
}

impl<'a> RunEnd<'a> {
    /// A run that failed with `error`, leaving no candidate.
    pub fn failed(log: &'a str, error: &'a str) -> Self {
        RunEnd {
            status: RunStatus::Failed,
            candidate: None,
            parent_metrics: None,
            candidate_metrics: None,
            log,
            error: Some(error),
        }
    }
}

pub fn finish_run(conn: &Connection, id: i64, end: &RunEnd, now: f64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE retrain_runs SET finished_at = ?2, status = ?3, candidate_model_id = ?4,
             parent_metrics = ?5, candidate_metrics = ?6, log = ?7, error = ?8
         WHERE id = ?1",
        params![
            id,
            now,
            end.status,
            end.candidate,
            end.parent_metrics.map(|v| v.to_string()),
            end.candidate_metrics.map(|v| v.to_string()),
            end.log,
            end.error
        ],
    )?;
    Ok(())
}

/// Runs, newest first; at most `limit`.
pub fn list_runs(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<RunRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM retrain_runs ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit as i64], run_row)?;
    rows.collect()
}

pub fn run(conn: &Connection, id: i64) -> rusqlite::Result<Option<RunRow>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM retrain_runs WHERE id = ?1"),
        [id],
        run_row,
    )
    .optional()
}

/// The fingerprint of the newest run that finished with a decision (promoted or rejected).
pub fn last_decided_fingerprint(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT fingerprint FROM retrain_runs WHERE status IN ('promoted', 'rejected')
             ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .map(Option::flatten)
}

/// Records as failed every run still `running` whose process is gone (`alive` says whether a
/// process id lives; this process's own runs are never stale). Returns how many.
pub fn fail_stale_runs(
    conn: &Connection,
    alive: impl Fn(i64) -> bool,
    now: f64,
) -> rusqlite::Result<usize> {
    let me = std::process::id() as i64;
    let stale: Vec<(i64, i64, Option<String>)> = {
        let mut stmt =
            conn.prepare("SELECT id, pid, log_path FROM retrain_runs WHERE status = 'running'")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let mut n = 0;
    for (id, pid, log_path) in stale {
        if pid == me || alive(pid) {
            continue;
        }
        // What the run managed to log before it died.
        let log = log_path
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| tail(&s, LOG_KEEP))
            .unwrap_or_default();
        let error = format!(
            "the process running it (pid {pid}) ended before the run finished \
             (killed or crashed); the active model was not changed"
        );
        finish_run(conn, id, &RunEnd::failed(&log, &error), now)?;
        n += 1;
    }
    Ok(n)
}

/// How much of a run's log the database keeps (the end).
pub const LOG_KEEP: usize = 64 * 1024;

/// The last `max` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]\n{}", &s[start..])
}

/// Whether a process id is alive (Linux: its /proc entry exists; elsewhere assumed alive
/// unless it is this process's).
pub fn process_alive(pid: i64) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}
