//! What the store costs per image, without a model: the queue's throughput when workers claim
//! pending images, store a caption with its attention maps and mark each image done, exactly
//! as `gaze worker` and the writer do, but with synthetic captions.
//!
//! On PostgreSQL each of `K` threads holds its own connection and loops like a worker: claim a
//! batch under a lease, then one transaction that fences every image (`holds`), stores its
//! caption and marks it done. On SQLite one thread does the same without claims (a SQLite file
//! has one writer). Every run starts from an empty store and ends by checking that every image
//! is done with exactly one caption, so a fast but wrong store cannot pass for a fast one.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::BenchError;
use crate::store::api::{CaptionStore, NewCaption, NewModel, ReadImage, Recaption};
use crate::store::{self, unix_now, Location, StoreError};

/// The attention grid of the tutorial's encoder (14 x 14).
pub const GRID: usize = 14;

/// How long a claim lasts: far beyond any batch here, so no lease runs out during a run.
const LEASE_SECONDS: f64 = 60.0;

/// What a run measures.
#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    pub location: Location,
    /// Images queued per run.
    pub images: usize,
    /// Worker counts, one run each (PostgreSQL; SQLite runs one writer once).
    pub workers: Vec<usize>,
    /// Images per claim and per commit.
    pub batch: usize,
    /// Attention maps per caption (tokens after `<start>`).
    pub steps: usize,
    /// Empty the store first; without it a store that holds anything is refused.
    pub reset: bool,
    /// Refresh the planner's statistics after queueing (PostgreSQL). Without it a run sees
    /// the statistics of whatever the table held when it was last analysed, as a store does
    /// when a large batch of new images lands.
    pub analyze: bool,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRun {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    pub workers: usize,
    pub batch: usize,
    pub images: usize,
    pub steps: usize,
    /// Wall-clock seconds from the first claim to the last commit.
    pub seconds: f64,
    /// Images claimed and committed per second, all workers together.
    pub images_per_second: f64,
    /// Per batch: from `begin` to the end of `commit` (fencing, captions, done marks).
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    /// Per claim (PostgreSQL only).
    pub claim_p50_ms: Option<f64>,
    /// The store time one worker spends per image: its claims and commits over its images.
    pub per_image_us: f64,
}

/// Runs the benchmark: one run per worker count on PostgreSQL, one run on SQLite.
pub fn run(opts: &StoreBenchOptions) -> Result<Vec<StoreRun>, BenchError> {
    if opts.images == 0 || opts.batch == 0 {
        return Err(BenchError::Options(
            "--images and --batch must be at least 1".into(),
        ));
    }
    if opts.workers.is_empty() || opts.workers.contains(&0) {
        return Err(BenchError::Options(
            "--workers needs worker counts of at least 1".into(),
        ));
    }
    if opts.reset {
        empty_store(&opts.location)?;
    } else {
        refuse_non_empty(&opts.location)?;
    }
    let worker_counts: Vec<usize> = match opts.location {
        Location::Postgres(_) => opts.workers.clone(),
        Location::Sqlite(_) => vec![1],
    };
    let mut runs = Vec::new();
    for (i, &workers) in worker_counts.iter().enumerate() {
        // The store holds only the previous run's rows here: the first run found it empty.
        if i > 0 {
            empty_store(&opts.location)?;
        }
        let model_id = prepare(&opts.location, opts.images)?;
        if opts.analyze {
            analyze(&opts.location)?;
        }
        let run = match opts.location {
            Location::Postgres(_) => run_postgres(opts, workers, model_id)?,
            Location::Sqlite(_) => run_sqlite(opts, model_id)?,
        };
        check_done(&opts.location, opts.images)?;
        runs.push(run);
    }
    Ok(runs)
}

/// A store error in the benchmark's terms.
fn st(e: StoreError) -> BenchError {
    BenchError::Store(Box::new(e))
}

