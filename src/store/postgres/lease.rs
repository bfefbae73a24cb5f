//! Leases: how `gaze worker`s on many machines share one queue without stepping on each other.
//!
//! A worker claims a batch of pending images with `FOR UPDATE SKIP LOCKED` (two workers never
//! take the same row, and neither waits for the other). Each claim sets the worker as the
//! image's `lease_owner` until `lease_until` and draws it a new `lease_token`. The worker's
//! commit locks the row and goes ahead only if it still holds the lease: same owner, same
//! token, not expired ([`Leases::holds`]). Tokens come from one sequence, so a token names one
//! claim of one image. A worker that was paused or cut off past its lease
//! therefore cannot write over the work of the worker that claimed the image after it.
//!
//! Lease times are the server's clock (`clock_timestamp()`), never a worker's, so machines
//! whose clocks disagree still agree on who holds what.

use postgres::{Client, NoTls};

use super::ops::PgConn;
use super::{PgStore, PgTx};

use crate::store::api::{Claim, Leases, WorkerReport, WorkerRow};
use crate::store::{Result, StoreError};

/// The channel on which an activation is announced (the payload is the model's id).
pub const ACTIVATION_CHANNEL: &str = "gaze_model_activated";

/// The advisory lock key held while a retraining run trains ("gaze" in ASCII, then 2).
const RETRAIN_LOCK: i64 = 0x6761_7a65_0000_0002;

/// How long a worker counts as seen in `gaze status`.
pub const WORKERS_SEEN_SECONDS: f64 = 300.0;

/// The server's clock, in Unix seconds.
const SERVER_NOW: &str = "extract(epoch from clock_timestamp())::double precision";

/// This machine's name, as workers and retraining runs record it.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

