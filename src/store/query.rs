//! Queries for people and other programs: captions by path, words, recency or id; failures;
//! the attention maps of a caption; and a status summary.

use rusqlite::{Connection, OptionalExtension, Row};
use serde::{Serialize, Serializer};

use super::captions::attention;
use super::queue::ImageStatus;
use super::registry::{self, ModelRow};

/// Which images a query selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// One image by its absolute path.
    Path(String),
    /// Captions matching every word (full-text search, best match first).
    Search(String),
    /// The most recently captioned images.
    Recent(usize),
    ImageId(i64),
    /// Images that failed, most recent first.
    Failed,
}

/// One image with one of its captions (or none: pending, failed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultRow {
    pub image_id: i64,
    pub path: String,
    pub status: ImageStatus,
    pub content_hash: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub attempts: i64,
    pub error: Option<String>,
    pub caption_id: Option<i64>,
    pub caption: Option<String>,
    pub score: Option<f64>,
    pub finished: Option<bool>,
    pub beam_size: Option<i64>,
    pub model_id: Option<i64>,
    pub model: Option<String>,
    /// When the caption was written (UTC, ISO 8601).
    pub created_at: Option<String>,
}

const COLUMNS: &str = "i.id, i.path, i.status, i.content_hash, i.width, i.height, i.attempts,
    i.error, c.id, c.text, c.score, c.finished, c.beam_size, m.id, m.name,
    strftime('%Y-%m-%dT%H:%M:%SZ', c.created_at, 'unixepoch')";

fn row(r: &Row) -> rusqlite::Result<ResultRow> {
    Ok(ResultRow {
        image_id: r.get(0)?,
        path: r.get(1)?,
        status: r.get(2)?,
        content_hash: r.get(3)?,
        width: r.get(4)?,
        height: r.get(5)?,
        attempts: r.get(6)?,
        error: r.get(7)?,
        caption_id: r.get(8)?,
        caption: r.get(9)?,
        score: r.get(10)?,
        finished: r.get(11)?,
        beam_size: r.get(12)?,
        model_id: r.get(13)?,
        model: r.get(14)?,
        created_at: r.get(15)?,
    })
}

/// Turns free words into an FTS5 query that matches captions holding all of them: each word
/// becomes a quoted string, so FTS5's operators and punctuation in the input are plain text.
pub fn fts_query(words: &str) -> Option<String> {
    let terms: Vec<String> = words
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// A selection's first rows and how many rows it matches in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<ResultRow>,
    /// Every matching row; more than `rows.len()` when the limit cut the result.
    pub total: usize,
}

impl Page {
    /// Whether the limit left matching rows out.
    pub fn truncated(&self) -> bool {
        self.total > self.rows.len()
    }
}

/// A selection as SQL without a LIMIT, its parameters, and the selection's own bound on the
/// number of rows (`Recent(n)`); `None` when it can match nothing.
fn selection_sql(sel: &Selection) -> Option<(String, Vec<rusqlite::types::Value>, Option<usize>)> {
    let joined = "FROM images i
        LEFT JOIN captions c ON c.content_hash = i.content_hash
        LEFT JOIN models m ON m.id = c.model_id";
    Some(match sel {
        Selection::Path(p) => (
            format!("SELECT {COLUMNS} {joined} WHERE i.path = ?1 ORDER BY c.id"),
            vec![p.clone().into()],
            None,
        ),
        Selection::ImageId(id) => (
            format!("SELECT {COLUMNS} {joined} WHERE i.id = ?1 ORDER BY c.id"),
            vec![(*id).into()],
            None,
        ),
        Selection::Recent(n) => (
            format!(
                "SELECT {COLUMNS} {joined} WHERE i.status = 'done' AND c.id IS NOT NULL
                 ORDER BY i.done_at DESC, i.id DESC, c.id"
            ),
            vec![],
            Some(*n),
        ),
        Selection::Failed => (
            format!(
                "SELECT {COLUMNS} FROM images i
                 LEFT JOIN captions c ON 0
                 LEFT JOIN models m ON 0
                 WHERE i.status = 'failed' ORDER BY i.updated_at DESC, i.id DESC"
            ),
            vec![],
            None,
        ),
        Selection::Search(words) => (
            format!(
                "SELECT {COLUMNS}
                 FROM captions_fts f
                 JOIN captions c ON c.id = f.rowid
                 JOIN models m ON m.id = c.model_id
                 JOIN images i ON i.content_hash = c.content_hash
                 WHERE captions_fts MATCH ?1
                 ORDER BY bm25(captions_fts), i.id"
            ),
            vec![fts_query(words)?.into()],
            None,
        ),
    })
}

