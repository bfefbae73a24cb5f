//! The SQLite store: the daemon's durable queue and the record of every caption.
//!
//! The schema is the numbered migrations under `migrations/sqlite/` (embedded in the binary; the
//! schema version lives in `PRAGMA user_version`). Opening for writing upgrades an older
//! database and refuses one written by a newer gaze; opening read-only (for `gaze query` and
//! `gaze status`, beside a running daemon) needs the current version exactly.
//!
//! Connections use WAL (readers never block the writer), `synchronous=NORMAL` (a commit
//! survives the process being killed; only a power cut can lose the last commits, and never
//! corrupts), and a busy timeout. An image is done only when the transaction holding its
//! caption has committed, which is what makes a SIGKILL at any moment harmless.
//!
//! Users hold the store through its interface, [`api`] ([`CaptionStore`] and its traits), which
//! [`Store`] implements ([`sqlite`]). The SQL is split by what it stores: [`queue`] (images),
//! [`captions`] (captions and attention), [`registry`] (models and activations), [`runs`]
//! (retraining runs) and [`query`] (reading for people and programs).

/// A status column's values as a Rust enum, stored as the same text as ever: `as_str`,
/// `parse`, `ALL`, `Display` (which pads), `Serialize` and rusqlite's `ToSql`/`FromSql`.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let text = value.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("{text:?} is not a {}", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}

pub mod api;
pub mod captions;
pub mod copy;
pub mod path_key;
pub mod postgres;
pub mod query;
pub mod queue;
pub mod registry;
pub mod runs;
pub mod sqlite;

pub use api::{CaptionStore, StoreTx};
pub use sqlite::SqliteTx;

use std::path::{Path, PathBuf};
use std::time::Duration;

use include_dir::{include_dir, Dir};
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::Migrations;

static MIGRATIONS_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/migrations/sqlite");

/// How long a connection waits for another's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: no such database")]
    Missing { path: PathBuf },
    #[error("{path}: {action}: {source}")]
    Sqlite {
        path: PathBuf,
        action: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path}: the database has schema version {found}, newer than this gaze understands \
         ({supported}); use the newer gaze that wrote it"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        supported: usize,
    },
    #[error(
        "{path}: the database has schema version {found} and this gaze needs {supported}; \
         run `gaze watch` on it once to upgrade it"
    )]
    NeedsUpgrade {
        path: PathBuf,
        found: usize,
        supported: usize,
    },
    #[error(
        "{path}: cannot be read here: its folder is read-only and {wal} holds commits not yet \
         in the database file; read it where it is writable, or let `gaze watch` stop cleanly \
         first (which folds them in)"
    )]
    ReadOnlyWal { path: PathBuf, wal: PathBuf },
    #[error("{path}: not a gaze database (it has tables but no gaze schema version)")]
    NotGaze { path: PathBuf },
    #[error("{path}: migrating the schema: {reason}")]
    Migration { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no model with id {0}")]
    NoSuchModel(i64),
    #[error("model {id} is {status}; only ready or rejected models can be activated")]
    NotActivatable {
        id: i64,
        status: registry::ModelStatus,
    },
    #[error("nothing to roll back to: the active model has no earlier model in the history")]
    NothingToRollBack,
    #[error("no model is active")]
    NoActiveModel,
    #[error("caption {0}: {1}")]
    BadAttention(i64, String),
    #[error("{location}: {action}: {}", postgres_reason(source))]
    Postgres {
        location: String,
        action: String,
        #[source]
        source: Box<::postgres::Error>,
    },
    #[error("{location}: {what}")]
    Unsupported { location: String, what: String },
}

/// A PostgreSQL error in words: the server's message (and detail) where it sent one.
fn postgres_reason(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// Where a store is: a SQLite file, or a PostgreSQL server (a `postgres://` or
/// `postgresql://` URL) that several machines share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    /// A database setting as a location: a URL names a server, anything else a file.
    pub fn from_setting(setting: &Path) -> Location {
        match setting.to_str() {
            Some(s) if postgres::is_url(s) => Location::Postgres(s.to_string()),
            _ => Location::Sqlite(setting.to_path_buf()),
        }
    }

    /// The SQLite file, if the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Location::Sqlite(p) => Some(p),
            Location::Postgres(_) => None,
        }
    }
}

