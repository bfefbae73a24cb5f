//! Drives the real `gaze watch`, `gaze status` and `gaze query` against temp folders and
//! databases with a tiny random model: captions for good images and recorded failures for
//! broken ones, SIGKILL at random moments while files keep arriving, a burst of 5,000 files
//! under a memory limit, and schema upgrades.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::model::{png, retrain_config, retrain_data, tiny_model, RetrainData};

use rusqlite::{Connection, OpenFlags};

const BIN: &str = env!("CARGO_BIN_EXE_gaze");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG announcing 100000 x 100000 pixels (a decompression bomb) with a few bytes of data.
fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

fn gaze() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("GAZE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `gaze watch` with fast settings for tests (`changes` replaces some flags' values). The
/// search length comes from the environment layer (GAZE_MAX_STEPS), the rest from flags.
fn watch_cmd(
    folder: &Path,
    db: &Path,
    model: &Path,
    log: &Path,
    changes: &[(&str, &str)],
) -> Command {
    let mut flags = vec![
        ("--stable-ms", "200"),
        ("--max-wait-ms", "50"),
        ("--batch-size", "4"),
        ("--beam-size", "2"),
        ("--decode-threads", "2"),
    ];
    for (flag, value) in changes {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(slot) => slot.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let mut cmd = gaze();
    cmd.arg("watch")
        .arg("--db")
        .arg(db)
        .arg("--model")
        .arg(model);
    for (flag, value) in flags {
        cmd.args([flag, value]);
    }
    cmd.arg(folder)
        .env("GAZE_MAX_STEPS", "8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::options().create(true).append(true).open(log).unwrap());
    cmd
}

fn run_once(folder: &Path, db: &Path, model: &Path, log: &Path) -> ExitStatus {
    let mut child = watch_cmd(folder, db, model, log, &[])
        .arg("--exit-when-idle")
        .spawn()
        .unwrap();
    wait_exit(&mut child, Duration::from_secs(120), log)
}

/// The end of a log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn wait_exit(child: &mut Child, limit: Duration, log: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "gaze did not exit within {limit:?}; log:\n{}",
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a started daemon has recorded its model (it is then watching).
fn wait_started(child: &mut Child, db: &Path, log: &Path) {
    wait_for("the daemon to start", Duration::from_secs(60), log, || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gaze exited early with {status}; log:\n{}", log_tail(log));
        }
        count(db, "SELECT count(*) FROM models WHERE active = 1") == 1
    });
}

fn terminate(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

fn wait_for(what: &str, limit: Duration, log: &Path, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}; log:\n{}", log_tail(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reader(db: &Path) -> Option<Connection> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(10)).ok()?;
    Some(conn)
}

#[derive(Debug, Clone)]
struct ImageRow {
    status: String,
    hash: Option<String>,
    error: Option<String>,
    attempts: i64,
}

/// Images by path; empty while the database or its tables do not exist yet.
fn images(db: &Path) -> HashMap<String, ImageRow> {
    let Some(conn) = reader(db) else {
        return HashMap::new();
    };
    let Ok(mut stmt) =
        conn.prepare("SELECT path, status, content_hash, error, attempts FROM images")
    else {
        return HashMap::new();
    };
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            ImageRow {
                status: r.get(1)?,
                hash: r.get(2)?,
                error: r.get(3)?,
                attempts: r.get(4)?,
            },
        ))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn count(db: &Path, sql: &str) -> i64 {
    reader(db)
        .and_then(|c| c.query_row(sql, [], |r| r.get(0)).ok())
        .unwrap_or(-1)
}

