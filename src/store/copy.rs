//! Copying a whole store into another: SQLite to PostgreSQL when a library outgrows one machine,
//! PostgreSQL to SQLite to take it back (and either to its own kind, as a backup).
//!
//! Every table and every column travels with its ids, so captions keep their numbers and every
//! reference stays valid. Columns only PostgreSQL has (the leases of `images`, `retrain_runs.host`)
//! take their defaults going there and are left behind coming back; the `workers` table is
//! copied only between two PostgreSQL stores. SQLite's 0/1 become booleans and back.
//!
//! The source is read in one snapshot (a read transaction), so a daemon may keep writing to it.
//! A SQLite source is opened read-only when it is at the current schema version; an older one
//! is first upgraded in place by [`Store::open`] (the additive upgrade `gaze watch` would make),
//! since the copy reads every table of the current schema. The target is opened with `open`,
//! which creates its schema, and everything written to it is one transaction: a copy that fails
//! anywhere, the final count check included, leaves the target as it was.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use rusqlite::types::ValueRef;
use rusqlite::TransactionBehavior;

use super::postgres::PgStore;
use super::{Location, Store, StoreError};

/// How to copy.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Empty a target that holds anything first (in the copy's transaction) instead of refusing.
    pub replace: bool,
}

/// What a copy moved: rows per table, in the order copied, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
    pub seconds: f64,
}

impl CopyReport {
    /// Rows copied in all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }

    /// Rows copied per second of the whole copy (opening and checking included).
    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows() as f64 / self.seconds
        } else {
            0.0
        }
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.tables.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        for (table, rows) in &self.tables {
            writeln!(f, "{table:<width$}  {rows:>10}")?;
        }
        write!(
            f,
            "{} rows in {:.2} s ({:.0} rows/s)",
            self.rows(),
            self.seconds,
            self.rows_per_second()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}: a store cannot be copied into itself")]
    SameStore(String),
    #[error(
        "{target}: not empty ({}); copy into an empty store, or replace what it holds \
         (`gaze store copy --replace`)",
        counts_in_words(counts)
    )]
    TargetNotEmpty {
        target: String,
        counts: Vec<(String, u64)>,
    },
    #[error("{location}: {table}.{column} of the row {key}: {reason}")]
    BadValue {
        location: String,
        table: &'static str,
        column: &'static str,
        key: String,
        reason: String,
    },
    #[error(
        "the copy does not add up, so nothing was written to {target}: {}",
        mismatches_in_words(mismatches)
    )]
    CountMismatch {
        target: String,
        mismatches: Vec<CountMismatch>,
    },
}

/// A table whose rows differ in number between the source and the target after copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMismatch {
    pub table: String,
    pub source: u64,
    pub copied: u64,
    pub target: u64,
}