impl std::fmt::Display for Location {
    /// The file, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

/// A store of either kind, as its users hold it.
pub type BoxedStore = Box<dyn CaptionStore + Send>;

/// Opens (creating or upgrading as needed) the store at `location` for reading and writing.
pub fn open(location: &Location) -> Result<BoxedStore> {
    Ok(match location {
        Location::Sqlite(path) => Box::new(Store::open(path)?),
        Location::Postgres(url) => Box::new(postgres::PgStore::open(url)?),
    })
}

/// Opens an existing store for reading; it must be at a schema version this gaze reads.
pub fn open_read_only(location: &Location) -> Result<BoxedStore> {
    Ok(match location {
        Location::Sqlite(path) => Box::new(Store::open_read_only(path)?),
        Location::Postgres(url) => Box::new(postgres::PgStore::open_read_only(url)?),
    })
}

impl StoreError {
    pub(crate) fn sqlite(path: &Path, action: impl Into<String>, source: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            path: path.to_path_buf(),
            action: action.into(),
            source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The embedded migrations, in order.
pub fn migrations() -> Result<Migrations<'static>, rusqlite_migration::Error> {
    Migrations::from_directory(&MIGRATIONS_DIR)
}

/// The schema version this gaze writes (the number of migrations).
pub fn supported_version() -> usize {
    MIGRATIONS_DIR.dirs().count()
}

/// An open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) and upgrades the database at `path` for reading and writing.
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn =
            Connection::open(path).map_err(|e| StoreError::sqlite(path, "opening", e))?;
        configure(&conn, path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| StoreError::sqlite(path, "turning on WAL", e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| StoreError::sqlite(path, "setting synchronous=NORMAL", e))?;
        let found = user_version(&conn, path)?;
        let supported = supported_version();
        if found > supported {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        if found == 0 && has_tables(&conn, path)? {
            return Err(StoreError::NotGaze {
                path: path.to_path_buf(),
            });
        }
        let migration_err = |e: rusqlite_migration::Error| StoreError::Migration {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        migrations()
            .map_err(migration_err)?
            .to_latest(&mut conn)
            .map_err(migration_err)?;
        if found < supported {
            tracing::info!(
                db = %path.display(),
                from = found,
                to = supported,
                "database schema upgraded"
            );
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing database read-only; it must be at the current schema version (or
    /// [`OLDEST_READABLE_VERSION`] or later).
    ///
    /// A WAL database needs its `-shm` file, which SQLite creates beside it. Where it cannot
    /// (a read-only folder or mount, a backup copy) and no `-wal` file holds commits that the
    /// database file lacks, the file is opened as immutable instead, so it can still be read.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        if !path.is_file() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let (conn, found) = match open_reader(path, false) {
            Ok(opened) => opened,
            Err(e) if needs_write_access(&e) => {
                let wal = wal_path(path);
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(StoreError::ReadOnlyWal {
                        path: path.to_path_buf(),
                        wal,
                    });
                }
                tracing::debug!(db = %path.display(), "read-only location: reading the file as immutable");
                open_reader(path, true)?
            }
            Err(e) => return Err(e),
        };
        let supported = supported_version();
        if found > supported {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        if found < OLDEST_READABLE_VERSION {
            if found == 0 && has_tables(&conn, path)? {
                return Err(StoreError::NotGaze {
                    path: path.to_path_buf(),
                });
            }
            return Err(StoreError::NeedsUpgrade {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<usize> {
        user_version(&self.conn, &self.path)
    }

    /// Copies every commit of the WAL into the database file and empties the WAL (closing the
    /// last connection then removes it).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| StoreError::sqlite(&self.path, "checkpointing the WAL", e))
    }

    /// SQLite's own consistency check ("ok" when intact).
    pub fn integrity_check(&self) -> Result<String> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&self.path, "checking integrity", e))
    }
}

/// The oldest schema version readers accept as it is: version 4 only adds `skipped_files`, which
/// readers treat as empty when it is absent.
pub const OLDEST_READABLE_VERSION: usize = 3;

/// A read-only connection and the schema version it reads; `immutable` tells SQLite that nothing
/// changes the file, so it needs no `-shm` file and takes no locks.
fn open_reader(path: &Path, immutable: bool) -> Result<(Connection, usize)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if immutable {
        let uri = format!("file:{}?immutable=1", uri_escape(path));
        Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
    } else {
        Connection::open_with_flags(path, flags)
    }
    .map_err(|e| StoreError::sqlite(path, "opening read-only", e))?;
    configure(&conn, path)?;
    let found = user_version(&conn, path)?;
    Ok((conn, found))
}

/// True for the errors SQLite gives when it cannot create the `-shm` file of a WAL database.
fn needs_write_access(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } => matches!(
            f.code,
            rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen
        ),
        _ => false,
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

/// A path as the path part of an SQLite `file:` URI.
fn uri_escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn configure(conn: &Connection, path: &Path) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sqlite(path, "setting the busy timeout", e))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| StoreError::sqlite(path, "turning on foreign keys", e))?;
    Ok(())
}