fn key(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn hash_of(p: &Path) -> String {
    blake3::hash(&fs::read(p).unwrap()).to_hex().to_string()
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn captions_good_images_and_records_broken_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");
    let model = tiny_model(&root, 1);

    let mut daemon = watch_cmd(&folder, &db, &model, &log, &[]).spawn().unwrap();
    wait_started(&mut daemon, &db, &log);

    // Good images, the same bytes under a second name in a new subfolder, broken files, and
    // files the globs leave out.
    for name in ["red_circle.png", "blue_square.jpg", "grey_triangle.png"] {
        fs::copy(fixture(name), folder.join(name)).unwrap();
    }
    fs::create_dir_all(folder.join("sub/dir")).unwrap();
    fs::copy(
        fixture("red_circle.png"),
        folder.join("sub/dir/red_copy.png"),
    )
    .unwrap();
    fs::copy(fixture("truncated.jpg"), folder.join("truncated.jpg")).unwrap();
    fs::copy(fixture("not_an_image.jpg"), folder.join("not_an_image.jpg")).unwrap();
    fs::write(folder.join("empty.png"), b"").unwrap();
    fs::write(folder.join("bomb.png"), png_bomb()).unwrap();
    fs::write(folder.join(".hidden.png"), png(8, 8, 1)).unwrap();
    fs::write(folder.join("notes.txt"), b"not watched").unwrap();

    let good = [
        "red_circle.png",
        "blue_square.jpg",
        "grey_triangle.png",
        "sub/dir/red_copy.png",
    ];
    let bad = ["truncated.jpg", "not_an_image.jpg", "empty.png", "bomb.png"];
    wait_for(
        "all eight images to settle",
        Duration::from_secs(60),
        &log,
        || {
            let rows = images(&db);
            good.iter().all(|n| {
                rows.get(&key(&folder.join(n)))
                    .is_some_and(|r| r.status == "done")
            }) && bad.iter().all(|n| {
                rows.get(&key(&folder.join(n)))
                    .is_some_and(|r| r.status == "failed")
            })
        },
    );
    let rows = images(&db);
    assert_eq!(rows.len(), 8, "only watched files get rows: {rows:?}");
    for name in good {
        let row = &rows[&key(&folder.join(name))];
        assert_eq!(
            row.hash.as_deref(),
            Some(hash_of(&folder.join(name)).as_str())
        );
    }
    // The copy shares the original's caption: three contents, three captions.
    assert_eq!(
        rows[&key(&folder.join("red_circle.png"))].hash,
        rows[&key(&folder.join("sub/dir/red_copy.png"))].hash
    );
    assert_eq!(count(&db, "SELECT count(*) FROM captions"), 3);
    assert_eq!(count(&db, "SELECT count(*) FROM attention"), 3);
    for (name, expect) in [
        ("truncated.jpg", ""),
        ("not_an_image.jpg", "not a recognised image format"),
        ("empty.png", "empty"),
        ("bomb.png", "decompression bomb"),
    ] {
        let row = &rows[&key(&folder.join(name))];
        let error = row.error.as_deref().unwrap_or_default();
        assert!(
            error.contains(name) && error.contains(expect),
            "{name}: {error}"
        );
        assert_eq!(row.attempts, 1, "{name}");
    }

    // status and query run beside the daemon (read-only).
    let (code, out, err) = output(gaze().args(["status", "--json", "--db"]).arg(&db));
    assert_eq!(code, Some(0), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["by_status"]["done"], 4, "{out}");
    assert_eq!(status["by_status"]["failed"], 4, "{out}");
    assert_eq!(status["daemon_running"], true, "{out}");
    assert_eq!(status["active_model"]["name"], "tiny-1", "{out}");
    let (code, out, _) = output(gaze().args(["status", "--db"]).arg(&db));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("backlog:") && out.contains("images/s"),
        "{out}"
    );

    let red = folder.join("red_circle.png");
    let (code, out, err) = output(
        gaze()
            .args(["query", "--format", "json", "--db"])
            .arg(&db)
            .arg("--path")
            .arg(&red),
    );
    assert_eq!(code, Some(0), "{err}");
    let found: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["model"], "tiny-1");
    assert!(found[0]["score"].as_f64().unwrap() < 0.0);
    let caption = found[0]["caption"].as_str().unwrap().to_string();

    if let Some(word) = caption.split_whitespace().next() {
        let (code, out, err) = output(
            gaze()
                .args(["query", "--format", "csv", "--db"])
                .arg(&db)
                .args(["--search", word]),
        );
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.starts_with("image_id,path,status,caption,model,score"),
            "{out}"
        );
        assert!(
            out.contains(&key(&red)) && out.contains(&key(&folder.join("sub/dir/red_copy.png")))
        );
    }
    let (code, _, err) = output(
        gaze()
            .args(["query", "--db"])
            .arg(&db)
            .args(["--search", "zebra"]),
    );
    assert_eq!(code, Some(1), "no caption says zebra: {err}");
    let (code, out, _) = output(gaze().args(["query", "--failed", "--db"]).arg(&db));
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 5, "header and four failures:\n{out}");
    assert!(out.contains("decompression bomb"), "{out}");
    let (code, out, _) = output(gaze().args(["query", "--recent", "2", "--db"]).arg(&db));
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 3, "{out}");

    let picture = root.join("red.attention.png");
    let (code, _, err) = output(
        gaze()
            .args(["query", "--db"])
            .arg(&db)
            .arg("--path")
            .arg(&red)
            .arg("--attention-png")
            .arg(&picture),
    );
    assert_eq!(code, Some(0), "{err}");
    let drawn = image::open(&picture).unwrap();
    let words = found[0]["caption"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .count();
    assert!(drawn.width() > 336 && drawn.height() > 336, "{words} words");

    // A file modified in place is captioned again; a deleted one is marked gone, its caption
    // kept.
    let blue = folder.join("blue_square.jpg");
    fs::write(&blue, png(50, 40, 7)).unwrap();
    let grey = folder.join("grey_triangle.png");
    fs::remove_file(&grey).unwrap();
    wait_for(
        "the change and the deletion",
        Duration::from_secs(60),
        &log,
        || {
            let rows = images(&db);
            rows.get(&key(&grey)).is_some_and(|r| r.status == "gone")
                && rows.get(&key(&blue)).is_some_and(|r| {
                    r.status == "done" && r.hash.as_deref() == Some(&hash_of(&blue))
                })
        },
    );
    assert_eq!(count(&db, "SELECT count(*) FROM captions"), 4);
    let gone_picture = root.join("grey.attention.png");
    let (code, _, err) = output(
        gaze()
            .args(["query", "--db"])
            .arg(&db)
            .arg("--path")
            .arg(&grey)
            .arg("--attention-png")
            .arg(&gone_picture),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("is gone"), "{err}");
    assert!(gone_picture.exists());

    // SIGTERM: finish what is in flight, exit 0.
    terminate(&daemon);
    let status = wait_exit(&mut daemon, Duration::from_secs(30), &log);
    assert_eq!(status.code(), Some(0), "{}", log_tail(&log));

    // Failures are retried at each start, up to max_attempts (3), then left alone until the
    // file changes. Nothing good is captioned twice.
    for attempt in 2..=3 {
        let status = run_once(&folder, &db, &model, &log);
        assert_eq!(status.code(), Some(2), "a run with failures exits 2");
        let rows = images(&db);
        assert_eq!(rows[&key(&folder.join("bomb.png"))].attempts, attempt);
    }
    let status = run_once(&folder, &db, &model, &log);
    assert_eq!(status.code(), Some(0), "no retries left, nothing failed");
    assert_eq!(images(&db)[&key(&folder.join("bomb.png"))].attempts, 3);
    fs::write(folder.join("truncated.jpg"), png(30, 30, 9)).unwrap();
    let status = run_once(&folder, &db, &model, &log);
    assert_eq!(status.code(), Some(0));
    let rows = images(&db);
    assert_eq!(rows[&key(&folder.join("truncated.jpg"))].status, "done");
    assert_eq!(count(&db, "SELECT count(*) FROM captions"), 5);
    assert_eq!(
        count(&db, "SELECT count(*) FROM (SELECT content_hash FROM captions GROUP BY content_hash, model_id HAVING count(*) > 1)"),
        0
    );
}