fn counts_in_words(counts: &[(String, u64)]) -> String {
    counts
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mismatches_in_words(mismatches: &[CountMismatch]) -> String {
    mismatches
        .iter()
        .map(|m| {
            format!(
                "{}: {} in the source, {} copied, {} in the target",
                m.table, m.source, m.copied, m.target
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A column's type, as both backends store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Real,
    Text,
    Blob,
    /// INTEGER 0/1 in SQLite, BOOLEAN in PostgreSQL.
    Bool,
}

#[derive(Debug)]
struct Column {
    name: &'static str,
    kind: Kind,
    /// Only the PostgreSQL schema has it.
    pg_only: bool,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        pg_only: false,
    }
}

const fn pg_col(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        pg_only: true,
    }
}

#[derive(Debug)]
struct Table {
    name: &'static str,
    /// The first column is the key rows are read in order of.
    columns: &'static [Column],
    /// Its key is an identity in PostgreSQL, whose sequence must pass the copied ids.
    identity: bool,
    /// Only the PostgreSQL schema has it.
    pg_only: bool,
    /// A column referencing this same table: written in a second pass, once every row it may
    /// point at is in.
    self_reference: Option<&'static str>,
}

use Kind::{Blob, Bool, Int, Real, Text};

/// Every table, each after the tables it references.
const TABLES: &[Table] = &[
    Table {
        name: "models",
        columns: &[
            col("id", Int),
            col("content_hash", Text),
            col("path", Text),
            col("name", Text),
            col("config", Text),
            col("provenance", Text),
            col("created_at", Real),
            col("active", Bool),
            col("kind", Text),
            col("status", Text),
            col("parent_id", Int),
            col("metrics", Text),
            col("activated_at", Real),
        ],
        identity: true,
        pg_only: false,
        self_reference: Some("parent_id"),
    },
    Table {
        name: "model_activations",
        columns: &[
            col("id", Int),
            col("model_id", Int),
            col("previous_id", Int),
            col("at", Real),
            col("reason", Text),
        ],
        identity: true,
        pg_only: false,
        self_reference: None,
    },
    Table {
        name: "retrain_runs",
        columns: &[
            col("id", Int),
            col("started_at", Real),
            col("finished_at", Real),
            col("status", Text),
            col("trigger", Text),
            col("pid", Int),
            pg_col("host", Text),
            col("parent_model_id", Int),
            col("candidate_model_id", Int),
            col("rule", Text),
            col("parent_metrics", Text),
            col("candidate_metrics", Text),
            col("fingerprint", Text),
            col("log_path", Text),
            col("log", Text),
            col("error", Text),
        ],
        identity: true,
        pg_only: false,
        self_reference: None,
    },
    Table {
        name: "images",
        columns: &[
            col("id", Int),
            col("path", Text),
            col("content_hash", Text),
            col("size", Int),
            col("mtime_ns", Int),
            col("width", Int),
            col("height", Int),
            col("status", Text),
            col("error", Text),
            col("attempts", Int),
            col("first_seen", Real),
            col("updated_at", Real),
            col("done_at", Real),
            pg_col("lease_owner", Text),
            pg_col("lease_until", Real),
            pg_col("lease_token", Int),
        ],
        identity: true,
        pg_only: false,
        self_reference: None,
    },
    Table {
        name: "captions",
        columns: &[
            col("id", Int),
            col("content_hash", Text),
            col("model_id", Int),
            col("text", Text),
            col("tokens", Text),
            col("token_ids", Text),
            col("score", Real),
            col("finished", Bool),
            col("beam_size", Int),
            col("created_at", Real),
        ],
        identity: true,
        pg_only: false,
        self_reference: None,
    },
    Table {
        name: "attention",
        columns: &[
            col("caption_id", Int),
            col("grid", Int),
            col("steps", Int),
            col("encoding", Text),
            col("weights", Blob),
        ],
        identity: false,
        pg_only: false,
        self_reference: None,
    },
    Table {
        name: "skipped_files",
        columns: &[col("path", Text), col("kind", Text), col("seen_at", Real)],
        identity: false,
        pg_only: false,
        self_reference: None,
    },
    Table {
        name: "workers",
        columns: &[
            col("id", Text),
            col("host", Text),
            col("pid", Int),
            col("model_id", Int),
            col("started_at", Real),
            col("seen_at", Real),
            col("images_done", Int),
            col("images_per_second", Real),
            col("error", Text),
        ],
        identity: false,
        pg_only: true,
        self_reference: None,
    },
];

/// The tables whose rows make a store non-empty.
const CONTENT_TABLES: &[&str] = &[
    "models",
    "images",
    "captions",
    "retrain_runs",
    "model_activations",
    "skipped_files",
];

/// One value of a row, typed by its column (a NULL keeps its column's type, as PostgreSQL's
/// binary COPY needs).
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
    Bool(Option<bool>),
}

impl Value {
    fn null(kind: Kind) -> Value {
        match kind {
            Int => Value::Int(None),
            Real => Value::Real(None),
            Text => Value::Text(None),
            Blob => Value::Blob(None),
            Bool => Value::Bool(None),
        }
    }

    fn as_pg(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Int(v) => v,
            Value::Real(v) => v,
            Value::Text(v) => v,
            Value::Blob(v) => v,
            Value::Bool(v) => v,
        }
    }

    /// The row's key as a message shows it.
    fn describe(&self) -> String {
        match self {
            Value::Int(Some(v)) => v.to_string(),
            Value::Text(Some(v)) => format!("{v:?}"),
            _ => "(no key)".to_string(),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Value::Int(v) => rusqlite::ToSql::to_sql(v),
            Value::Real(v) => rusqlite::ToSql::to_sql(v),
            Value::Text(v) => rusqlite::ToSql::to_sql(v),
            Value::Blob(v) => rusqlite::ToSql::to_sql(v),
            // SQLite stores booleans as 0 and 1, which its CHECKs expect.
            Value::Bool(v) => rusqlite::ToSql::to_sql(v),
        }
    }
}

