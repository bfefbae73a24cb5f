//! The PostgreSQL store: the same interface ([`super::api`]) as the SQLite one, on a server that
//! several machines share. `gaze watch`, `gaze status`, `gaze query`, `gaze models` and
//! retraining run on it unchanged; `gaze worker`s claim images from it with leases ([`lease`]).
//!
//! The schema is the numbered migrations under `migrations/postgres/` (embedded in the binary);
//! its version lives in the `gaze_schema` table. Opening for writing upgrades an older schema
//! inside one transaction, under an advisory lock so that workers starting together do not
//! race, and refuses a schema written by a newer gaze; opening read-only needs the current
//! version and runs every statement in a read-only transaction.
//!
//! One [`PgStore`] holds one connection. Calls run on their own (several rows at once in a
//! transaction of their own); [`PgTx`] runs calls in one transaction that the caller commits,
//! and rolls back when dropped uncommitted.

pub mod lease;
mod ops;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;

use include_dir::{include_dir, Dir};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::api::{CaptionStore, Leases, StoreTx};
use super::{Result, StoreError};

static MIGRATIONS_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/migrations/postgres");

/// The advisory lock key under which the schema is migrated ("gaze" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x6761_7a65_0000_0001;

/// The schema version this gaze writes (the number of migrations).
pub fn supported_version() -> usize {
    MIGRATIONS_DIR.dirs().count()
}

/// The migrations in order: (version, SQL).
fn migrations() -> Vec<(usize, &'static str)> {
    let mut dirs: Vec<_> = MIGRATIONS_DIR.dirs().collect();
    dirs.sort_by_key(|d| d.path().to_path_buf());
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let sql = d
                .get_file(d.path().join("up.sql"))
                .and_then(|f| f.contents_utf8())
                .unwrap_or("");
            (i + 1, sql)
        })
        .collect()
}

/// Whether a database setting names a PostgreSQL server rather than a SQLite file.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// A URL as it may be shown: without its password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// An open PostgreSQL store.
pub struct PgStore {
    client: RefCell<Client>,
    /// Every statement this connection has prepared, by its text: a statement is parsed and
    /// planned once, and each later call is one round trip.
    prepared: RefCell<HashMap<String, Statement>>,
    /// The URL as given (with its password), to connect again after the connection was lost.
    url: String,
    /// Session settings (`SET ...`) made on this connection, made again on a new one.
    session: RefCell<Vec<String>>,
    location: String,
    /// A [`PgTx`] is open on the connection.
    in_tx: Cell<bool>,
}

impl PgStore {
    /// Connects, and creates or upgrades the schema.
    pub fn open(url: &str) -> Result<PgStore> {
        let store = PgStore::connect(url)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects for reading only; the schema must be at the current version.
    pub fn open_read_only(url: &str) -> Result<PgStore> {
        let store = PgStore::connect(url)?;
        let found = store.found_version()?;
        store.check_version(found, true)?;
        store.set_session(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "going read-only",
        )?;
        Ok(store)
    }

    fn connect(url: &str) -> Result<PgStore> {
        let location = redact(url);
        let client = Client::connect(url, NoTls).map_err(|e| StoreError::Postgres {
            location: location.clone(),
            action: "connecting".into(),
            source: Box::new(e),
        })?;
        Ok(PgStore {
            client: RefCell::new(client),
            prepared: RefCell::new(HashMap::new()),
            url: url.to_string(),
            session: RefCell::new(Vec::new()),
            location,
            in_tx: Cell::new(false),
        })
    }

    /// Makes a session setting, now and on every later connection.
    pub(crate) fn set_session(&self, sql: &str, action: &str) -> Result<()> {
        self.batch(sql, action)?;
        self.session.borrow_mut().push(sql.to_string());
        Ok(())
    }

    /// Connects again when the connection was lost (a server restart, a network cut, a
    /// session the server ended), outside a transaction: what a transaction did is gone with
    /// its connection, so it fails and the caller's retry starts afresh.
    fn reconnect_if_lost(&self) -> Result<()> {
        if self.in_tx.get() || !self.client.borrow().is_closed() {
            return Ok(());
        }
        tracing::warn!(db = %self.location, "connection lost; connecting again");
        let client = Client::connect(&self.url, NoTls).map_err(self.err("connecting again"))?;
        *self.client.borrow_mut() = client;
        self.prepared.borrow_mut().clear();
        for sql in self.session.borrow().iter() {
            self.client
                .borrow_mut()
                .batch_execute(sql)
                .map_err(self.err("restoring session settings"))?;
        }
        Ok(())
    }

    /// The server and database, without the password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The connection itself, for work that is not the interface's (copying a whole store).
    pub(crate) fn client(&self) -> std::cell::RefMut<'_, Client> {
        self.client.borrow_mut()
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(&self.location)
    }