/// SQLite takes a LIMIT as a signed 64-bit integer.
fn sql_limit(n: usize) -> i64 {
    n.min(i64::MAX as usize) as i64
}

/// Runs a selection; at most `limit` rows.
pub fn select(
    conn: &Connection,
    sel: &Selection,
    limit: usize,
) -> rusqlite::Result<Vec<ResultRow>> {
    let Some((sql, mut args, bound)) = selection_sql(sel) else {
        return Ok(Vec::new());
    };
    let limit = bound.map_or(limit, |b| b.min(limit));
    args.push(sql_limit(limit).into());
    let mut stmt = conn.prepare(&format!("{sql} LIMIT ?{}", args.len()))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row)?;
    rows.collect()
}

/// Runs a selection; at most `limit` rows, and how many match in all (counted only when the
/// limit was reached), so that a cut result can say so.
pub fn select_page(conn: &Connection, sel: &Selection, limit: usize) -> rusqlite::Result<Page> {
    let rows = select(conn, sel, limit)?;
    if rows.len() < limit {
        let total = rows.len();
        return Ok(Page { rows, total });
    }
    let Some((sql, args, bound)) = selection_sql(sel) else {
        return Ok(Page { rows, total: 0 });
    };
    let count: i64 = conn.query_row(
        &format!("SELECT count(*) FROM ({sql})"),
        rusqlite::params_from_iter(args),
        |r| r.get(0),
    )?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    Ok(Page {
        total: bound.map_or(count, |b| b.min(count)).max(rows.len()),
        rows,
    })
}

/// The words and attention maps of a caption, as a picture of them needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionRecord {
    /// Every token as a word, `<start>` first.
    pub tokens: Vec<String>,
    /// One map per token after `<start>`.
    pub alphas: Vec<Vec<f32>>,
    pub grid: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AttentionError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("caption {0}: {1}")]
    Bad(i64, String),
}

/// The stored attention of a caption; `None` when the caption has none.
pub fn attention_of(
    conn: &Connection,
    caption_id: i64,
) -> Result<Option<AttentionRecord>, AttentionError> {
    let found: Option<(String, i64, i64, String, Vec<u8>)> = conn
        .query_row(
            "SELECT c.tokens, a.grid, a.steps, a.encoding, a.weights
             FROM captions c JOIN attention a ON a.caption_id = c.id WHERE c.id = ?1",
            [caption_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((tokens, grid, steps, encoding, blob)) = found else {
        return Ok(None);
    };
    attention_record(&tokens, grid, steps, &encoding, &blob)
        .map(Some)
        .map_err(|reason| AttentionError::Bad(caption_id, reason))
}

/// A caption's stored attention as read from any backend: its tokens (JSON), grid, steps,
/// encoding and blob; the error says what is wrong with them.
pub(crate) fn attention_record(
    tokens: &str,
    grid: i64,
    steps: i64,
    encoding: &str,
    blob: &[u8],
) -> Result<AttentionRecord, String> {
    if encoding != attention::ENCODING {
        return Err(format!(
            "attention encoding {encoding:?} is not one this gaze reads ({})",
            attention::ENCODING
        ));
    }
    let tokens: Vec<String> = serde_json::from_str(tokens).map_err(|e| format!("tokens: {e}"))?;
    let (grid, steps) = (
        usize::try_from(grid).map_err(|_| format!("grid {grid}"))?,
        usize::try_from(steps).map_err(|_| format!("steps {steps}"))?,
    );
    let alphas = attention::decode(blob, grid, steps)?;
    Ok(AttentionRecord {
        tokens,
        alphas,
        grid,
    })
}

/// Where the store stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub schema_version: usize,
    pub images: i64,
    /// Images by status (pending, done, failed, gone; absent ones as 0).
    pub by_status: Vec<(ImageStatus, i64)>,
    /// Images waiting to be captioned (pending).
    pub backlog: i64,
    pub captions: i64,
    /// Images done in the last 60 seconds.
    pub done_last_minute: i64,
    pub images_per_second: f64,
    /// Shown as id, name, path, content hash and creation time (UTC, ISO 8601).
    #[serde(serialize_with = "model_summary")]
    pub active_model: Option<ModelRow>,
    pub models: i64,
    /// Entries of watched folders that are not regular files (pipes, devices, sockets), which
    /// are never read.
    pub skipped: i64,
    /// Workers seen lately (a shared PostgreSQL store; none for SQLite).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<super::api::WorkerRow>,
}

impl StatusReport {
    /// As `gaze status --json` and `GET /v1/status` show it: `by_status` as an object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a status report serialises");
        v["by_status"] = self
            .by_status
            .iter()
            .map(|(k, n)| (k.to_string(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v
    }
}

pub fn status(
    conn: &Connection,
    schema_version: usize,
    now: f64,
) -> rusqlite::Result<StatusReport> {
    let mut by_status: Vec<(ImageStatus, i64)> = ImageStatus::ALL.iter().map(|s| (*s, 0)).collect();
    {
        let mut stmt = conn.prepare("SELECT status, count(*) FROM images GROUP BY status")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, ImageStatus>(0)?, r.get::<_, i64>(1)?))
        })?;
        for r in rows {
            let (s, n) = r?;
            if let Some(slot) = by_status.iter_mut().find(|(k, _)| *k == s) {
                slot.1 = n;
            }
        }
    }
    let count = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<i64> {
        conn.query_row(sql, p, |r| r.get(0))
    };
    let images = by_status.iter().map(|(_, n)| n).sum();
    let pending = by_status[0].1;
    let done_last_minute = count(
        "SELECT count(*) FROM images WHERE done_at >= ?1",
        &[&(now - 60.0)],
    )?;
    let active_model = registry::active_model_row(conn)?;
    Ok(StatusReport {
        schema_version,
        images,
        by_status,
        backlog: pending,
        captions: count("SELECT count(*) FROM captions", &[])?,
        done_last_minute,
        images_per_second: done_last_minute as f64 / 60.0,
        active_model,
        models: count("SELECT count(*) FROM models", &[])?,
        // Version 3 databases (readable as they are) have no such table.
        skipped: if table_exists(conn, "skipped_files")? {
            count("SELECT count(*) FROM skipped_files", &[])?
        } else {
            0
        },
        workers: Vec::new(),
    })
}