#[test]
fn sigkill_at_any_moment_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");
    let model = tiny_model(&root, 2);

    // Files keep arriving until the last kill, each written in two parts with a pause, as a
    // slow copy would.
    const AT_LEAST: u32 = 100;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let folder = folder.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut i = 0;
            while i < AT_LEAST || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let dir = folder.join(format!("d{}", i % 3));
                fs::create_dir_all(&dir).unwrap();
                let bytes = png(48, 40, 1000 + i);
                let mut f = File::create(dir.join(format!("img{i:04}.png"))).unwrap();
                let half = bytes.len() / 2;
                f.write_all(&bytes[..half]).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(15));
                f.write_all(&bytes[half..]).unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(35));
                i += 1;
            }
            i
        })
    };
    // Kill it at different moments: during start-up, and (whatever the machine's load) just
    // after a commit, a little later (mid-batch, mid-commit), while catching up.
    let mut kills = 0;
    let mut captions_after = vec![0];
    for (round, extra_ms) in [
        None,
        Some(0u64),
        Some(120),
        Some(40),
        Some(0),
        Some(250),
        Some(70),
    ]
    .into_iter()
    .enumerate()
    {
        let mut child = watch_cmd(&folder, &db, &model, &log, &[]).spawn().unwrap();
        match extra_ms {
            None => std::thread::sleep(Duration::from_millis(150)),
            Some(ms) => {
                let before = *captions_after.last().unwrap();
                wait_for("a commit", Duration::from_secs(60), &log, || {
                    assert!(child.try_wait().unwrap().is_none(), "{}", log_tail(&log));
                    count(&db, "SELECT count(*) FROM captions") > before
                });
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        if round == 3 {
            // One clean stop among the kills: finishes its batches and exits 0.
            terminate(&child);
            let status = wait_exit(&mut child, Duration::from_secs(30), &log);
            assert_eq!(status.code(), Some(0));
        } else {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
        }
        captions_after.push(count(&db, "SELECT count(*) FROM captions").max(0));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let files = producer.join().unwrap();
    eprintln!(
        "captions after each of the {kills} kills and 1 stop: {captions_after:?}; {files} files"
    );
    assert!(kills >= 5);

    let status = run_once(&folder, &db, &model, &log);
    assert_eq!(status.code(), Some(0), "{}", log_tail(&log));

    let conn = reader(&db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let rows = images(&db);
    let mut hashes = HashSet::new();
    for i in 0..files {
        let path = folder.join(format!("d{}/img{i:04}.png", i % 3));
        let row = rows
            .get(&key(&path))
            .unwrap_or_else(|| panic!("{} has no row", path.display()));
        assert_eq!(row.status, "done", "{}: {row:?}", path.display());
        assert_eq!(row.hash.as_deref(), Some(hash_of(&path).as_str()));
        hashes.insert(row.hash.clone().unwrap());
    }
    assert_eq!(hashes.len(), files as usize);
    // Exactly one caption per content for the one model, each with its attention.
    let captioned: i64 = conn
        .query_row(
            "SELECT count(DISTINCT content_hash) FROM captions WHERE model_id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let captions = count(&db, "SELECT count(*) FROM captions");
    assert_eq!(captioned, files as i64);
    assert_eq!(
        captions, files as i64,
        "no duplicates and no captions of partial files left over"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM attention"), captions);
}

#[test]
fn a_burst_of_5000_files_keeps_memory_bounded() {
    // The limit: far below what the burst would take if it were held in memory (5,000
    // decoded 3x256x256 float images are 3.9 GB), with room for the model, SQLite's cache and
    // the allocator.
    const LIMIT_MIB: u64 = 256;
    const FILES: u32 = 5000;
    // Every file is read, hashed, decoded and resized; only the first file of each content
    // runs the model (the rest share its caption), so the test takes seconds, not minutes.
    const CONTENTS: u32 = 100;
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");
    let model = tiny_model(&root, 3);

    let mut daemon = watch_cmd(
        &folder,
        &db,
        &model,
        &log,
        &[("--beam-size", "1"), ("--batch-size", "8")],
    )
    .spawn()
    .unwrap();
    let pid = daemon.id();
    let launched = Instant::now();
    wait_started(&mut daemon, &db, &log);
    let start_up = launched.elapsed();
    let pictures: Vec<Vec<u8>> = (0..CONTENTS).map(|i| png(24, 24, i)).collect();
    let started = Instant::now();
    let mut peak_kib = 0;
    for i in 0..FILES {
        fs::write(
            folder.join(format!("b{i:05}.png")),
            &pictures[(i % CONTENTS) as usize],
        )
        .unwrap();
        if i % 250 == 0 {
            peak_kib = peak_kib.max(vm_rss_kib(pid).unwrap_or(0));
        }
    }
    let written = started.elapsed();
    let mut done = 0;
    wait_for(
        "the burst to be captioned",
        Duration::from_secs(300),
        &log,
        || {
            peak_kib = peak_kib.max(vm_rss_kib(pid).unwrap_or(0));
            done = count(&db, "SELECT count(*) FROM images WHERE status = 'done'");
            assert!(
                peak_kib / 1024 < LIMIT_MIB,
                "VmRSS {} MiB is over {LIMIT_MIB} MiB with {done} of {FILES} files done",
                peak_kib / 1024
            );
            done == FILES as i64
        },
    );
    let elapsed = started.elapsed();
    let stopping = Instant::now();
    terminate(&daemon);
    let status = wait_exit(&mut daemon, Duration::from_secs(30), &log);
    assert_eq!(status.code(), Some(0));
    assert_eq!(count(&db, "SELECT count(*) FROM captions"), CONTENTS as i64);
    eprintln!(
        "burst: started in {start_up:.1?}; {FILES} files written in {written:.1?}, all committed \
         after {elapsed:.1?}; stopped in {:.1?}; peak VmRSS {} MiB",
        stopping.elapsed(),
        peak_kib / 1024
    );
    assert!(peak_kib > 0, "VmRSS was read");
    assert!(
        peak_kib / 1024 < LIMIT_MIB,
        "peak VmRSS {} MiB is over {LIMIT_MIB} MiB",
        peak_kib / 1024
    );
}

#[test]
fn migrations_upgrade_a_version_1_database_and_refuse_a_newer_one() {
    gaze::store::migrations().unwrap().validate().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let log = root.join("watch.log");
    let model = tiny_model(&root, 4);
    let photo = folder.join("photo.png");
    fs::write(&photo, png(40, 40, 77)).unwrap();

    // A database as the first schema left it: one model, one captioned image.
    let db = root.join("old.db");
    {
        let mut conn = Connection::open(&db).unwrap();
        gaze::store::migrations()
            .unwrap()
            .to_version(&mut conn, 1)
            .unwrap();
        conn.execute(
            "INSERT INTO models (content_hash, path, name, config, created_at, active)
             VALUES ('old', '/models/old.safetensors', 'old-model', '{}', 1, 1)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO images (path, content_hash, size, mtime_ns, status, first_seen,
                                 updated_at, done_at)
             VALUES (?1, ?2, 0, 0, 'done', 1, 1, 1)",
            rusqlite::params![key(&photo), hash_of(&photo)],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO captions (content_hash, model_id, text, tokens, token_ids, score,
                                   finished, beam_size, created_at)
             VALUES (?1, 1, 'a zebra under a tree', '[]', '[]', -3.5, 1, 5, 1)",
            [hash_of(&photo)],
        )
        .unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }
    // Read-only commands do not upgrade; they say what to do.
    let (code, _, err) = output(gaze().args(["query", "--recent", "5", "--db"]).arg(&db));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("schema version 1") && err.contains("gaze watch"),
        "{err}"
    );

    let status = run_once(&folder, &db, &model, &log);
    assert_eq!(status.code(), Some(0), "{}", log_tail(&log));
    assert_eq!(
        count(&db, "PRAGMA user_version"),
        gaze::store::supported_version() as i64
    );
    // The old caption is found by the new full-text index, and the new model captioned the
    // image too: one caption per model.
    let (code, out, err) = output(
        gaze()
            .args(["query", "--format", "json", "--db"])
            .arg(&db)
            .args(["--search", "zebras"]),
    );
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["model"], "old-model");
    assert_eq!(rows[0]["path"], key(&photo));
    assert_eq!(count(&db, "SELECT count(*) FROM captions"), 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM models WHERE active = 1 AND name = 'tiny-4'"
        ),
        1
    );

    // A database from a newer gaze is refused, by the daemon and by queries.
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let status = run_once(&folder, &db, &model, &log);
    assert_eq!(status.code(), Some(2));
    let logged = log_tail(&log);
    assert!(
        logged.contains("schema version 99") && logged.contains("newer"),
        "{logged}"
    );
    let (code, _, err) = output(gaze().args(["query", "--recent", "5", "--db"]).arg(&db));
    assert_eq!(code, Some(2));
    assert!(err.contains("newer"), "{err}");

    // Settings: a bad environment value is named; flags override the environment.
    let (code, _, err) = output(
        gaze()
            .args(["watch", "--exit-when-idle", "--db"])
            .arg(root.join("new.db"))
            .arg("--model")
            .arg(&model)
            .arg(&folder)
            .env("GAZE_BATCH_SIZE", "many"),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("GAZE_BATCH_SIZE"), "{err}");
    let (code, _, err) = output(
        gaze()
            .args(["watch", "--exit-when-idle", "--batch-size", "2", "--db"])
            .arg(root.join("new.db"))
            .arg("--model")
            .arg(&model)
            .arg(&folder)
            .env("GAZE_BATCH_SIZE", "0"),
    );
    assert_eq!(code, Some(0), "the flag wins over GAZE_BATCH_SIZE=0: {err}");
}

/// (caption count, model ids) per content hash of the images under `folder`.
fn captions_by_content(db: &Path) -> HashMap<String, Vec<i64>> {
    let conn = reader(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT content_hash, model_id FROM captions ORDER BY model_id")
        .unwrap();
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
    {
        let (hash, model) = row.unwrap();
        out.entry(hash).or_default().push(model);
    }
    out
}

#[test]
fn scheduled_retraining_promotes_then_rejects_and_swaps_between_batches() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");

    // Tiny captioned data, prepared as the tutorial does, and a random model with its words.
    let RetrainData {
        synth,
        prepared,
        base,
        m0,
    } = retrain_data(&root, 5);
    let mut synth_images: Vec<PathBuf> = fs::read_dir(&synth.image_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    synth_images.sort();
    let mut drop_images = |n: usize, tag: &str| -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let src = synth_images.pop().unwrap();
                let dst = folder.join(format!("{tag}-{i}.jpg"));
                fs::copy(&src, &dst).unwrap();
                dst
            })
            .collect()
    };
    let done = |paths: &[PathBuf]| {
        let imgs = images(&db);
        paths
            .iter()
            .all(|p| imgs.get(&key(p)).is_some_and(|r| r.status == "done"))
    };

    // Phase 1: a permissive rule (any candidate wins), recaption = "all".
    let before = drop_images(4, "before");
    let config = retrain_config(&root, "permissive.toml", -1000.0, &prepared, &base);
    let mut daemon = watch_cmd(
        &folder,
        &db,
        &m0,
        &log,
        &[("--config", config.to_str().unwrap())],
    )
    .spawn()
    .unwrap();
    wait_started(&mut daemon, &db, &log);
    wait_for("the first images", Duration::from_secs(60), &log, || {
        done(&before)
    });
    let m0_id = count(&db, "SELECT id FROM models WHERE name = 'm0'");
    wait_for("a promotion", Duration::from_secs(120), &log, || {
        count(
            &db,
            "SELECT count(*) FROM retrain_runs WHERE status = 'promoted'",
        ) == 1
    });
    let m1_id = count(&db, "SELECT id FROM models WHERE active = 1");
    assert_ne!(m1_id, m0_id);
    // recaption = "all": every stored image gets a caption by the new model, in the background.
    wait_for("recaptioning", Duration::from_secs(60), &log, || {
        let caps = captions_by_content(&db);
        before
            .iter()
            .all(|p| caps.get(&hash_of(p)).is_some_and(|m| m.contains(&m1_id)))
    });
    let after = drop_images(3, "after");
    wait_for(
        "images after the swap",
        Duration::from_secs(60),
        &log,
        || done(&after),
    );
    terminate(&daemon);
    assert_eq!(
        wait_exit(&mut daemon, Duration::from_secs(60), &log).code(),
        Some(0)
    );

    let caps = captions_by_content(&db);
    for p in &before {
        assert_eq!(caps[&hash_of(p)], vec![m0_id, m1_id], "{}", p.display());
    }
    for p in &after {
        assert_eq!(caps[&hash_of(p)], vec![m1_id], "{}", p.display());
    }

    // Phase 2: a strict rule (no candidate can win). The restarted daemon keeps the promoted
    // model although it is given m0 again.
    let config = retrain_config(&root, "strict.toml", 1000.0, &prepared, &base);
    let mut daemon = watch_cmd(
        &folder,
        &db,
        &m0,
        &log,
        &[("--config", config.to_str().unwrap())],
    )
    .spawn()
    .unwrap();
    wait_for("a rejection", Duration::from_secs(120), &log, || {
        if let Some(status) = daemon.try_wait().unwrap() {
            panic!("gaze exited early with {status}; log:\n{}", log_tail(&log));
        }
        count(
            &db,
            "SELECT count(*) FROM retrain_runs WHERE status = 'rejected'",
        ) == 1
    });
    assert_eq!(count(&db, "SELECT id FROM models WHERE active = 1"), m1_id);
    let late = drop_images(2, "late");
    wait_for(
        "images after the rejection",
        Duration::from_secs(60),
        &log,
        || done(&late),
    );
    // Unchanged data and settings: no further runs on the next ticks.
    std::thread::sleep(Duration::from_secs(4));
    terminate(&daemon);
    assert_eq!(
        wait_exit(&mut daemon, Duration::from_secs(60), &log).code(),
        Some(0)
    );

    let caps = captions_by_content(&db);
    for p in &late {
        assert_eq!(caps[&hash_of(p)], vec![m1_id], "{}", p.display());
    }
    // None lost, none duplicated.
    assert_eq!(caps.len(), before.len() + after.len() + late.len());
    assert_eq!(
        count(&db, "SELECT count(*) FROM captions"),
        count(
            &db,
            "SELECT count(*) FROM (SELECT DISTINCT content_hash, model_id FROM captions)"
        )
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM images WHERE status != 'done'"),
        0
    );

    // The registry: both runs with their metrics.
    let (code, out, err) = output(
        gaze()
            .args(["models", "list", "--format", "json", "--db"])
            .arg(&db),
    );
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["rejected", "promoted"], "{out}");
    for r in runs {
        assert!(r["candidate_metrics"]["corpus"]["cider_d"].is_f64(), "{r}");
        assert!(r["parent_metrics"]["corpus"]["cider_d"].is_f64(), "{r}");
    }
    assert_eq!(runs[1]["parent_model_id"], m0_id);
    assert_eq!(runs[0]["parent_model_id"], m1_id);
    let m2_id = runs[0]["candidate_model_id"].as_i64().unwrap();
    let models = v["models"].as_array().unwrap();
    let by_id = |id: i64| models.iter().find(|m| m["id"] == id).unwrap();
    assert_eq!(by_id(m1_id)["status"], "ready");
    assert_eq!(by_id(m1_id)["active"], true);
    assert_eq!(by_id(m1_id)["parent_id"], m0_id);
    assert_eq!(by_id(m2_id)["status"], "rejected");
    assert_eq!(by_id(m2_id)["captions"], 0);
    assert!(by_id(m2_id)["metrics"]["corpus"]["cider_d"].is_f64());
    let (code, table, _) = output(gaze().args(["models", "list", "--db"]).arg(&db));
    assert_eq!(code, Some(0));
    assert!(
        table.contains("promoted") && table.contains("rejected"),
        "{table}"
    );

    // Rollback and activate by hand.
    let (code, out, err) = output(gaze().args(["models", "rollback", "--db"]).arg(&db));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("model {m0_id} is active again")),
        "{out}"
    );
    let (code, _, err) = output(
        gaze()
            .args(["models", "activate", &m1_id.to_string(), "--db"])
            .arg(&db),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(count(&db, "SELECT id FROM models WHERE active = 1"), m1_id);
    eprintln!("retraining test took {:.1?}", started.elapsed());
}