macro_rules! impl_leases {
    ($t:ty) => {
        impl Leases for $t {
    fn claim(&mut self, worker: &str, n: usize, lease_seconds: f64) -> Result<Vec<Claim>> {
        let pg = self.pg();
        let n = n.min(i64::MAX as usize) as i64;
        let rows = pg.query(
            &format!(
                "WITH picked AS (
                     SELECT id FROM images
                     WHERE status = 'pending'
                       AND (lease_until IS NULL OR lease_until < {SERVER_NOW})
                     ORDER BY updated_at, id
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE images i
                    SET lease_owner = $1, lease_until = {SERVER_NOW} + $3,
                        lease_token = nextval('lease_tokens')
                   FROM picked
                  WHERE i.id = picked.id
                 RETURNING i.path, i.size, i.mtime_ns, i.lease_token, i.attempts"
            ),
            &[&worker, &n, &lease_seconds],
            "claiming images",
        )?;
        rows.iter()
            .map(|r| {
                Ok(Claim {
                    path: pg.get(r, 0)?,
                    size: pg.get(r, 1)?,
                    mtime_ns: pg.get(r, 2)?,
                    token: pg.get(r, 3)?,
                    attempts: pg.get::<i64>(r, 4)?.clamp(0, u32::MAX as i64) as u32,
                })
            })
            .collect()
    }

    fn extend(&mut self, worker: &str, tokens: &[i64], lease_seconds: f64) -> Result<usize> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let n = self.pg().execute(
            &format!(
                "UPDATE images SET lease_until = {SERVER_NOW} + $3
                 WHERE lease_owner = $1 AND lease_token = ANY($2) AND status = 'pending'
                   AND lease_until >= {SERVER_NOW}"
            ),
            &[&worker, &tokens, &lease_seconds],
            "extending leases",
        )?;
        Ok(n as usize)
    }

    fn holds(&mut self, worker: &str, path: &str, token: i64) -> Result<bool> {
        let pg = self.pg();
        // FOR UPDATE keeps the row as it is until the caller's transaction ends, so nobody
        // can claim it between this check and the commit.
        // Found by its unique path alone and judged here, so the plan is always the index on
        // path whatever the statistics say of the other columns.
        let Some(r) = pg.query_opt(
            &format!(
                "SELECT lease_owner, lease_token, status, lease_until >= {SERVER_NOW}
                 FROM images WHERE path = $1 FOR UPDATE"
            ),
            &[&path],
            "checking a lease",
        )?
        else {
            return Ok(false);
        };
        let owner: Option<String> = pg.get(&r, 0)?;
        let held_token: i64 = pg.get(&r, 1)?;
        let status: String = pg.get(&r, 2)?;
        let live: Option<bool> = pg.get(&r, 3)?;
        Ok(owner.as_deref() == Some(worker)
            && held_token == token
            && status == "pending"
            && live == Some(true))
    }

    fn fail_leased(
        &mut self,
        worker: &str,
        claim: &Claim,
        error: &str,
        max_attempts: u32,
        now: f64,
    ) -> Result<bool> {
        let n = self.pg().execute(
            "UPDATE images SET
                 attempts = attempts + 1, error = $4, updated_at = $6,
                 status = CASE WHEN attempts + 1 >= $5 THEN 'failed' ELSE 'pending' END,
                 lease_owner = NULL, lease_until = NULL
             WHERE path = $1 AND lease_owner = $2 AND lease_token = $3 AND status = 'pending'",
            &[
                &claim.path,
                &worker,
                &claim.token,
                &error,
                &i64::from(max_attempts),
                &now,
            ],
            "recording a failure",
        )?;
        Ok(n == 1)
    }

    fn release(&mut self, worker: &str, claim: &Claim, error: &str, now: f64) -> Result<bool> {
        // Back of the queue (a newer `updated_at`), so the same worker does not take it again
        // at once; the error is there for `gaze status` and `gaze query --failed` readers.
        let n = self.pg().execute(
            "UPDATE images SET error = $4, updated_at = $5, lease_owner = NULL, lease_until = NULL
             WHERE path = $1 AND lease_owner = $2 AND lease_token = $3 AND status = 'pending'",
            &[&claim.path, &worker, &claim.token, &error, &now],
            "giving an image back",
        )?;
        Ok(n == 1)
    }

    fn report_worker(&mut self, w: &WorkerReport) -> Result<()> {
        self.pg().execute(
            &format!(
                "INSERT INTO workers (id, host, pid, model_id, started_at, seen_at, images_done,
                                      images_per_second, error)
                     VALUES ($1, $2, $3, $4, $5, {SERVER_NOW}, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET
                     host = excluded.host, pid = excluded.pid, model_id = excluded.model_id,
                     seen_at = excluded.seen_at, images_done = excluded.images_done,
                     images_per_second = excluded.images_per_second, error = excluded.error"
            ),
            &[
                &w.id,
                &w.host,
                &w.pid,
                &w.model_id,
                &w.started_at,
                &w.images_done,
                &w.images_per_second,
                &w.error,
            ],
            "reporting a worker",
        )?;
        Ok(())
    }

    fn workers(&self) -> Result<Vec<WorkerRow>> {
        recent_workers(self.pg(), 0.0)
    }

    fn try_lock_retraining(&mut self) -> Result<bool> {
        let pg = self.pg();
        let r = pg.query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&RETRAIN_LOCK],
            "taking the retraining lock",
        )?;
        pg.get(&r, 0)
    }

    fn limit_idle_transactions(&mut self, seconds: u64) -> Result<()> {
        // SET takes no parameters; the value is a number formatted here.
        self.pg().set_session(
            &format!("SET idle_in_transaction_session_timeout = '{}s'", seconds.max(1)),
            "limiting idle transactions",
        )
    }

    fn unlock_retraining(&mut self) -> Result<()> {
        self.pg().execute(
            "SELECT pg_advisory_unlock($1)",
            &[&RETRAIN_LOCK],
            "releasing the retraining lock",
        )?;
        Ok(())
    }
        }
    };
}
impl_leases!(PgStore);
impl_leases!(PgTx<'_>);

/// The workers seen in the last [`WORKERS_SEEN_SECONDS`], with the leases each holds now.
pub(crate) fn recent_workers(pg: &PgStore, _now: f64) -> Result<Vec<WorkerRow>> {
    let rows = pg.query(
        &format!(
            "SELECT w.id, w.host, w.pid, w.model_id, m.name, w.started_at, w.seen_at,
                    w.images_done, w.images_per_second, w.error,
                    (SELECT count(*) FROM images i
                     WHERE i.lease_owner = w.id AND i.status = 'pending'
                       AND i.lease_until >= {SERVER_NOW}),
                    {SERVER_NOW} - w.seen_at
             FROM workers w LEFT JOIN models m ON m.id = w.model_id
             WHERE w.seen_at >= {SERVER_NOW} - $1
             ORDER BY w.host, w.id"
        ),
        &[&WORKERS_SEEN_SECONDS],
        "listing workers",
    )?;
    rows.iter()
        .map(|r| {
            Ok(WorkerRow {
                id: pg.get(r, 0)?,
                host: pg.get(r, 1)?,
                pid: pg.get(r, 2)?,
                model_id: pg.get(r, 3)?,
                model: pg.get(r, 4)?,
                started_at: pg.get(r, 5)?,
                seen_at: pg.get(r, 6)?,
                images_done: pg.get(r, 7)?,
                images_per_second: pg.get(r, 8)?,
                error: pg.get(r, 9)?,
                leases: pg.get(r, 10)?,
                seconds_since_seen: pg.get(r, 11)?,
            })
        })
        .collect()
}

/// A connection that hears of activations as they happen (`LISTEN`), so running workers move
/// to a new model within moments instead of at their next poll.
pub struct ActivationListener {
    client: Client,
}

impl ActivationListener {
    pub fn connect(url: &str) -> Result<ActivationListener> {
        let err = |action: &str| {
            let action = action.to_string();
            move |e: postgres::Error| StoreError::Postgres {
                location: super::redact(url),
                action: action.clone(),
                source: Box::new(e),
            }
        };
        let mut client = Client::connect(url, NoTls).map_err(err("connecting"))?;
        client
            .batch_execute(&format!("LISTEN {ACTIVATION_CHANNEL}"))
            .map_err(err("listening for activations"))?;
        Ok(ActivationListener { client })
    }

    /// Waits up to `timeout` for an activation; true when one was announced.
    pub fn wait(&mut self, timeout: std::time::Duration) -> bool {
        use postgres::fallible_iterator::FallibleIterator;
        let mut notes = self.client.notifications();
        let heard = matches!(notes.timeout_iter(timeout).next(), Ok(Some(_)));
        // Several activations in a row need only one look at the registry.
        while let Ok(Some(_)) = notes.iter().next() {}
        heard
    }
}
