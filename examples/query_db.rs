//! Reads captions from the SQLite store `gaze watch` writes, with plain SQL (rusqlite), the
//! way any program can: the newest captions with their model, and a full-text search.
//!
//!     cargo run --release --example query_db -- gaze.db [WORDS...]
//!
//! The store can be read while the daemon runs (WAL mode); this opens it read-only.

use anyhow::{bail, Result};
use rusqlite::{Connection, OpenFlags};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(db) = args.first() else {
        bail!("usage: query_db DATABASE [WORDS...]");
    };
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;

    println!("newest captions:");
    let mut newest = conn.prepare(
        "SELECT i.path, c.text, m.name, c.score
         FROM images i
         JOIN captions c ON c.content_hash = i.content_hash
         JOIN models m ON m.id = c.model_id
         ORDER BY c.created_at DESC, c.id DESC
         LIMIT 10",
    )?;
    let rows = newest.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, f64>(3)?,
        ))
    })?;
    for row in rows {
        let (path, text, model, score) = row?;
        println!("  {path}\n    {text}  [{model}, score {score:.2}]");
    }

    let words = args[1..].join(" ");
    if !words.is_empty() {
        println!("\ncaptions matching {words:?} (FTS5, Porter stemming):");
        let mut search = conn.prepare(
            "SELECT i.path, c.text
             FROM captions_fts f
             JOIN captions c ON c.id = f.rowid
             JOIN images i ON i.content_hash = c.content_hash
             WHERE captions_fts MATCH ?1
             ORDER BY c.id",
        )?;
        // Each word quoted, so user input is never read as FTS5 syntax.
        let query: Vec<String> = words
            .split_whitespace()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect();
        let rows = search.query_map([query.join(" ")], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (path, text) = row?;
            println!("  {path}: {text}");
        }
    }
    Ok(())
}