fn mkfifo(path: &Path) {
    let out = Command::new("mkfifo").arg(path).output().unwrap();
    assert!(out.status.success(), "mkfifo {}", path.display());
}

/// Puts `make` (something that is not a regular file) at `path` in one rename, as an attacker
/// or an odd program would swap a queued file.
fn swap_in(path: &Path, make: impl FnOnce(&Path)) {
    let tmp = path.with_extension("swap.tmp");
    make(&tmp);
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn pipes_devices_and_odd_names_never_hang_the_daemon_and_are_all_recorded() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");
    let model = tiny_model(&root, 7);

    // Sitting in the folder from the start: a pipe and a link to an endless device (with
    // links followed, so the link is looked through), a good image, and a good image whose
    // name is not UTF-8.
    fs::write(folder.join("good.png"), png(40, 30, 1)).unwrap();
    mkfifo(&folder.join("pipe.jpg"));
    std::os::unix::fs::symlink("/dev/zero", folder.join("zero.png")).unwrap();
    let odd_name = std::ffi::OsStr::from_bytes(b"caf\xE9 \xFF.png");
    let odd = folder.join(odd_name);
    fs::write(&odd, png(32, 32, 2)).unwrap();

    let mut daemon = watch_cmd(
        &folder,
        &db,
        &model,
        &log,
        &[("--stable-ms", "150"), ("--decode-threads", "1")],
    )
    .env("GAZE_FOLLOW_SYMLINKS", "true")
    .spawn()
    .unwrap();
    wait_started(&mut daemon, &db, &log);

    // Files that are swapped for a pipe or an endless device around the time they settle: some
    // are queued as regular files and find a pipe or device when read.
    let mut swapped = Vec::new();
    for i in 0..12u32 {
        let p = folder.join(format!("swap-{i}.png"));
        fs::write(&p, png(24, 24, 100 + i)).unwrap();
        std::thread::sleep(Duration::from_millis(40 * (i as u64 % 6)));
        if i % 2 == 0 {
            swap_in(&p, mkfifo);
        } else {
            swap_in(&p, |t| std::os::unix::fs::symlink("/dev/zero", t).unwrap());
        }
        swapped.push(p);
    }
    fs::write(folder.join("late.png"), png(20, 20, 3)).unwrap();

    let start = Instant::now();
    wait_for("the good images", Duration::from_secs(60), &log, || {
        let rows = images(&db);
        [folder.join("good.png"), folder.join("late.png")]
            .iter()
            .all(|p| rows.get(&key(p)).is_some_and(|r| r.status == "done"))
    });
    // Everything settles: nothing stays pending, and the daemon still answers SIGTERM at once.
    wait_for("no pending image", Duration::from_secs(30), &log, || {
        count(&db, "SELECT count(*) FROM images WHERE status = 'pending'") == 0
    });
    terminate(&daemon);
    let status = wait_exit(&mut daemon, Duration::from_secs(20), &log);
    assert!(status.success(), "{status}; log:\n{}", log_tail(&log));
    assert!(start.elapsed() < Duration::from_secs(90));

    let rows = images(&db);
    let skipped: HashSet<String> = {
        let conn = reader(&db).unwrap();
        let mut stmt = conn.prepare("SELECT path FROM skipped_files").unwrap();
        let paths = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        paths
    };
    assert!(
        skipped.contains(&key(&folder.join("pipe.jpg"))),
        "{skipped:?}"
    );
    assert!(
        skipped.contains(&key(&folder.join("zero.png"))),
        "{skipped:?}"
    );
    for p in &swapped {
        let k = key(p);
        // Either seen as what it became (skipped), or read after the swap and failed with a
        // reason; never pending, never done from a pipe or device.
        match rows.get(&k) {
            Some(r) if r.status == "failed" => {
                let e = r.error.as_deref().unwrap_or("");
                assert!(
                    e.contains("named pipe") || e.contains("character device"),
                    "{k}: {e}"
                );
            }
            Some(r) if r.status == "pending" => panic!("{k} is still pending"),
            Some(r) if r.status == "done" => {
                // Captioned while it was still the PNG (read before the swap).
                assert!(r.hash.is_some(), "{k}");
            }
            _ => assert!(skipped.contains(&k), "{k} is neither recorded nor skipped"),
        }
    }

    // The name that is not UTF-8 is captioned and stored losslessly.
    let mut escaped = String::from("bytes:");
    escaped.push_str(&key(&folder));
    escaped.push_str("/caf\\xE9 \\xFF.png");
    let row = rows
        .get(&escaped)
        .unwrap_or_else(|| panic!("no row {escaped}: {rows:?}"));
    assert_eq!(row.status, "done", "{row:?}");
    assert_eq!(row.hash.as_deref(), Some(hash_of(&odd).as_str()));
    let (code, stdout, stderr) = output(
        gaze()
            .args(["query", "--format", "json", "--db"])
            .arg(&db)
            .arg("--path")
            .arg(&odd),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("caf\\\\xE9"), "{stdout}");

    // gaze status counts the skipped entries.
    let (code, stdout, stderr) = output(gaze().args(["status", "--json", "--db"]).arg(&db));
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["skipped"].as_i64().unwrap() >= 2, "{stdout}");

    // A restart finds nothing to do and exits at once: nothing was left pending.
    let status = run_once(&folder, &db, &model, &log);
    assert!(status.success());
    assert_eq!(
        count(&db, "SELECT count(*) FROM images WHERE status = 'pending'"),
        0
    );
}