/// Refuses a store that holds anything: the benchmark empties stores, so it only runs on one
/// that is empty already or that the user said may be emptied.
fn refuse_non_empty(location: &Location) -> Result<(), BenchError> {
    let store = store::open(location).map_err(st)?;
    let s = store.status(unix_now()).map_err(st)?;
    let runs = store.list_runs(1).map_err(st)?;
    if s.images > 0 || s.captions > 0 || s.models > 0 || s.skipped > 0 || !runs.is_empty() {
        return Err(BenchError::Options(format!(
            "{location}: the store is not empty ({} images, {} captions, {} models); the \
             benchmark empties the store it runs on: give --reset to empty it, or name another",
            s.images, s.captions, s.models
        )));
    }
    Ok(())
}

/// Deletes every row the benchmark or a user could have written, keeping the schema.
fn empty_store(location: &Location) -> Result<(), BenchError> {
    match location {
        Location::Postgres(url) => {
            let pg = store::postgres::PgStore::open(url).map_err(st)?;
            pg.batch(
                "TRUNCATE images, captions, attention, models, model_activations, retrain_runs,
                          skipped_files, workers RESTART IDENTITY CASCADE",
                "emptying the store",
            )
            .map_err(st)
        }
        Location::Sqlite(path) => {
            let s = store::Store::open(path).map_err(st)?;
            // Children before parents (foreign keys are on); the caption triggers keep the
            // full-text index in step.
            s.conn()
                .execute_batch(
                    "BEGIN;
                     DELETE FROM attention;
                     DELETE FROM captions;
                     DELETE FROM model_activations;
                     DELETE FROM retrain_runs;
                     DELETE FROM images;
                     DELETE FROM skipped_files;
                     DELETE FROM models;
                     COMMIT;",
                )
                .map_err(|e| st(StoreError::sqlite(path, "emptying the store", e)))
        }
    }
}

/// The path key of the benchmark's image `i`.
pub fn image_key(i: usize) -> String {
    format!("bench:/img{i}.jpg")
}

/// Queues `n` pending images in one transaction and registers and activates one model;
/// returns the model's id.
fn prepare(location: &Location, n: usize) -> Result<i64, BenchError> {
    let mut store = store::open(location).map_err(st)?;
    let now = unix_now();
    let mut tx = store.begin().map_err(st)?;
    for i in 0..n {
        tx.mark_pending(
            &image_key(i),
            100_000 + i as i64,
            1_700_000_000_000_000_000,
            now,
        )
        .map_err(st)?;
    }
    let model = tx
        .register_model(
            &NewModel {
                content_hash: "bench-store-model",
                path: "bench-store-model.safetensors",
                name: "bench-store",
                config_json: "{}",
                provenance_json: "{}",
            },
            now,
        )
        .map_err(st)?;
    tx.activate(model.id, "gaze bench store", Recaption::None, now)
        .map_err(st)?;
    tx.commit().map_err(st)?;
    Ok(model.id)
}

/// Brings the planner's statistics of the queue up to date (SQLite plans without them).
fn analyze(location: &Location) -> Result<(), BenchError> {
    match location {
        Location::Postgres(url) => store::postgres::PgStore::open(url)
            .and_then(|pg| pg.batch("ANALYZE images", "analysing the queue"))
            .map_err(st),
        Location::Sqlite(_) => Ok(()),
    }
}

/// Words the synthetic captions are drawn from, as a COCO-trained model writes them.
const WORDS: &[&str] = &[
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "riding",
    "sitting",
    "on",
    "top",
    "of",
    "the",
    "wave",
    "surfboard",
    "table",
    "with",
    "plate",
    "food",
    "next",
    "to",
    "red",
    "bus",
    "street",
    "standing",
    "in",
    "field",
    "grass",
    "group",
    "people",
    "holding",
    "umbrella",
    "white",
];

/// A caption as the model writes one: words, their tokens and ids, and attention maps.
struct SyntheticCaption {
    text: String,
    tokens: Vec<String>,
    token_ids: Vec<u32>,
    alphas: Vec<Vec<f32>>,
}