fn user_version(conn: &Connection, path: &Path) -> Result<usize> {
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite(path, "reading the schema version", e))?;
    usize::try_from(v).map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("negative schema version {v}"),
    })
}

fn has_tables(conn: &Connection, path: &Path) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table')",
        [],
        |r| r.get(0),
    )
    .map_err(|e| StoreError::sqlite(path, "listing tables", e))
}

/// Seconds since the Unix epoch, as stored in the database.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_validate_and_are_numbered() {
        migrations().unwrap().validate().unwrap();
        assert!(supported_version() >= 2);
        let mut names: Vec<_> = MIGRATIONS_DIR
            .dirs()
            .map(|d| d.path().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for (i, name) in names.iter().enumerate() {
            assert!(
                name.starts_with(&format!("{:02}-", i + 1)),
                "migration {name} is out of sequence"
            );
        }
    }

    #[test]
    fn fts5_is_compiled_in() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE VIRTUAL TABLE t USING fts5 (x)")
            .unwrap();
    }

    #[test]
    fn opens_upgrades_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        // A database at version 1 with a caption, upgraded by open: the caption is searchable.
        {
            let mut conn = Connection::open(&path).unwrap();
            migrations().unwrap().to_version(&mut conn, 1).unwrap();
            conn.execute_batch(
                "INSERT INTO models (content_hash, path, name, config, created_at, active)
                     VALUES ('m', 'm.safetensors', 'm', '{}', 0, 1);
                 INSERT INTO captions (content_hash, model_id, text, tokens, token_ids, score,
                                       finished, beam_size, created_at)
                     VALUES ('h', 1, 'a dog on grass', '[]', '[]', -1.0, 1, 3, 0);",
            )
            .unwrap();
        }
        let err = Store::open_read_only(&path).err().unwrap();
        assert!(
            matches!(err, StoreError::NeedsUpgrade { found: 1, .. }),
            "{err}"
        );
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), supported_version());
        let hits: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM captions_fts WHERE captions_fts MATCH 'dogs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hits, 1);
        let journal: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        drop(store);
        Store::open_read_only(&path).unwrap();

        store_at_version(&path, 99);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer") && err.contains("g.db"), "{err}");
        let err = Store::open_read_only(&path).err().unwrap().to_string();
        assert!(err.contains("newer"), "{err}");
    }

    fn store_at_version(path: &Path, v: i64) {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "user_version", v).unwrap();
    }

    #[test]
    fn refuses_foreign_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::NotGaze { .. }), "{err}");
        let err = Store::open_read_only(&dir.path().join("none.db"))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    }
}
