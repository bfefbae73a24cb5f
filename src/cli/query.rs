//! `gaze query`: captions by path, words (full-text search), recency or image id, and
//! failures; as a table, JSON or CSV; optionally the attention picture redrawn from the stored
//! weights. Opens the database read-only, so it runs beside the daemon. Exit 1 when nothing
//! matches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use gaze::store::api::{Query, ResultRow, Selection};
use gaze::store::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("selection")
        .required(true)
        .args(["path", "search", "recent", "image_id", "failed"])
))]
pub struct QueryArgs {
    /// The store: a SQLite file, or a PostgreSQL URL (postgres://user@host/db).
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "GAZE_DB",
        default_value = "gaze.db"
    )]
    pub db: PathBuf,
    /// The captions of one image file.
    #[arg(long, value_name = "FILE")]
    pub path: Option<PathBuf>,
    /// Captions holding all these words (stemmed: "dogs" finds "dog"), best match first.
    #[arg(long, value_name = "WORDS", num_args = 1..)]
    pub search: Option<Vec<String>>,
    /// The N most recently captioned images: N rows (one per image and caption), whatever
    /// the default --limit; an explicit smaller --limit cuts them, and says so.
    #[arg(long, value_name = "N")]
    pub recent: Option<usize>,
    /// One image by its id.
    #[arg(long, value_name = "ID")]
    pub image_id: Option<i64>,
    /// Images that failed, with the reason.
    #[arg(long)]
    pub failed: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// At most this many rows [default: 100; N for --recent N]. A result cut by the limit
    /// says so: a note on stderr ("showing 100 of 2345 results"), a footer line in the table,
    /// and in JSON an object {"truncated": true, "limit", "total", "rows": [...]} in place of
    /// the plain array of rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Redraw the attention picture from the stored weights: OUT is the PNG file when one
    /// caption matches, otherwise a folder receiving image-<id>-caption-<id>.png per caption.
    #[arg(long, value_name = "OUT")]
    pub attention_png: Option<PathBuf>,
}

impl QueryArgs {
    fn selection(&self) -> Result<Selection> {
        Ok(if let Some(p) = &self.path {
            let abs = match std::fs::canonicalize(p) {
                Ok(c) => c,
                Err(_) if p.is_absolute() => p.clone(),
                Err(_) => std::env::current_dir()?.join(p),
            };
            // Paths that are not UTF-8 are stored escaped; look them up the same way.
            Selection::Path(gaze::store::path_key::path_key(&abs))
        } else if let Some(words) = &self.search {
            let words = words.join(" ");
            if words.trim().is_empty() {
                bail!("--search needs at least one word");
            }
            Selection::Search(words)
        } else if let Some(n) = self.recent {
            if n == 0 {
                bail!("--recent needs a number of at least 1");
            }
            Selection::Recent(n)
        } else if let Some(id) = self.image_id {
            Selection::ImageId(id)
        } else {
            Selection::Failed
        })
    }
}

/// Rows per query when `--limit` is not given (except `--recent N`, which gives N).
const DEFAULT_LIMIT: usize = 100;