/// A few distinct captions of `steps` tokens after `<start>` (the last is `<end>`), made
/// before the clock starts so that only the store is timed.
fn synthetic_captions(steps: usize, seed: u64) -> Vec<SyntheticCaption> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    (0..16)
        .map(|_| {
            let words: Vec<&str> = (0..steps.saturating_sub(1))
                .map(|_| rng.pick(WORDS))
                .collect();
            let mut tokens = vec!["<start>".to_string()];
            tokens.extend(words.iter().map(|w| w.to_string()));
            tokens.push("<end>".into());
            let token_ids = (0..tokens.len()).map(|_| rng.below(9490) as u32).collect();
            let alphas = (0..steps)
                .map(|_| {
                    let map: Vec<f32> = (0..GRID * GRID)
                        .map(|_| rng.uniform(1e-3, 1.0) as f32)
                        .collect();
                    let sum: f32 = map.iter().sum();
                    map.into_iter().map(|v| v / sum).collect()
                })
                .collect();
            SyntheticCaption {
                text: words.join(" "),
                tokens,
                token_ids,
                alphas,
            }
        })
        .collect()
}

/// A distinct content hash per image, as BLAKE3 of its bytes would be.
fn content_hash(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex().to_string()
}

/// What one worker thread measured.
#[derive(Default)]
struct Tally {
    images: usize,
    commits: Vec<Duration>,
    claims: Vec<Duration>,
    busy: Duration,
}

/// One image to store: its key and how it was queued.
struct Item {
    path: String,
    size: i64,
    mtime_ns: i64,
}

/// Stores one batch in one transaction, as the writer commits a worker's batch: for a leased
/// batch each image is fenced first (`holds`), and a lost lease is an error here, since no
/// lease can run out during a run.
fn commit_batch(
    store: &mut dyn CaptionStore,
    items: &[(Item, Option<i64>)],
    worker: &str,
    model_id: i64,
    captions: &[SyntheticCaption],
) -> Result<(), BenchError> {
    let now = unix_now();
    let location = store.location();
    let mut tx = store.begin().map_err(st)?;
    for (item, token) in items {
        if let Some(token) = token {
            let leases = tx.leases().ok_or_else(|| {
                st(StoreError::Unsupported {
                    location: location.clone(),
                    what: "claims need a store with leases (PostgreSQL)".into(),
                })
            })?;
            if !leases.holds(worker, &item.path, *token).map_err(st)? {
                return Err(BenchError::Check(format!(
                    "{location}: worker {worker} lost its lease on {} during the run",
                    item.path
                )));
            }
        }
        let hash = content_hash(&item.path);
        let c = &captions[hash.as_bytes()[0] as usize % captions.len()];
        let inserted = tx
            .insert_caption(
                &NewCaption {
                    content_hash: &hash,
                    model_id,
                    text: &c.text,
                    tokens: &c.tokens,
                    token_ids: &c.token_ids,
                    score: -4.5,
                    finished: true,
                    beam_size: 3,
                    alphas: &c.alphas,
                    grid: GRID,
                },
                now,
            )
            .map_err(st)?;
        if inserted.is_none() {
            return Err(BenchError::Check(format!(
                "{location}: {} already had a caption",
                item.path
            )));
        }
        tx.mark_done(
            &ReadImage {
                path: &item.path,
                size: item.size,
                mtime_ns: item.mtime_ns,
                content_hash: &hash,
                width: 640,
                height: 480,
            },
            now,
        )
        .map_err(st)?;
    }
    tx.commit().map_err(st)?;
    Ok(())
}