fn pg_type(kind: Kind) -> Type {
    match kind {
        Int => Type::INT8,
        Real => Type::FLOAT8,
        Text => Type::TEXT,
        Blob => Type::BYTEA,
        Bool => Type::BOOL,
    }
}

/// A SQLite value as its column's type. SQLite's columns take any value, so anything that is
/// not what the schema means is refused rather than guessed at.
fn from_sqlite(v: ValueRef<'_>, kind: Kind) -> Result<Value, String> {
    let found = |v: ValueRef<'_>| format!("{:?} where {kind:?} belongs", v.data_type());
    Ok(match (kind, v) {
        (_, ValueRef::Null) => Value::null(kind),
        (Int, ValueRef::Integer(i)) => Value::Int(Some(i)),
        (Real, ValueRef::Real(f)) => Value::Real(Some(f)),
        (Real, ValueRef::Integer(i)) => Value::Real(Some(i as f64)),
        (Bool, ValueRef::Integer(i @ (0 | 1))) => Value::Bool(Some(i == 1)),
        (Bool, ValueRef::Integer(i)) => return Err(format!("{i} is not a boolean (0 or 1)")),
        (Text, ValueRef::Text(t)) => Value::Text(Some(
            String::from_utf8(t.to_vec()).map_err(|_| "text that is not UTF-8".to_string())?,
        )),
        (Blob, ValueRef::Blob(b)) => Value::Blob(Some(b.to_vec())),
        (_, v) => return Err(found(v)),
    })
}

fn from_pg(row: &postgres::Row, i: usize, kind: Kind) -> Result<Value, postgres::Error> {
    Ok(match kind {
        Int => Value::Int(row.try_get(i)?),
        Real => Value::Real(row.try_get(i)?),
        Text => Value::Text(row.try_get(i)?),
        Blob => Value::Blob(row.try_get(i)?),
        Bool => Value::Bool(row.try_get(i)?),
    })
}

/// An identifier quoted for both dialects (several column names are keywords: `trigger`, `at`).
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

fn column_list(cols: &[&Column]) -> String {
    cols.iter()
        .map(|c| quoted(c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A store opened for the copy.
enum Opened {
    Sqlite(Box<Store>),
    Postgres(Box<PgStore>),
}

impl Opened {
    fn is_postgres(&self) -> bool {
        matches!(self, Opened::Postgres(_))
    }

    /// A snapshot to read from.
    fn begin_read(&mut self) -> Result<Side<'_>, CopyError> {
        match self {
            Opened::Sqlite(store) => {
                let path = store.path().to_path_buf();
                let tx = store
                    .conn_mut()
                    .transaction_with_behavior(TransactionBehavior::Deferred)
                    .map_err(|e| StoreError::sqlite(&path, "beginning a read transaction", e))?;
                Ok(Side::Sqlite { tx, path })
            }
            Opened::Postgres(store) => {
                let location = store.location().to_string();
                let mut client = store.client();
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .map_err(|e| pg_error(&location, "beginning a read transaction", e))?;
                Ok(Side::Postgres(PgSide {
                    client,
                    location,
                    open: true,
                }))
            }
        }
    }

    /// The one transaction the whole copy is written in.
    fn begin_write(&mut self) -> Result<Side<'_>, CopyError> {
        match self {
            Opened::Sqlite(store) => {
                let path = store.path().to_path_buf();
                // Immediate: take the write lock now rather than fail halfway on a busy file.
                let tx = store
                    .conn_mut()
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| StoreError::sqlite(&path, "beginning a transaction", e))?;
                Ok(Side::Sqlite { tx, path })
            }
            Opened::Postgres(store) => {
                let location = store.location().to_string();
                let mut client = store.client();
                client
                    .batch_execute("BEGIN")
                    .map_err(|e| pg_error(&location, "beginning a transaction", e))?;
                Ok(Side::Postgres(PgSide {
                    client,
                    location,
                    open: true,
                }))
            }
        }
    }
}