    /// The store's error for a failed statement.
    pub(crate) fn err(&self, action: &str) -> impl Fn(postgres::Error) -> StoreError + '_ {
        let action = action.to_string();
        move |e| StoreError::Postgres {
            location: self.location.clone(),
            action: action.clone(),
            source: Box::new(e),
        }
    }

    pub(crate) fn batch(&self, sql: &str, action: &str) -> Result<()> {
        self.reconnect_if_lost()?;
        self.client
            .borrow_mut()
            .batch_execute(sql)
            .map_err(self.err(action))
    }

    /// `sql` prepared on this connection (once).
    fn statement(&self, sql: &str, action: &str) -> Result<Statement> {
        self.reconnect_if_lost()?;
        if let Some(s) = self.prepared.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .borrow_mut()
            .prepare(sql)
            .map_err(self.err(action))?;
        self.prepared
            .borrow_mut()
            .insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub(crate) fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        action: &str,
    ) -> Result<u64> {
        let s = self.statement(sql, action)?;
        self.client
            .borrow_mut()
            .execute(&s, params)
            .map_err(self.err(action))
    }

    pub(crate) fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        action: &str,
    ) -> Result<Vec<Row>> {
        let s = self.statement(sql, action)?;
        self.client
            .borrow_mut()
            .query(&s, params)
            .map_err(self.err(action))
    }

    pub(crate) fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        action: &str,
    ) -> Result<Option<Row>> {
        let s = self.statement(sql, action)?;
        self.client
            .borrow_mut()
            .query_opt(&s, params)
            .map_err(self.err(action))
    }

    pub(crate) fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        action: &str,
    ) -> Result<Row> {
        let s = self.statement(sql, action)?;
        self.client
            .borrow_mut()
            .query_one(&s, params)
            .map_err(self.err(action))
    }

    /// A value of a row, or the store's error naming the column.
    pub(crate) fn get<'a, T: postgres::types::FromSql<'a>>(
        &self,
        row: &'a Row,
        i: usize,
    ) -> Result<T> {
        row.try_get(i).map_err(self.err("reading a row"))
    }

    /// Runs `f` in a transaction of its own unless a [`PgTx`] is open (then it is part of it).
    pub(crate) fn atomic<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.in_tx.get() {
            return f();
        }
        self.batch("BEGIN", "beginning a transaction")?;
        match f() {
            Ok(v) => {
                self.batch("COMMIT", "committing")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK", "rolling back");
                Err(e)
            }
        }
    }

    /// The schema version recorded in the database (0 for an empty one).
    pub fn schema_version(&self) -> Result<usize> {
        self.found_version()
    }

    fn found_version(&self) -> Result<usize> {
        let row = self.query_one(
            "SELECT to_regclass('gaze_schema') IS NOT NULL,
                    EXISTS (SELECT 1 FROM information_schema.tables
                            WHERE table_schema = current_schema())",
            &[],
            "reading the schema version",
        )?;
        let (versioned, has_tables): (bool, bool) = (self.get(&row, 0)?, self.get(&row, 1)?);
        if !versioned {
            if has_tables {
                return Err(StoreError::NotGaze { path: self.path() });
            }
            return Ok(0);
        }
        let row = self.query_one(
            "SELECT coalesce(max(version), 0) FROM gaze_schema",
            &[],
            "reading the schema version",
        )?;
        let v: i64 = self.get(&row, 0)?;
        Ok(v.max(0) as usize)
    }

    fn check_version(&self, found: usize, read_only: bool) -> Result<()> {
        let supported = supported_version();
        if found > supported {
            return Err(StoreError::TooNew {
                path: self.path(),
                found,
                supported,
            });
        }
        if read_only && found < supported {
            return Err(StoreError::NeedsUpgrade {
                path: self.path(),
                found,
                supported,
            });
        }
        Ok(())
    }

    /// Applies the migrations the database lacks, all in one transaction.
    fn migrate(&self) -> Result<()> {
        let found = self.found_version()?;
        self.check_version(found, false)?;
        if found == supported_version() {
            return Ok(());
        }
        self.atomic(|| {
            self.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&MIGRATION_LOCK],
                "locking the schema",
            )?;
            // Another process may have migrated while this one waited for the lock.
            let found = self.found_version()?;
            self.check_version(found, false)?;
            self.batch(
                "CREATE TABLE IF NOT EXISTS gaze_schema (
                     version    BIGINT           NOT NULL,
                     applied_at DOUBLE PRECISION NOT NULL
                 )",
                "recording the schema version",
            )?;
            for (version, sql) in migrations().into_iter().filter(|(v, _)| *v > found) {
                self.batch(sql, &format!("migrating the schema to version {version}"))?;
                self.execute(
                    "INSERT INTO gaze_schema (version, applied_at) VALUES ($1, $2)",
                    &[&(version as i64), &super::unix_now()],
                    "recording the schema version",
                )?;
            }
            Ok(())
        })?;
        tracing::info!(
            db = %self.location,
            from = found,
            to = supported_version(),
            "database schema upgraded"
        );
        Ok(())
    }
}

