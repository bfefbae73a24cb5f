//! The queue: the `images` table (one row per file seen in a watched folder, with where it
//! stands) and `skipped_files` (entries that are not regular files).
//!
//! Functions take a `&Connection` so they run inside a caller's transaction (a
//! `rusqlite::Transaction` derefs to one). They do not commit.

use rusqlite::{params, Connection, OptionalExtension};

text_enum! {
    /// Where an image stands in the queue (`images.status`).
    ImageStatus {
        Pending = "pending",
        Done = "done",
        Failed = "failed",
        Gone = "gone",
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
            Ok(ImageState {
                size: r.get(0)?,
                mtime_ns: r.get(1)?,
                status: r.get(2)?,
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
    let (prefix, escaped_prefix) = super::path_key::folder_prefixes(path);
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

/// Paths of images waiting to be captioned, oldest change first: what a daemon takes up after
/// a model swap (or at start) without walking the folders again.
pub fn pending_paths(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT path FROM images WHERE status = 'pending' ORDER BY updated_at, id")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// A pending image as recorded: its path key and the size and modification time it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingImage {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
}

/// The pending images, oldest change first: what a model swap leaves to caption.
pub fn pending_images(conn: &Connection) -> rusqlite::Result<Vec<PendingImage>> {
    let mut stmt = conn.prepare(
        "SELECT path, size, mtime_ns FROM images WHERE status = 'pending' ORDER BY updated_at, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(PendingImage {
            path: r.get(0)?,
            size: r.get::<_, i64>(1)?.max(0) as u64,
            mtime_ns: r.get(2)?,
        })
    })?;
    rows.collect()
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

/// Puts back in the queue the done images with no finished caption by any model. Returns
/// how many.
pub fn requeue_missing(conn: &Connection, now: f64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE images SET status = 'pending', updated_at = ?1
         WHERE status = 'done'
           AND NOT EXISTS (SELECT 1 FROM captions c
                           WHERE c.content_hash = images.content_hash AND c.finished = 1)",
        [now],
    )
}
