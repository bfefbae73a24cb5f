//! Several machines on one PostgreSQL store, simulated with real processes: a `gaze watch
//! --no-caption` scanner and `gaze worker`s on a throwaway server (tests/common/pg.rs), while
//! images keep arriving. Workers are killed, a worker is paused past its lease, the scanner is
//! killed; at the end every image has exactly one caption by the active model and nothing is
//! lost. The workers reach the share under another path than the scanner (a named root).

mod common;

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::model::{png, tiny_model};

const BIN: &str = env!("CARGO_BIN_EXE_gaze");
/// Seconds a worker's claim lasts (short, so a paused worker loses its leases quickly).
const LEASE_SECONDS: &str = "2";

fn gaze() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("GAZE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("GAZE_MAX_STEPS", "8")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

fn log_to(cmd: &mut Command, log: &Path) {
    cmd.stderr(File::options().create(true).append(true).open(log).unwrap());
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(6000);
    text[text.floor_char_boundary(start)..].to_string()
}

struct Cluster {
    root: PathBuf,
    url: String,
    model: PathBuf,
}

impl Cluster {
    fn new(url: String) -> (tempfile::TempDir, Cluster) {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let share = root.join("share");
        fs::create_dir(&share).unwrap();
        // The workers' machine mounts the same share elsewhere.
        std::os::unix::fs::symlink(&share, root.join("mnt")).unwrap();
        for (name, folder) in [("scanner", "share"), ("worker", "mnt")] {
            fs::write(
                root.join(format!("{name}.toml")),
                format!(
                    "[watch.roots]\nphotos = \"{}\"\n",
                    root.join(folder).display()
                ),
            )
            .unwrap();
        }
        let model = tiny_model(&root, 3);
        (tmp, Cluster { root, url, model })
    }

    fn share(&self) -> PathBuf {
        self.root.join("share")
    }

    fn scanner(&self) -> Child {
        let mut cmd = gaze();
        cmd.arg("watch")
            .arg("--no-caption")
            .args(["--db", &self.url])
            .arg("--config")
            .arg(self.root.join("scanner.toml"))
            .args(["--stable-ms", "150"])
            .arg(self.share());
        log_to(&mut cmd, &self.root.join("scanner.log"));
        cmd.spawn().unwrap()
    }

    fn worker(&self, id: &str, model: Option<&Path>) -> Child {
        let mut cmd = gaze();
        cmd.arg("worker")
            .args(["--db", &self.url, "--id", id])
            .arg("--config")
            .arg(self.root.join("worker.toml"))
            .args(["--lease-seconds", LEASE_SECONDS])
            .args([
                "--batch-size",
                "4",
                "--beam-size",
                "2",
                "--decode-threads",
                "1",
            ]);
        if let Some(m) = model {
            cmd.arg("--model").arg(m);
        }
        log_to(&mut cmd, &self.log(id));
        cmd.spawn().unwrap()
    }

    fn log(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.log"))
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    /// A count, or -1 before the schema exists.
    fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(sql, &[])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    }

    fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > limit {
                let logs: String = fs::read_dir(&self.root)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| format!("--- {}\n{}\n", e.path().display(), log_tail(&e.path())))
                    .collect();
                panic!("timed out waiting for {what}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes `n` distinct images into the share, a few at a time, as a copy would.
    fn produce(&self, n: u32, first_seed: u32, every: Duration) -> std::thread::JoinHandle<()> {
        let share = self.share();
        std::thread::spawn(move || {
            for i in 0..n {
                let dir = share.join(format!("d{}", i % 5));
                fs::create_dir_all(&dir).unwrap();
                let tmp = dir.join(format!(".img{i:04}.part"));
                fs::write(&tmp, png(40, 32, first_seed + i)).unwrap();
                fs::rename(&tmp, dir.join(format!("img{i:04}.png"))).unwrap();
                std::thread::sleep(every);
            }
        })
    }

    /// Every image done, with exactly one caption by `model` and no (content, model) twice.
    fn check_all_captioned(&self, n: i64, model: i64) {
        let mut c = self.client();
        let rows = c
            .query(
                "SELECT path, status, content_hash FROM images ORDER BY path",
                &[],
            )
            .unwrap();
        assert_eq!(rows.len() as i64, n, "one row per image");
        let mut hashes = HashSet::new();
        for r in &rows {
            let (path, status): (String, String) = (r.get(0), r.get(1));
            assert!(
                path.starts_with("photos:/d"),
                "recorded under the root: {path}"
            );
            assert_eq!(status, "done", "{path}");
            hashes.insert(r.get::<_, Option<String>>(2).unwrap());
        }
        assert_eq!(hashes.len() as i64, n, "distinct images");
        let no_caption: i64 = c
            .query_one(
                "SELECT count(*) FROM images i WHERE i.status = 'done' AND NOT EXISTS
                     (SELECT 1 FROM captions c WHERE c.content_hash = i.content_hash
                                                 AND c.model_id = $1)",
                &[&model],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            no_caption, 0,
            "no image done without a caption by the active model"
        );
        let dups: i64 = c
            .query_one(
                "SELECT count(*) FROM (SELECT content_hash, model_id FROM captions
                                       GROUP BY 1, 2 HAVING count(*) > 1) d",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(dups, 0, "no (content, model) captioned twice");
        let attention: i64 = c
            .query_one("SELECT count(*) FROM attention", &[])
            .unwrap()
            .get(0);
        let captions: i64 = c
            .query_one("SELECT count(*) FROM captions", &[])
            .unwrap()
            .get(0);
        assert_eq!(attention, captions, "every caption has its attention");
    }

    fn active_model(&self) -> i64 {
        self.count("SELECT coalesce(max(id), -1) FROM models WHERE active")
    }
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn stop(child: &mut Child) {
    signal(child, "-TERM");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn workers_killed_paused_and_a_scanner_killed_lose_and_duplicate_nothing() {
    let Some(url) = common::pg::database_or_skip(
        "workers_killed_paused_and_a_scanner_killed_lose_and_duplicate_nothing",
    ) else {
        return;
    };
    let (_tmp, cluster) = Cluster::new(url);
    const IMAGES: u32 = 500;
    let mut scanner = cluster.scanner();
    // The first worker brings the model (registers and activates it); the others take the
    // registry's active model.
    let mut w1 = cluster.worker("w1", Some(&cluster.model));
    cluster.wait_for("the model", Duration::from_secs(60), || {
        cluster.active_model() > 0
    });
    let model = cluster.active_model();
    let mut w2 = cluster.worker("w2", None);
    let mut w3 = cluster.worker("w3", None);
    let producer = cluster.produce(IMAGES, 10_000, Duration::from_millis(12));
    let done = || cluster.count("SELECT count(*) FROM images WHERE status = 'done'");

    // Kill w2 three times and the scanner twice while images keep arriving.
    let arrived = Arc::new(AtomicBool::new(false));
    for round in 0..3 {
        let before = done();
        cluster.wait_for("progress", Duration::from_secs(120), || {
            done() > before + 20 || arrived.load(Ordering::SeqCst)
        });
        kill(&mut w2);
        if round < 2 {
            kill(&mut scanner);
            std::thread::sleep(Duration::from_millis(200));
            scanner = cluster.scanner();
        }
        w2 = cluster.worker("w2", None);
        if producer.is_finished() {
            arrived.store(true, Ordering::SeqCst);
        }
    }

    // Pause w3 while it holds claimed images, for longer than its lease.
    let held_by_w3 = || -> Vec<String> {
        cluster
            .client()
            .query(
                "SELECT path FROM images WHERE lease_owner = 'w3' AND status = 'pending'",
                &[],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default()
    };
    let mut held = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if !held_by_w3().is_empty() {
            signal(&w3, "-STOP");
            held = held_by_w3();
            if held.is_empty() {
                // It committed between the look and the signal.
                signal(&w3, "-CONT");
                continue;
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!held.is_empty(), "w3 never held a claim");
    std::thread::sleep(Duration::from_secs(6));
    // Meanwhile the others took over what they could (rows w3 had locked in an open
    // transaction stay with it, and its commit of those is legitimate).
    let mut c = cluster.client();
    let taken_over: i64 = c
        .query_one(
            "SELECT count(*) FROM images WHERE path = ANY($1)
                 AND (status = 'done' OR lease_owner IS DISTINCT FROM 'w3')",
            &[&held],
        )
        .unwrap()
        .get(0);
    signal(&w3, "-CONT");
    if taken_over > 0 {
        let log = cluster.log("w3");
        cluster.wait_for("w3's late results refused", Duration::from_secs(30), || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("results dropped")
        });
    }
    eprintln!(
        "w3 paused holding {} images; {taken_over} taken over by the others",
        held.len()
    );

    producer.join().unwrap();
    let n = IMAGES as i64;
    cluster.wait_for("every image done", Duration::from_secs(300), || done() == n);
    for w in [&mut w1, &mut w2, &mut w3] {
        stop(w);
    }
    kill(&mut scanner);
    cluster.check_all_captioned(n, model);
    let captions = cluster.count("SELECT count(*) FROM captions");
    assert_eq!(captions, n, "one caption per image, one model");

    // `gaze status` lists the workers and the backlog.
    let out = gaze()
        .args(["status", "--db", &cluster.url, "--json"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backlog"], 0);
    let ids: HashSet<&str> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from(["w1", "w2", "w3"]));
}

#[test]
fn a_promotion_reaches_every_running_worker() {
    let Some(url) = common::pg::database_or_skip("a_promotion_reaches_every_running_worker") else {
        return;
    };
    let (_tmp, cluster) = Cluster::new(url);
    let other = tiny_model(&cluster.root, 4);
    let mut scanner = cluster.scanner();
    // The second model is registered first, by a worker that brings it and stops; then w1
    // brings the first, which becomes active, and the others take the registry's.
    let mut bringer = cluster.worker("bringer", Some(&other));
    cluster.wait_for("the second model", Duration::from_secs(60), || {
        cluster.active_model() > 0
    });
    let second = cluster.active_model();
    stop(&mut bringer);
    let mut workers = vec![cluster.worker("w1", Some(&cluster.model))];
    cluster.wait_for("the first model", Duration::from_secs(60), || {
        cluster.active_model() != second && cluster.active_model() > 0
    });
    let first = cluster.active_model();
    workers.push(cluster.worker("w2", None));
    workers.push(cluster.worker("w3", None));
    let activate = |id: i64| {
        let out = gaze()
            .args(["models", "activate", "--db", &cluster.url, &id.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    const IMAGES: u32 = 150;
    let producer = cluster.produce(IMAGES, 20_000, Duration::from_millis(25));
    cluster.wait_for(
        "some captions by the first model",
        Duration::from_secs(120),
        || {
            cluster.count(&format!(
                "SELECT count(*) FROM captions WHERE model_id = {first}"
            )) >= 20
        },
    );
    activate(second);
    let promoted_at = cluster.count("SELECT floor(extract(epoch from now()))::bigint");
    producer.join().unwrap();
    let n = IMAGES as i64;
    cluster.wait_for("every image done", Duration::from_secs(300), || {
        cluster.count("SELECT count(*) FROM images WHERE status = 'done'") == n
    });
    for w in &mut workers {
        stop(w);
    }
    kill(&mut scanner);

    let mut c = cluster.client();
    // Batches in flight at the promotion finish on the old model; after a few seconds every
    // new caption is the new model's.
    let late_old: i64 = c
        .query_one(
            "SELECT count(*) FROM captions WHERE model_id = $1 AND created_at > $2",
            &[&first, &((promoted_at + 5) as f64)],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        late_old, 0,
        "captions by the old model long after the promotion"
    );
    let by_second: i64 = c
        .query_one(
            "SELECT count(*) FROM captions WHERE model_id = $1",
            &[&second],
        )
        .unwrap()
        .get(0);
    assert!(by_second > 0);
    // None lost: every image is done and has a caption by one of the two models.
    let uncaptioned: i64 = c
        .query_one(
            "SELECT count(*) FROM images i WHERE NOT EXISTS
                 (SELECT 1 FROM captions c WHERE c.content_hash = i.content_hash)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(uncaptioned, 0);
    // Every worker said it took the new model.
    for id in ["w1", "w2", "w3"] {
        let log = fs::read_to_string(cluster.log(id)).unwrap();
        assert!(log.contains("taking it"), "{id}:\n{log}");
    }
}

#[test]
fn one_machine_commands_work_unchanged_on_postgres() {
    let Some(url) = common::pg::database_or_skip("one_machine_commands_work_unchanged_on_postgres")
    else {
        return;
    };
    let (_tmp, cluster) = Cluster::new(url.clone());
    let share = cluster.share();
    for i in 0..6u32 {
        fs::write(share.join(format!("img{i}.png")), png(40, 32, 30_000 + i)).unwrap();
    }
    fs::write(share.join("broken.png"), b"not an image").unwrap();
    // The full daemon on one machine, as on SQLite.
    let log = cluster.log("watch");
    let mut cmd = gaze();
    cmd.arg("watch")
        .args(["--db", &url])
        .arg("--model")
        .arg(&cluster.model)
        .args([
            "--stable-ms",
            "100",
            "--batch-size",
            "4",
            "--beam-size",
            "2",
        ])
        .arg("--exit-when-idle")
        .arg(&share);
    log_to(&mut cmd, &log);
    let status = cmd.status().unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "one image failed\n{}",
        log_tail(&log)
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM images WHERE status = 'done'"),
        6
    );

    let run = |args: &[&str]| -> (bool, String, String) {
        let out = gaze()
            .args(args)
            .args(["--db", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["query", "--recent", "3", "--format", "json"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let first = &rows[0];
    let path = PathBuf::from(first["path"].as_str().unwrap());
    assert!(path.starts_with(&share), "{path:?}");
    let (ok, out, err) = run(&["query", "--failed", "--format", "csv"]);
    assert!(ok && out.contains("broken.png"), "{out}{err}");
    let word = first["caption"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (ok, out, err) = run(&["query", "--search", &word, "--format", "table"]);
    assert!(ok && !out.is_empty(), "{out}{err}");
    let picture = cluster.root.join("attention.png");
    let (ok, _, err) = run(&[
        "query",
        "--path",
        path.to_str().unwrap(),
        "--attention-png",
        picture.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(image::open(&picture).is_ok(), "a PNG");
    let (ok, out, err) = run(&["status"]);
    assert!(
        ok && out.contains("done 6") && out.contains("failed 1"),
        "{out}{err}"
    );
    let (ok, out, err) = run(&["models", "list"]);
    assert!(ok && out.contains("tiny-3"), "{out}{err}");
    let (ok, _, err) = run(&["models", "rollback"]);
    assert!(!ok && err.contains("nothing to roll back"), "{err}");
    let (ok, _, err) = run(&["models", "activate", "1"]);
    assert!(ok, "{err}");
}

#[test]
fn retraining_by_hand_promotes_on_postgres_under_the_lock() {
    let Some(url) =
        common::pg::database_or_skip("retraining_by_hand_promotes_on_postgres_under_the_lock")
    else {
        return;
    };
    let (_tmp, cluster) = Cluster::new(url.clone());
    let data = common::model::retrain_data(&cluster.root, 7);
    let share = cluster.share();
    for i in 0..3u32 {
        fs::write(share.join(format!("img{i}.png")), png(40, 32, 40_000 + i)).unwrap();
    }
    let log = cluster.log("watch");
    let mut cmd = gaze();
    cmd.arg("watch")
        .args(["--db", &url])
        .arg("--model")
        .arg(&data.m0)
        .args(["--stable-ms", "100", "--exit-when-idle"])
        .arg(&share);
    log_to(&mut cmd, &log);
    assert!(cmd.status().unwrap().success(), "{}", log_tail(&log));
    let m0 = cluster.active_model();
    let config = common::model::retrain_config(
        &cluster.root,
        "permissive.toml",
        -1000.0,
        &data.prepared,
        &data.base,
    );
    let retrain = || {
        gaze()
            .args(["retrain", "--now", "--db", &url])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    // Another process holding the retraining lock keeps this one out.
    let mut other = gaze::store::open(&gaze::store::Location::Postgres(url.clone())).unwrap();
    assert!(other.leases().unwrap().try_lock_retraining().unwrap());
    let out = retrain();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process is retraining"), "{err}");
    other.leases().unwrap().unlock_retraining().unwrap();
    // Alone, it trains, judges and promotes (any candidate wins), queuing every image again.
    let out = retrain();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let m1 = cluster.active_model();
    assert_ne!(m1, m0, "promoted");
    assert_eq!(
        cluster.count("SELECT count(*) FROM images WHERE status = 'pending'"),
        3
    );
    assert_eq!(
        cluster.count("SELECT count(*) FROM retrain_runs WHERE status = 'promoted'"),
        1
    );
}