fn pg_error(location: &str, action: &str, e: postgres::Error) -> CopyError {
    CopyError::Store(StoreError::Postgres {
        location: location.to_string(),
        action: action.to_string(),
        source: Box::new(e),
    })
}

fn sqlite_error(path: &Path, action: &str, e: rusqlite::Error) -> CopyError {
    CopyError::Store(StoreError::sqlite(path, action, e))
}

/// An open transaction on one side of the copy. Dropped uncommitted, it rolls back.
enum Side<'s> {
    /// rusqlite's transaction rolls itself back when dropped.
    Sqlite {
        tx: rusqlite::Transaction<'s>,
        path: std::path::PathBuf,
    },
    Postgres(PgSide<'s>),
}

/// A PostgreSQL connection inside a plain `BEGIN`, which [`Drop`] rolls back while `open`.
struct PgSide<'s> {
    client: std::cell::RefMut<'s, postgres::Client>,
    location: String,
    open: bool,
}

impl Drop for PgSide<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

/// Where one table's rows are written.
enum Sink<'a> {
    Sqlite {
        stmt: rusqlite::Statement<'a>,
        path: &'a Path,
    },
    Postgres {
        writer: BinaryCopyInWriter<'a>,
        location: &'a str,
    },
}

impl Sink<'_> {
    fn write(&mut self, row: &[Value]) -> Result<(), CopyError> {
        match self {
            Sink::Sqlite { stmt, path } => stmt
                .execute(rusqlite::params_from_iter(row.iter()))
                .map(|_| ())
                .map_err(|e| sqlite_error(path, "writing a row", e)),
            Sink::Postgres { writer, location } => {
                let values: Vec<&(dyn ToSql + Sync)> = row.iter().map(Value::as_pg).collect();
                writer
                    .write(&values)
                    .map_err(|e| pg_error(location, "writing a row", e))
            }
        }
    }

    fn finish(self) -> Result<(), CopyError> {
        match self {
            Sink::Sqlite { .. } => Ok(()),
            Sink::Postgres { writer, location } => writer
                .finish()
                .map(|_| ())
                .map_err(|e| pg_error(location, "writing rows", e)),
        }
    }
}