#[test]
fn a_second_daemon_on_the_same_database_under_another_name_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    fs::create_dir(root.join("elsewhere")).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");
    let model = tiny_model(&root, 3);
    fs::write(folder.join("a.png"), png(30, 30, 5)).unwrap();

    let mut first = watch_cmd(&folder, &db, &model, &log, &[]).spawn().unwrap();
    wait_started(&mut first, &db, &log);
    let hard = root.join("elsewhere/hard.db");
    fs::hard_link(&db, &hard).unwrap();
    let soft = root.join("soft.db");
    std::os::unix::fs::symlink(&db, &soft).unwrap();
    for (name, other) in [
        ("the same path", &db),
        ("a hard link", &hard),
        ("a symlink", &soft),
    ] {
        let second_log = root.join("second.log");
        let mut second = watch_cmd(&folder, other, &model, &second_log, &[])
            .spawn()
            .unwrap();
        let status = wait_exit(&mut second, Duration::from_secs(30), &second_log);
        let text = fs::read_to_string(&second_log).unwrap();
        assert!(
            !status.success(),
            "{name}: a second daemon ran; log:\n{text}"
        );
        assert!(
            text.contains("already using this database"),
            "{name}: {text}"
        );
    }
    assert!(!root.join("elsewhere/hard.db-wal").exists());
    // `gaze status` sees the daemon through its names. (Not through the hard link: the
    // daemon's commits sit in `gaze.db-wal`, which SQLite only finds beside the name it used.)
    for other in [&db, &soft] {
        let (code, stdout, stderr) = output(gaze().args(["status", "--json", "--db"]).arg(other));
        assert_eq!(code, Some(0), "{}: {stderr}", other.display());
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["daemon_running"], true, "{}", other.display());
    }
    terminate(&first);
    assert!(wait_exit(&mut first, Duration::from_secs(30), &log).success());
    let conn = Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (_, stdout, _) = output(gaze().args(["status", "--json", "--db"]).arg(&soft));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["daemon_running"], false);
    assert!(!gaze::daemon::is_running(&hard));
}

