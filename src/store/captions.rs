//! Captions and their attention: the `captions` table (one caption per content and model, and
//! its full-text index, kept by triggers) and `attention` (the maps, in the [`attention`]
//! encoding).
//!
//! Functions take a `&Connection` and do not commit.

pub mod attention;

use rusqlite::{params, Connection};

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