impl Side<'_> {
    fn location(&self) -> String {
        match self {
            Side::Sqlite { path, .. } => path.display().to_string(),
            Side::Postgres(pg) => pg.location.clone(),
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Side::Postgres(_))
    }

    /// Whether this side's schema has a table or column that may be PostgreSQL's alone.
    fn has(&self, pg_only: bool) -> bool {
        !pg_only || self.is_postgres()
    }

    fn count(&mut self, table: &str) -> Result<u64, CopyError> {
        let sql = format!("SELECT count(*) FROM {}", quoted(table));
        let action = format!("counting the rows of {table}");
        let n: i64 = match self {
            Side::Sqlite { tx, path } => tx
                .query_row(&sql, [], |r| r.get(0))
                .map_err(|e| sqlite_error(path, &action, e))?,
            Side::Postgres(PgSide {
                client, location, ..
            }) => client
                .query_one(&sql, &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| pg_error(location, &action, e))?,
        };
        Ok(n.max(0) as u64)
    }

    fn execute(&mut self, sql: &str, action: &str) -> Result<(), CopyError> {
        match self {
            Side::Sqlite { tx, path } => tx
                .execute_batch(sql)
                .map_err(|e| sqlite_error(path, action, e)),
            Side::Postgres(PgSide {
                client, location, ..
            }) => client
                .batch_execute(sql)
                .map_err(|e| pg_error(location, action, e)),
        }
    }

    /// Calls `f` with every row of `table` (these columns), in key order; returns how many.
    fn read(
        &mut self,
        table: &Table,
        cols: &[&Column],
        f: &mut dyn FnMut(Vec<Value>) -> Result<(), CopyError>,
    ) -> Result<u64, CopyError> {
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            column_list(cols),
            quoted(table.name),
            quoted(table.columns[0].name)
        );
        let action = format!("reading {}", table.name);
        let location = self.location();
        let mut n = 0u64;
        match self {
            Side::Sqlite { tx, path } => {
                let mut stmt = tx
                    .prepare(&sql)
                    .map_err(|e| sqlite_error(path, &action, e))?;
                let mut rows = stmt.query([]).map_err(|e| sqlite_error(path, &action, e))?;
                while let Some(r) = rows.next().map_err(|e| sqlite_error(path, &action, e))? {
                    let mut values = Vec::with_capacity(cols.len());
                    for (i, c) in cols.iter().enumerate() {
                        let v = r.get_ref(i).map_err(|e| sqlite_error(path, &action, e))?;
                        let v = from_sqlite(v, c.kind).map_err(|reason| CopyError::BadValue {
                            location: location.clone(),
                            table: table.name,
                            column: c.name,
                            key: values
                                .first()
                                .map_or_else(|| "(no key)".to_string(), Value::describe),
                            reason,
                        })?;
                        values.push(v);
                    }
                    f(values)?;
                    n += 1;
                }
            }
            Side::Postgres(PgSide {
                client, location, ..
            }) => {
                let mut rows = client
                    .query_raw(&sql, std::iter::empty::<i64>())
                    .map_err(|e| pg_error(location, &action, e))?;
                while let Some(r) = rows.next().map_err(|e| pg_error(location, &action, e))? {
                    let values = cols
                        .iter()
                        .enumerate()
                        .map(|(i, c)| from_pg(&r, i, c.kind))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| pg_error(location, &action, e))?;
                    f(values)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// A writer of rows of `table` (these columns).
    fn sink(&mut self, table: &Table, cols: &[&Column]) -> Result<Sink<'_>, CopyError> {
        let action = format!("writing {}", table.name);
        match self {
            Side::Sqlite { tx, path } => {
                let placeholders = (1..=cols.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES ({placeholders})",
                    quoted(table.name),
                    column_list(cols)
                );
                let stmt = tx
                    .prepare(&sql)
                    .map_err(|e| sqlite_error(path, &action, e))?;
                Ok(Sink::Sqlite { stmt, path })
            }
            Side::Postgres(PgSide {
                client, location, ..
            }) => {
                let sql = format!(
                    "COPY {} ({}) FROM STDIN (FORMAT binary)",
                    quoted(table.name),
                    column_list(cols)
                );
                let types: Vec<Type> = cols.iter().map(|c| pg_type(c.kind)).collect();
                let writer = client
                    .copy_in(&sql)
                    .map_err(|e| pg_error(location, &action, e))?;
                Ok(Sink::Postgres {
                    writer: BinaryCopyInWriter::new(writer, &types),
                    location,
                })
            }
        }
    }

    /// Sets `column` of the rows of `table` keyed by the first value of each pair.
    fn update_column(
        &mut self,
        table: &Table,
        column: &str,
        values: &[(Value, Value)],
    ) -> Result<(), CopyError> {
        let key = quoted(table.columns[0].name);
        let (table_name, column) = (quoted(table.name), quoted(column));
        let action = format!("writing {}.{column}", table.name);
        match self {
            Side::Sqlite { tx, path } => {
                let mut stmt = tx
                    .prepare(&format!(
                        "UPDATE {table_name} SET {column} = ?2 WHERE {key} = ?1"
                    ))
                    .map_err(|e| sqlite_error(path, &action, e))?;
                for (k, v) in values {
                    stmt.execute(rusqlite::params![k, v])
                        .map_err(|e| sqlite_error(path, &action, e))?;
                }
            }
            Side::Postgres(PgSide {
                client, location, ..
            }) => {
                let stmt = client
                    .prepare(&format!(
                        "UPDATE {table_name} SET {column} = $2 WHERE {key} = $1"
                    ))
                    .map_err(|e| pg_error(location, &action, e))?;
                for (k, v) in values {
                    client
                        .execute(&stmt, &[k.as_pg(), v.as_pg()])
                        .map_err(|e| pg_error(location, &action, e))?;
                }
            }
        }
        Ok(())
    }

    fn commit(self) -> Result<(), CopyError> {
        match self {
            Side::Sqlite { tx, path } => tx
                .commit()
                .map_err(|e| sqlite_error(&path, "committing", e)),
            Side::Postgres(mut pg) => {
                // Committed or not, the transaction is over: nothing is left to roll back.
                pg.open = false;
                let PgSide {
                    client, location, ..
                } = &mut pg;
                client
                    .batch_execute("COMMIT")
                    .map_err(|e| pg_error(location, "committing", e))
            }
        }
    }
}