/// A transaction on a PostgreSQL store.
pub struct PgTx<'a> {
    store: &'a PgStore,
    finished: bool,
}

impl PgTx<'_> {
    pub(crate) fn store(&self) -> &PgStore {
        self.store
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.store.batch("ROLLBACK", "rolling back");
        }
        self.store.in_tx.set(false);
    }
}

impl CaptionStore for PgStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn begin(&mut self) -> Result<Box<dyn StoreTx + '_>> {
        self.batch("BEGIN", "beginning a transaction")?;
        self.in_tx.set(true);
        Ok(Box::new(PgTx {
            store: self,
            finished: false,
        }))
    }

    fn leases(&mut self) -> Option<&mut dyn Leases> {
        Some(self)
    }
}

impl StoreTx for PgTx<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.finished = true;
        self.store.batch("COMMIT", "committing")
    }

    fn leases(&mut self) -> Option<&mut dyn Leases> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_apart_and_shown_without_passwords() {
        assert!(is_url("postgres://u@h/db") && is_url("postgresql://h/db"));
        assert!(!is_url("gaze.db") && !is_url("/var/lib/postgres/gaze.db"));
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            redact("postgresql://u:p@ss@h/db?sslmode=disable"),
            "postgresql://u@h/db?sslmode=disable"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn migrations_are_numbered_and_not_empty() {
        let all = migrations();
        assert_eq!(all.len(), supported_version());
        for (i, (v, sql)) in all.iter().enumerate() {
            assert_eq!(*v, i + 1);
            assert!(sql.contains("CREATE"), "migration {v} is empty");
        }
        let mut names: Vec<_> = MIGRATIONS_DIR
            .dirs()
            .map(|d| d.path().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for (i, name) in names.iter().enumerate() {
            assert!(name.starts_with(&format!("{:02}-", i + 1)), "{name}");
        }
    }
}