/// One worker on its own connection: claim, commit, until nothing is left.
fn pg_worker(
    location: &Location,
    worker: &str,
    batch: usize,
    model_id: i64,
    captions: &[SyntheticCaption],
    start: &std::sync::Barrier,
) -> Result<Tally, BenchError> {
    let opened = store::open(location).map_err(st);
    // Every thread reaches the barrier, even one that could not connect, so none waits forever.
    start.wait();
    let mut store = opened?;
    let mut tally = Tally::default();
    loop {
        let t = Instant::now();
        let location_text = store.location();
        let leases = store.leases().ok_or_else(|| {
            st(StoreError::Unsupported {
                location: location_text,
                what: "claims need a store with leases (PostgreSQL)".into(),
            })
        })?;
        let claims = leases.claim(worker, batch, LEASE_SECONDS).map_err(st)?;
        let claimed = t.elapsed();
        if claims.is_empty() {
            // SKIP LOCKED hides rows other workers hold: nothing pending at all means done.
            if store.pending_paths().map_err(st)?.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        tally.claims.push(claimed);
        let items: Vec<(Item, Option<i64>)> = claims
            .into_iter()
            .map(|c| {
                (
                    Item {
                        path: c.path,
                        size: c.size,
                        mtime_ns: c.mtime_ns,
                    },
                    Some(c.token),
                )
            })
            .collect();
        let c = Instant::now();
        commit_batch(&mut *store, &items, worker, model_id, captions)?;
        tally.commits.push(c.elapsed());
        tally.busy += t.elapsed();
        tally.images += items.len();
    }
    Ok(tally)
}

fn run_postgres(
    opts: &StoreBenchOptions,
    workers: usize,
    model_id: i64,
) -> Result<StoreRun, BenchError> {
    let start = std::sync::Barrier::new(workers + 1);
    let (tallies, seconds) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|k| {
                let start = &start;
                s.spawn(move || {
                    let captions = synthetic_captions(opts.steps, 1 + k as u64);
                    pg_worker(
                        &opts.location,
                        &format!("bench-{k}"),
                        opts.batch,
                        model_id,
                        &captions,
                        start,
                    )
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        let tallies: Vec<Result<Tally, BenchError>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Check("a worker thread panicked".into())))
            })
            .collect();
        (tallies, t.elapsed().as_secs_f64())
    });
    let tallies = tallies.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(summarise("postgres", opts, workers, &tallies, seconds))
}

fn run_sqlite(opts: &StoreBenchOptions, model_id: i64) -> Result<StoreRun, BenchError> {
    let mut store = store::open(&opts.location).map_err(st)?;
    let captions = synthetic_captions(opts.steps, 1);
    // What admission reads once from the queue; a lone writer needs no claims.
    let pending = store.pending_images().map_err(st)?;
    let items: Vec<(Item, Option<i64>)> = pending
        .into_iter()
        .map(|p| {
            (
                Item {
                    path: p.path,
                    size: p.size as i64,
                    mtime_ns: p.mtime_ns,
                },
                None,
            )
        })
        .collect();
    let mut tally = Tally::default();
    let t = Instant::now();
    for chunk in items.chunks(opts.batch) {
        let c = Instant::now();
        commit_batch(&mut *store, chunk, "sqlite", model_id, &captions)?;
        let took = c.elapsed();
        tally.commits.push(took);
        tally.busy += took;
        tally.images += chunk.len();
    }
    let seconds = t.elapsed().as_secs_f64();
    Ok(summarise("sqlite", opts, 1, &[tally], seconds))
}

/// The value below which `q` of the sorted `values` lie, in milliseconds.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn summarise(
    backend: &'static str,
    opts: &StoreBenchOptions,
    workers: usize,
    tallies: &[Tally],
    seconds: f64,
) -> StoreRun {
    let mut commits: Vec<Duration> = tallies.iter().flat_map(|t| t.commits.clone()).collect();
    let mut claims: Vec<Duration> = tallies.iter().flat_map(|t| t.claims.clone()).collect();
    commits.sort();
    claims.sort();
    let images: usize = tallies.iter().map(|t| t.images).sum();
    let busy: f64 = tallies.iter().map(|t| t.busy.as_secs_f64()).sum();
    StoreRun {
        backend,
        workers,
        batch: opts.batch,
        images,
        steps: opts.steps,
        seconds,
        images_per_second: images as f64 / seconds.max(1e-9),
        commit_p50_ms: percentile_ms(&commits, 0.50),
        commit_p99_ms: percentile_ms(&commits, 0.99),
        claim_p50_ms: (!claims.is_empty()).then(|| percentile_ms(&claims, 0.50)),
        per_image_us: busy * 1e6 / images.max(1) as f64,
    }
}