/// Runs `cmd` as an unprivileged user when the tests run as root (root ignores file
/// permissions, so a read-only folder would not be read-only for it).
fn unprivileged(mut cmd: Command) -> Command {
    if unsafe { libc::geteuid() } != 0 {
        return cmd;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    wrapped.arg(cmd.get_program());
    wrapped.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    cmd = wrapped;
    cmd
}

#[test]
fn status_and_query_read_a_copy_in_a_read_only_folder() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");
    let model = tiny_model(&root, 4);
    for i in 0..3 {
        fs::write(folder.join(format!("{i}.png")), png(30, 30, 40 + i)).unwrap();
    }
    assert!(run_once(&folder, &db, &model, &log).success());
    // A stopped daemon leaves one complete file: its WAL is folded back in.
    assert!(
        !root.join("gaze.db-wal").exists(),
        "the -wal file was left behind"
    );

    // A backup copy in a folder nobody may write, as a read-only share would be.
    let backup = root.join("backup");
    fs::create_dir(&backup).unwrap();
    fs::copy(&db, backup.join("gaze.db")).unwrap();
    fs::set_permissions(backup.join("gaze.db"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(&backup, fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = backup.join("gaze.db");

    // The binary may lie under a folder the unprivileged user cannot enter.
    let bin = root.join("gaze-bin");
    fs::copy(BIN, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let mut status = Command::new(&bin);
    status.args(["status", "--json", "--db"]).arg(&copy);
    let (code, stdout, stderr) = output(&mut unprivileged(status));
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["images"], 3, "{stdout}");

    let mut query = Command::new(&bin);
    query
        .args(["query", "--format", "json", "--recent", "3", "--db"])
        .arg(&copy);
    let (code, stdout, stderr) = output(&mut unprivileged(query));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("\"image_id\"").count(), 3, "{stdout}");
    assert!(!backup.join("gaze.db-shm").exists());
    fs::set_permissions(&backup, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Whoever activates a model outside a running daemon (`gaze retrain --now`, `gaze models
/// activate`, `gaze models rollback`) queues the new model's work as the recaption policy
/// says, in the same transaction; the next `gaze watch` then captions it with that model.
#[test]
fn activations_outside_the_daemon_queue_the_new_models_work() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let folder = root.join("in");
    fs::create_dir(&folder).unwrap();
    let db = root.join("gaze.db");
    let log = root.join("watch.log");
    let RetrainData {
        prepared, base, m0, ..
    } = retrain_data(&root, 9);
    let mut next = 0u32;
    let mut add_images = |n: usize| -> Vec<PathBuf> {
        (0..n)
            .map(|_| {
                next += 1;
                let p = folder.join(format!("img-{next}.png"));
                fs::write(&p, png(48, 40, 500 + next)).unwrap();
                p
            })
            .collect()
    };
    let captioned_by = |paths: &[PathBuf], model: i64| -> usize {
        let caps = captions_by_content(&db);
        paths
            .iter()
            .filter(|p| caps.get(&hash_of(p)).is_some_and(|m| m.contains(&model)))
            .count()
    };
    let pending = || count(&db, "SELECT count(*) FROM images WHERE status = 'pending'");
    let run = |cmd: &mut Command| {
        let (code, stdout, stderr) = output(cmd);
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        stdout
    };

    let first = add_images(4);
    assert!(run_once(&folder, &db, &m0, &log).success());
    let m0_id = count(&db, "SELECT id FROM models WHERE active = 1");
    assert_eq!(captioned_by(&first, m0_id), 4);

    // `gaze retrain --now` promotes a candidate (any candidate wins); recaption = "all".
    let config = retrain_config(&root, "permissive.toml", -1000.0, &prepared, &base);
    run(gaze()
        .args(["retrain", "--now", "--db"])
        .arg(&db)
        .arg("--config")
        .arg(&config));
    let m1_id = count(&db, "SELECT id FROM models WHERE active = 1");
    assert_ne!(m1_id, m0_id, "no promotion");
    assert_eq!(
        pending(),
        4,
        "the promotion queues every image for the new model"
    );
    // A restarted daemon (given the old model) keeps the registry's model and captions them.
    assert!(run_once(&folder, &db, &m0, &log).success());
    assert_eq!(captioned_by(&first, m1_id), 4, "log:\n{}", log_tail(&log));
    assert_eq!(pending(), 0);

    // `gaze models activate` back to m0 after new images arrived under m1.
    let second = add_images(3);
    assert!(run_once(&folder, &db, &m0, &log).success());
    assert_eq!(captioned_by(&second, m1_id), 3);
    assert_eq!(captioned_by(&second, m0_id), 0);
    let out = run(gaze()
        .args(["models", "activate", "--recaption", "all", "--db"])
        .arg(&db)
        .arg(m0_id.to_string()));
    assert!(out.contains("3 image(s) queued again"), "{out}");
    assert_eq!(pending(), 3);
    assert!(run_once(&folder, &db, &m0, &log).success());
    assert_eq!(captioned_by(&second, m0_id), 3);

    // `gaze models rollback` to m1 after more images arrived under m0.
    let third = add_images(2);
    assert!(run_once(&folder, &db, &m0, &log).success());
    assert_eq!(captioned_by(&third, m1_id), 0);
    let out = run(gaze()
        .args(["models", "rollback", "--recaption", "all", "--db"])
        .arg(&db));
    assert!(out.contains("2 image(s) queued again"), "{out}");
    assert_eq!(count(&db, "SELECT id FROM models WHERE active = 1"), m1_id);
    assert!(run_once(&folder, &db, &m0, &log).success());
    let all: Vec<PathBuf> = first.iter().chain(&second).chain(&third).cloned().collect();
    assert_eq!(captioned_by(&all, m1_id), all.len());

    // The policy "none" queues nothing.
    let out = run(gaze()
        .args(["models", "activate", "--recaption", "none", "--db"])
        .arg(&db)
        .arg(m0_id.to_string()));
    assert!(out.contains("0 image(s) queued again"), "{out}");
    assert_eq!(pending(), 0);
}
