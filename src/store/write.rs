//! What the daemon reads and writes: image states, captions, attention, models.
//!
//! Functions take a `&Connection` so they run inside a caller's transaction (a
//! `rusqlite::Transaction` derefs to one). They do not commit.

use rusqlite::{params, Connection, OptionalExtension};

use super::attention;

/// Where an image stands in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    Pending,
    Done,
    Failed,
    Gone,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Pending => "pending",
            ImageStatus::Done => "done",
            ImageStatus::Failed => "failed",
            ImageStatus::Gone => "gone",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ImageStatus::Pending,
            "done" => ImageStatus::Done,
            "failed" => ImageStatus::Failed,
            "gone" => ImageStatus::Gone,
            _ => return None,
        })
    }
}

/// The stored state of one path, as the watcher needs it to decide whether to take a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageState {
    pub size: i64,
    pub mtime_ns: i64,
    pub status: ImageStatus,
    pub attempts: u32,
}

pub fn image_state(conn: &Connection, path: &str) -> rusqlite::Result<Option<ImageState>> {
    conn.prepare_cached("SELECT size, mtime_ns, status, attempts FROM images WHERE path = ?1")?
        .query_row([path], |r| {
            let status: String = r.get(2)?;
            Ok(ImageState {
                size: r.get(0)?,
                mtime_ns: r.get(1)?,
                status: ImageStatus::parse(&status).unwrap_or(ImageStatus::Pending),
                attempts: r.get(3)?,
            })
        })
        .optional()
}

/// Records that a complete file is queued: a new row, or `pending` again. A file whose size or
/// modification time changed starts its attempts afresh.
pub fn mark_pending(
    conn: &Connection,
    path: &str,
    size: i64,
    mtime_ns: i64,
    now: f64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO images (path, size, mtime_ns, status, first_seen, updated_at)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?4)
         ON CONFLICT (path) DO UPDATE SET
             attempts = CASE WHEN size != excluded.size OR mtime_ns != excluded.mtime_ns
                             THEN 0 ELSE attempts END,
             error = CASE WHEN size != excluded.size OR mtime_ns != excluded.mtime_ns
                          THEN NULL ELSE error END,
             size = excluded.size,
             mtime_ns = excluded.mtime_ns,
             status = 'pending',
             updated_at = excluded.updated_at",
    )?
    .execute(params![path, size, mtime_ns, now])?;
    // An entry that was a pipe or device is a regular file now.
    unmark_skipped(conn, path)
}

/// What an image looked like when it was read.
#[derive(Debug, Clone)]
pub struct ReadImage<'a> {
    pub path: &'a str,
    pub size: i64,
    pub mtime_ns: i64,
    pub content_hash: &'a str,
    pub width: u32,
    pub height: u32,
}

/// Marks an image done (its content has a caption by the active model).
pub fn mark_done(conn: &Connection, img: &ReadImage, now: f64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO images (path, content_hash, size, mtime_ns, width, height, status,
                             first_seen, updated_at, done_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'done', ?7, ?7, ?7)
         ON CONFLICT (path) DO UPDATE SET
             content_hash = excluded.content_hash, size = excluded.size,
             mtime_ns = excluded.mtime_ns, width = excluded.width, height = excluded.height,
             status = 'done', error = NULL, updated_at = excluded.updated_at,
             done_at = excluded.done_at",
    )?
    .execute(params![
        img.path,
        img.content_hash,
        img.size,
        img.mtime_ns,
        img.width,
        img.height,
        now
    ])?;
    Ok(())
}

/// Marks an image failed and counts the attempt.
pub fn mark_failed(
    conn: &Connection,
    path: &str,
    size: i64,
    mtime_ns: i64,
    content_hash: Option<&str>,
    error: &str,
    now: f64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO images (path, content_hash, size, mtime_ns, status, error, attempts,
                             first_seen, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'failed', ?5, 1, ?6, ?6)
         ON CONFLICT (path) DO UPDATE SET
             content_hash = coalesce(excluded.content_hash, content_hash),
             size = excluded.size, mtime_ns = excluded.mtime_ns, status = 'failed',
             error = excluded.error, attempts = attempts + 1,
             updated_at = excluded.updated_at",
    )?
    .execute(params![path, content_hash, size, mtime_ns, error, now])?;
    Ok(())
}