/// Images that are done and have exactly one caption; the same SQL on both backends.
const DONE_WITH_ONE_CAPTION: &str = "SELECT count(*) FROM images i WHERE i.status = 'done'
       AND (SELECT count(*) FROM captions c WHERE c.content_hash = i.content_hash) = 1";

/// Fails unless every one of the `n` images is done and has exactly one caption.
fn check_done(location: &Location, n: usize) -> Result<(), BenchError> {
    let store = store::open(location).map_err(st)?;
    let s = store.status(unix_now()).map_err(st)?;
    let exact: i64 = match location {
        Location::Postgres(url) => {
            let pg = store::postgres::PgStore::open(url).map_err(st)?;
            let r = pg
                .query_one(DONE_WITH_ONE_CAPTION, &[], "checking the captions")
                .map_err(st)?;
            pg.get(&r, 0).map_err(st)?
        }
        Location::Sqlite(path) => {
            let s = store::Store::open(path).map_err(st)?;
            s.conn()
                .query_row(DONE_WITH_ONE_CAPTION, [], |r| r.get(0))
                .map_err(|e| st(StoreError::sqlite(path, "checking the captions", e)))?
        }
    };
    let n = n as i64;
    if s.images != n || s.backlog != 0 || s.captions != n || exact != n {
        return Err(BenchError::Check(format!(
            "{location}: after the run {} of {n} images are done with exactly one caption \
             ({} images, {} still pending, {} captions)",
            exact, s.images, s.backlog, s.captions
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: &std::path::Path, reset: bool) -> StoreBenchOptions {
        StoreBenchOptions {
            location: Location::Sqlite(path.to_path_buf()),
            images: 50,
            workers: vec![1, 2],
            batch: 8,
            steps: 12,
            reset,
            analyze: true,
        }
    }

    #[test]
    fn a_sqlite_run_stores_one_caption_per_image_and_refuses_a_used_store_without_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.db");
        let runs = run(&options(&path, false)).unwrap();
        assert_eq!(runs.len(), 1, "SQLite runs one writer once");
        let r = &runs[0];
        assert_eq!(
            (r.backend, r.workers, r.images, r.batch),
            ("sqlite", 1, 50, 8)
        );
        assert!(r.images_per_second > 0.0 && r.per_image_us > 0.0);
        assert!(r.commit_p50_ms <= r.commit_p99_ms && r.claim_p50_ms.is_none());
        check_done(&Location::Sqlite(path.clone()), 50).unwrap();

        // The store now holds the run's rows: refused without --reset, emptied with it.
        let err = run(&options(&path, false)).unwrap_err().to_string();
        assert!(
            err.contains("not empty") && err.contains("bench.db"),
            "{err}"
        );
        let again = run(&options(&path, true)).unwrap();
        assert_eq!(again[0].images, 50);

        // The check catches a store that lost a caption.
        let s = store::Store::open(&path).unwrap();
        s.conn()
            .execute(
                "DELETE FROM captions WHERE id = (SELECT min(id) FROM captions)",
                [],
            )
            .unwrap();
        let err = check_done(&Location::Sqlite(path.clone()), 50)
            .unwrap_err()
            .to_string();
        assert!(err.contains("49 of 50"), "{err}");
    }

    #[test]
    fn percentiles_and_bad_options() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile_ms(&sorted, 0.5), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(&dir.path().join("b.db"), false);
        o.batch = 0;
        assert!(matches!(run(&o), Err(BenchError::Options(_))));
    }
}