/// Whether two locations are one store (the same file, however named; the same URL).
fn same_store(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (Location::Sqlite(a), Location::Sqlite(b)) => match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        },
        (Location::Postgres(a), Location::Postgres(b)) => a == b,
        _ => false,
    }
}

fn open_source(location: &Location) -> Result<Opened, CopyError> {
    Ok(match location {
        Location::Sqlite(path) => {
            let current = match Store::open_read_only(path) {
                Ok(store) if store.schema_version()? >= super::supported_version() => Some(store),
                // Readable but without the newest tables, or too old to read: upgrade it.
                Ok(_) | Err(StoreError::NeedsUpgrade { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let store = match current {
                Some(store) => store,
                None => {
                    tracing::info!(db = %path.display(), "upgrading the source's schema before copying");
                    Store::open(path)?
                }
            };
            Opened::Sqlite(Box::new(store))
        }
        Location::Postgres(url) => Opened::Postgres(Box::new(PgStore::open_read_only(url)?)),
    })
}

fn open_target(location: &Location) -> Result<Opened, CopyError> {
    Ok(match location {
        Location::Sqlite(path) => Opened::Sqlite(Box::new(Store::open(path)?)),
        Location::Postgres(url) => Opened::Postgres(Box::new(PgStore::open(url)?)),
    })
}

/// Copies every row of the store at `from` into the store at `to` (created if need be), in one
/// transaction on `to`. See the module's documentation.
pub fn copy(from: &Location, to: &Location, opts: &CopyOptions) -> Result<CopyReport, CopyError> {
    if same_store(from, to) {
        return Err(CopyError::SameStore(from.to_string()));
    }
    let started = Instant::now();
    // A SQLite target this copy creates goes again if the copy fails, so that a failure leaves
    // nothing behind.
    let created = to
        .sqlite_path()
        .filter(|p| !p.exists())
        .map(Path::to_path_buf);
    let result = copy_opened(from, to, opts, started);
    if let (Err(_), Some(path)) = (&result, created) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
    result
}

fn copy_opened(
    from: &Location,
    to: &Location,
    opts: &CopyOptions,
    started: Instant,
) -> Result<CopyReport, CopyError> {
    let mut source_store = open_source(from)?;
    let mut target_store = open_target(to)?;
    let both_postgres = source_store.is_postgres() && target_store.is_postgres();
    let mut source = source_store.begin_read()?;
    let mut target = target_store.begin_write()?;
    let target_name = target.location();

    let mut held = Vec::new();
    for table in CONTENT_TABLES {
        let n = target.count(table)?;
        if n > 0 {
            held.push((table.to_string(), n));
        }
    }
    if !held.is_empty() {
        if !opts.replace {
            return Err(CopyError::TargetNotEmpty {
                target: target_name,
                counts: held,
            });
        }
        // Referencing tables first; `workers` too, whose rows may reference models.
        let present: Vec<&Table> = TABLES
            .iter()
            .rev()
            .filter(|t| target.has(t.pg_only))
            .collect();
        for table in present {
            target.execute(
                &format!("DELETE FROM {}", quoted(table.name)),
                &format!("emptying {}", table.name),
            )?;
        }
        tracing::info!(target = %target_name, "emptied the target");
    }

    let mut copied = Vec::new();
    for table in TABLES {
        if table.pg_only && !both_postgres {
            continue;
        }
        let table_started = Instant::now();
        let n = copy_table(&mut source, &mut target, table)?;
        let seconds = table_started.elapsed().as_secs_f64();
        tracing::info!(
            table = table.name,
            rows = n,
            seconds = format!("{seconds:.2}"),
            rows_per_second = format!("{:.0}", n as f64 / seconds.max(1e-9)),
            "copied"
        );
        copied.push((table.name.to_string(), n));
    }

    if target.is_postgres() {
        // Later inserts take ids after the copied ones.
        for table in TABLES.iter().filter(|t| t.identity) {
            let (name, key) = (table.name, table.columns[0].name);
            target.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{name}', '{key}'), \
                     coalesce(max({key}), 1), max({key}) IS NOT NULL) FROM {name}"
                ),
                &format!("moving the identity of {name} past the copied ids"),
            )?;
        }
    }

    let mut mismatches = Vec::new();
    for (table, n) in &copied {
        let (in_source, in_target) = (source.count(table)?, target.count(table)?);
        if in_source != *n || in_target != *n {
            mismatches.push(CountMismatch {
                table: table.clone(),
                source: in_source,
                copied: *n,
                target: in_target,
            });
        }
    }
    if !mismatches.is_empty() {
        return Err(CopyError::CountMismatch {
            target: target_name,
            mismatches,
        });
    }
    target.commit()?;
    drop(source);
    Ok(CopyReport {
        tables: copied,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Copies one table's rows; returns how many.
fn copy_table(source: &mut Side, target: &mut Side, table: &Table) -> Result<u64, CopyError> {
    let both = source.is_postgres() && target.is_postgres();
    let cols: Vec<&Column> = table
        .columns
        .iter()
        .filter(|c| !c.pg_only || both)
        .collect();
    let deferred = table
        .self_reference
        .and_then(|name| cols.iter().position(|c| c.name == name));
    let written: Vec<&Column> = cols
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != deferred)
        .map(|(_, c)| *c)
        .collect();
    let mut later = Vec::new();
    let n = {
        let mut sink = target.sink(table, &written)?;
        let n = source.read(table, &cols, &mut |mut row| {
            if let Some(i) = deferred {
                let value = row.remove(i);
                if value != Value::null(cols[i].kind) {
                    later.push((row[0].clone(), value));
                }
            }
            sink.write(&row)
        })?;
        sink.finish()?;
        n
    };
    if let (Some(i), false) = (deferred, later.is_empty()) {
        target.update_column(table, cols[i].name, &later)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_lists_its_key_first_and_references_come_first() {
        let names: Vec<_> = TABLES.iter().map(|t| t.name).collect();
        let before = |a: &str, b: &str| {
            names.iter().position(|n| *n == a) < names.iter().position(|n| *n == b)
        };
        assert!(before("models", "captions") && before("captions", "attention"));
        assert!(before("models", "model_activations") && before("models", "retrain_runs"));
        assert!(before("models", "workers"));
        for t in CONTENT_TABLES {
            assert!(names.contains(t), "{t}");
        }
        for t in TABLES.iter().filter(|t| t.identity) {
            assert_eq!(t.columns[0].name, "id", "{}", t.name);
        }
    }

    #[test]
    fn sqlite_values_are_taken_only_as_their_column_means() {
        assert_eq!(
            from_sqlite(ValueRef::Integer(1), Bool).unwrap(),
            Value::Bool(Some(true))
        );
        assert_eq!(
            from_sqlite(ValueRef::Integer(3), Real).unwrap(),
            Value::Real(Some(3.0))
        );
        assert_eq!(
            from_sqlite(ValueRef::Null, Blob).unwrap(),
            Value::Blob(None)
        );
        assert!(from_sqlite(ValueRef::Integer(2), Bool).is_err());
        assert!(from_sqlite(ValueRef::Text(b"x"), Int).is_err());
        assert!(from_sqlite(ValueRef::Text(&[0xff]), Text).is_err());
    }

    #[test]
    fn reports_print_counts_and_rate() {
        let report = CopyReport {
            tables: vec![("models".into(), 2), ("captions".into(), 8)],
            seconds: 2.0,
        };
        let text = report.to_string();
        assert!(
            text.contains("models") && text.contains("10 rows"),
            "{text}"
        );
        assert!(text.contains("5 rows/s"), "{text}");
    }
}