/// Marks `path`, and every image under it if it was a folder, gone. Returns how many rows
/// changed.
pub fn mark_gone(conn: &Connection, path: &str, now: f64) -> rusqlite::Result<usize> {
    let prefix = format!("{}/", path.trim_end_matches('/'));
    // Files under the folder whose names are not UTF-8 are stored escaped (store::path_key).
    let escaped_prefix = match path.strip_prefix(super::path_key::BYTES_PREFIX) {
        Some(_) => prefix.clone(),
        None => format!(
            "{}{}",
            super::path_key::BYTES_PREFIX,
            super::path_key::escape(prefix.as_bytes())
        ),
    };
    conn.prepare_cached(
        "DELETE FROM skipped_files
         WHERE path = ?1 OR substr(path, 1, length(?2)) = ?2 OR substr(path, 1, length(?3)) = ?3",
    )?
    .execute(params![path, prefix, escaped_prefix])?;
    conn.prepare_cached(
        "UPDATE images SET status = 'gone', updated_at = ?3
         WHERE status != 'gone'
           AND (path = ?1 OR substr(path, 1, length(?2)) = ?2
                OR substr(path, 1, length(?4)) = ?4)",
    )?
    .execute(params![path, prefix, now, escaped_prefix])
}

/// Whether `content_hash` already has a caption by `model_id`.
pub fn caption_exists(
    conn: &Connection,
    content_hash: &str,
    model_id: i64,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM captions WHERE content_hash = ?1 AND model_id = ?2)",
    )?
    .query_row(params![content_hash, model_id], |r| r.get(0))
}

/// A caption to store.
#[derive(Debug, Clone)]
pub struct NewCaption<'a> {
    pub content_hash: &'a str,
    pub model_id: i64,
    pub text: &'a str,
    /// Every token as a word, `<start>` first.
    pub tokens: &'a [String],
    pub token_ids: &'a [u32],
    pub score: f32,
    pub finished: bool,
    pub beam_size: usize,
    /// One map per token after `<start>`.
    pub alphas: &'a [Vec<f32>],
    pub grid: usize,
}

/// Stores a caption and its attention; `None` when (content, model) already has one.
pub fn insert_caption(
    conn: &Connection,
    c: &NewCaption,
    now: f64,
) -> rusqlite::Result<Option<i64>> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO captions (content_hash, model_id, text, tokens, token_ids, score,
                                   finished, beam_size, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (content_hash, model_id) DO NOTHING",
        )?
        .execute(params![
            c.content_hash,
            c.model_id,
            c.text,
            serde_json::to_string(c.tokens).expect("strings serialise"),
            serde_json::to_string(c.token_ids).expect("integers serialise"),
            c.score as f64,
            c.finished,
            c.beam_size as i64,
            now
        ])?;
    if inserted == 0 {
        return Ok(None);
    }
    let id = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO attention (caption_id, grid, steps, encoding, weights)
             VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id,
        c.grid as i64,
        c.alphas.len() as i64,
        attention::ENCODING,
        attention::encode(c.alphas, c.grid)
    ])?;
    Ok(Some(id))
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

/// Registers a model (once per content hash) and returns its id.
pub fn register_model(conn: &Connection, m: &NewModel, now: f64) -> rusqlite::Result<i64> {
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
    conn.query_row(
        "SELECT id FROM models WHERE content_hash = ?1",
        [m.content_hash],
        |r| r.get(0),
    )
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

/// Makes `model_id` the one active model.
pub fn activate_model(conn: &Connection, model_id: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE models SET active = 0 WHERE active = 1 AND id != ?1",
        [model_id],
    )?;
    conn.execute("UPDATE models SET active = 1 WHERE id = ?1", [model_id])?;
    Ok(())
}

/// Puts back in the queue every done image whose content has no caption by `model_id` (after
/// the active model changed). Returns how many.
pub fn requeue_for_model(conn: &Connection, model_id: i64, now: f64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE images SET status = 'pending', updated_at = ?2
         WHERE status = 'done'
           AND NOT EXISTS (SELECT 1 FROM captions c
                           WHERE c.content_hash = images.content_hash AND c.model_id = ?1)",
        params![model_id, now],
    )
}

/// Records an entry of a watched folder that is not a regular file (see `skipped_files`).
pub fn mark_skipped(conn: &Connection, path: &str, kind: &str, now: f64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO skipped_files (path, kind, seen_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (path) DO UPDATE SET kind = excluded.kind, seen_at = excluded.seen_at",
    )?
    .execute(params![path, kind, now])?;
    Ok(())
}

/// Forgets a skipped entry.
pub fn unmark_skipped(conn: &Connection, path: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM skipped_files WHERE path = ?1")?
        .execute([path])?;
    Ok(())
}

/// Paths recorded as skipped (for the rescan that finds deleted entries).
pub fn skipped_paths(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT path FROM skipped_files")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// Paths of images not marked gone (for the rescan that finds deleted files).
pub fn live_paths(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT path FROM images WHERE status != 'gone'")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

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
        let id = register_model(&tx, &m, 1.0).unwrap();
        assert_eq!(register_model(&tx, &m, 2.0).unwrap(), id);
        activate_model(&tx, id).unwrap();
        let id2 = register_model(
            &tx,
            &NewModel {
                content_hash: "mh2",
                ..m.clone()
            },
            3.0,
        )
        .unwrap();
        activate_model(&tx, id2).unwrap();
        activate_model(&tx, id).unwrap();

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
}