/// The active model as `gaze status --json` has always shown it.
fn model_summary<S: Serializer>(m: &Option<ModelRow>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Summary<'a> {
        id: i64,
        name: &'a str,
        path: &'a str,
        content_hash: &'a str,
        created_at: String,
    }
    m.as_ref()
        .map(|m| Summary {
            id: m.id,
            name: &m.name,
            path: &m.path,
            content_hash: &m.content_hash,
            created_at: iso_utc(m.created_at),
        })
        .serialize(s)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (what SQLite's
/// `strftime('%Y-%m-%dT%H:%M:%SZ', t, 'unixepoch')` gives).
fn iso_utc(t: f64) -> String {
    let secs = t.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // The civil date of a day count since 1970-01-01, by 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_queries_quote_every_word() {
        assert_eq!(fts_query("  red  dog ").unwrap(), r#""red" "dog""#);
        assert_eq!(fts_query(r#"a"b OR"#).unwrap(), r#""a""b" "OR""#);
        assert_eq!(fts_query("   "), None);
    }

    #[test]
    fn iso_times_match_sqlite() {
        let conn = Connection::open_in_memory().unwrap();
        for t in [
            0.0,
            59.9,
            951_782_400.5, // 2000-02-29
            1_709_164_800.0,
            1_764_633_600.25,
            4_107_542_399.0, // 2100-02-28 23:59:59
            -86_401.0,
        ] {
            let sqlite: String = conn
                .query_row(
                    "SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ?1, 'unixepoch')",
                    [t],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(iso_utc(t), sqlite, "{t}");
        }
    }

    #[test]
    fn the_status_report_shows_the_active_model_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("g.db")).unwrap();
        let c = store.conn();
        c.execute_batch(
            "INSERT INTO models (content_hash, path, name, config, created_at, active)
                 VALUES ('mh', '/m.safetensors', 'm', '{}', 86400.7, 1)",
        )
        .unwrap();
        let report = status(c, 5, 0.0).unwrap();
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(
            v["active_model"],
            serde_json::json!({
                "id": 1,
                "name": "m",
                "path": "/m.safetensors",
                "content_hash": "mh",
                "created_at": "1970-01-02T00:00:00Z"
            })
        );
        assert_eq!(v["by_status"][0], serde_json::json!(["pending", 0]));
    }
}