pub fn run(args: QueryArgs) -> Result<ExitCode> {
    let selection = args.selection()?;
    let limit = match (args.limit, &selection) {
        (Some(0), _) => bail!("--limit must be at least 1"),
        (Some(n), _) => n,
        (None, Selection::Recent(n)) => *n,
        (None, _) => DEFAULT_LIMIT,
    };
    let location = Location::from_setting(&args.db);
    let store = gaze::store::open_read_only(&location)?;
    let page = store
        .select_page(&selection, limit)
        .with_context(|| format!("querying {location}"))?;
    let rows = &page.rows;
    if rows.is_empty() {
        eprintln!("nothing matched");
        return Ok(ExitCode::from(1));
    }
    // A cut result never passes for the whole one.
    let cut = page.truncated().then(|| {
        format!(
            "showing {} of {} results; use --limit N for more",
            rows.len(),
            page.total
        )
    });
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => {
            print_table(&mut out, rows)?;
            if let Some(note) = &cut {
                writeln!(out, "({note})")?;
            }
        }
        // The plain array when complete (as always); an object saying so when cut, which a
        // reader expecting the array cannot mistake for the whole result.
        Format::Json => {
            let text = if cut.is_some() {
                serde_json::to_string_pretty(&serde_json::json!({
                    "truncated": true,
                    "limit": limit,
                    "total": page.total,
                    "rows": rows,
                }))?
            } else {
                serde_json::to_string_pretty(rows)?
            };
            writeln!(out, "{text}")?;
        }
        Format::Csv => print_csv(&mut out, rows)?,
    }
    out.flush()?;
    drop(out);
    if let Some(note) = &cut {
        eprintln!("note: {note}");
    }
    if let Some(target) = &args.attention_png {
        return draw_attention(&*store, rows, target);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(out: &mut impl Write, rows: &[ResultRow]) -> std::io::Result<()> {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let text = match (&r.caption, &r.error) {
                (Some(c), _) => c.clone(),
                (None, Some(e)) => format!("error (attempt {}): {e}", r.attempts),
                (None, None) => format!("({})", r.status),
            };
            [
                r.image_id.to_string(),
                r.status.to_string(),
                r.score.map(|s| format!("{s:.3}")).unwrap_or_default(),
                r.model.clone().unwrap_or_default(),
                r.path.clone(),
                text,
            ]
        })
        .collect();
    let header = ["IMAGE", "STATUS", "SCORE", "MODEL", "PATH", "CAPTION"];
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, row: [&str; 6]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i == 5 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, header)?;
    for row in &cells {
        line(out, row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn print_csv(out: &mut impl Write, rows: &[ResultRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "image_id,path,status,caption,model,score,beam_size,created_at,content_hash,width,height,attempts,error"
    )?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in rows {
        let fields = [
            r.image_id.to_string(),
            r.path.clone(),
            r.status.to_string(),
            opt(r.caption.clone()),
            opt(r.model.clone()),
            opt(r.score.map(|s| s.to_string())),
            opt(r.beam_size.map(|s| s.to_string())),
            opt(r.created_at.clone()),
            opt(r.content_hash.clone()),
            opt(r.width.map(|s| s.to_string())),
            opt(r.height.map(|s| s.to_string())),
            r.attempts.to_string(),
            opt(r.error.clone()),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// Draws one picture per matched caption from the stored weights, over the image file if it
/// is still there (a grey panel if not, and it says so).
pub(crate) fn draw_attention(
    store: &dyn Query,
    rows: &[ResultRow],
    target: &Path,
) -> Result<ExitCode> {
    let with_caption: Vec<&ResultRow> = rows.iter().filter(|r| r.caption_id.is_some()).collect();
    if with_caption.is_empty() {
        eprintln!("no caption among the matches, so no attention picture to draw");
        return Ok(ExitCode::from(1));
    }
    let single = with_caption.len() == 1;
    if !single {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {}", target.display()))?;
    }
    let mut failures = 0;
    for row in with_caption {
        let caption_id = row.caption_id.expect("filtered");
        let Some(att) = store.attention_of(caption_id)? else {
            eprintln!("{}: caption {caption_id} has no stored attention", row.path);
            failures += 1;
            continue;
        };
        let path = gaze::store::path_key::key_path(&row.path);
        let (picture, notes) = gaze::viz::stored_picture(
            &path,
            row.content_hash.as_deref(),
            &att.tokens,
            &att.alphas,
            att.grid,
        );
        for note in notes {
            eprintln!("note: {}", note.message(&row.path));
        }
        let file = if single {
            target.to_path_buf()
        } else {
            target.join(format!("image-{}-caption-{caption_id}.png", row.image_id))
        };
        match picture.save(&file) {
            Ok(()) => eprintln!("wrote {}", file.display()),
            Err(e) => {
                eprintln!("error: {}: cannot write the picture: {e}", file.display());
                failures += 1;
            }
        }
    }
    Ok(if failures > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
