//! `gaze store copy` and `store::copy::copy`: a library built through the store's interface goes
//! SQLite -> PostgreSQL -> SQLite and comes back row for row, searchable, with its attention
//! maps; a non-empty target is refused unless replaced; PostgreSQL's identities move past the
//! copied ids; a copy that fails leaves its target as it was.

mod common;

use std::path::Path;
use std::process::Command;

use common::pg::database_or_skip;
use gaze::store::api::{
    CaptionStore, FailedImage, ModelStatus, NewCaption, NewModel, NewRun, ReadImage, Recaption,
    RunEnd, RunStatus, Selection,
};
use gaze::store::copy::{copy, CopyError, CopyOptions};
use gaze::store::{self, Location};
use rusqlite::types::Value as SqlValue;
use serde_json::json;

const TABLES: &[&str] = &[
    "models",
    "model_activations",
    "retrain_runs",
    "images",
    "captions",
    "attention",
    "skipped_files",
];

const GRID: usize = 4;

/// Caption texts, some of them about dogs ("dog" and "dogs" both match a search for "dogs").
const TEXTS: &[&str] = &[
    "a dog runs on the grass",
    "two dogs play with a ball",
    "a cat sleeps on a sofa",
    "a man rides a bicycle",
    "a brown dog catches a frisbee",
    "un café près de la fenêtre",
];

fn model<'a>(hash: &'a str, name: &'a str) -> NewModel<'a> {
    NewModel {
        content_hash: hash,
        path: "/models/m.safetensors",
        name,
        config_json: r#"{"embed_dim":512,"attention_dim":512}"#,
        provenance_json: r#"{"source":"test"}"#,
    }
}

/// Attention maps of `steps` steps on a GRID x GRID grid that differ per caption.
fn alphas(seed: usize, steps: usize) -> Vec<Vec<f32>> {
    (0..steps)
        .map(|s| {
            let raw: Vec<f32> = (0..GRID * GRID)
                .map(|k| ((seed * 31 + s * 7 + k * 13) % 17) as f32 + 0.5)
                .collect();
            let sum: f32 = raw.iter().sum();
            raw.into_iter().map(|v| v / sum).collect()
        })
        .collect()
}

/// A library with every kind of row: a registry with activations, a rollback, a trained model
/// and one whose parent has a higher id; runs in every state; images pending, done, failed and
/// gone; captions by two models with attention; a skipped entry.
fn build_library(store: &mut dyn CaptionStore, images: usize) {
    let t0 = 1_700_000_000.25;
    let m1 = store.register_model(&model("h1", "first"), t0).unwrap().id;
    store
        .activate(m1, "start", Recaption::None, t0 + 1.0)
        .unwrap();
    let m2 = store
        .register_model(&model("h2", "second"), t0 + 2.0)
        .unwrap()
        .id;
    let m3 = store
        .register_model(&model("h3", "third"), t0 + 3.0)
        .unwrap()
        .id;
    store.set_trained(m2, Some(m1), ModelStatus::Ready).unwrap();
    // A parent with a higher id than its child: copying must not depend on id order.
    store.set_trained(m1, Some(m3), ModelStatus::Ready).unwrap();
    store.set_status(m3, ModelStatus::Rejected).unwrap();
    store
        .set_metrics(m2, &json!({"bleu4": 0.25, "cider": 0.75}))
        .unwrap();

    let rule = json!({"metric": "bleu4", "margin": 0.01});
    let promoted = store
        .start_run(
            &NewRun {
                trigger: "schedule",
                parent: Some(m1),
                rule: &rule,
                fingerprint: "fp-1",
            },
            t0 + 4.0,
        )
        .unwrap();
    store.set_run_log_path(promoted, "/logs/run-1.log").unwrap();
    store
        .finish_run(
            promoted,
            &RunEnd {
                status: RunStatus::Promoted,
                candidate: Some(m2),
                parent_metrics: Some(&json!({"bleu4": 0.2})),
                candidate_metrics: Some(&json!({"bleu4": 0.25})),
                log: "trained 3 epochs\nscored\n",
                error: None,
            },
            t0 + 5.0,
        )
        .unwrap();
    let failed = store
        .start_run(
            &NewRun {
                trigger: "manual",
                parent: Some(m2),
                rule: &rule,
                fingerprint: "fp-2",
            },
            t0 + 6.0,
        )
        .unwrap();
    store
        .finish_run(failed, &RunEnd::failed("", "out of memory"), t0 + 7.0)
        .unwrap();
    store
        .start_run(
            &NewRun {
                trigger: "schedule",
                parent: None,
                rule: &rule,
                fingerprint: "fp-3",
            },
            t0 + 8.0,
        )
        .unwrap();

    store
        .activate(m2, "retrain", Recaption::None, t0 + 9.0)
        .unwrap();
    let mut now = t0 + 10.0;
    for i in 0..images {
        now += 0.5;
        let path = format!("/photos/ålbum {}/img_{i:04}.jpg", i % 7);
        let (size, mtime) = (1000 + i as i64, 1_600_000_000_000_000_000 + i as i64);
        store.mark_pending(&path, size, mtime, now).unwrap();
        match i % 10 {
            // Left pending.
            0 => {}
            1 => {
                let failed = FailedImage {
                    path: &path,
                    size,
                    mtime_ns: mtime,
                    content_hash: (i % 20 == 1).then_some("badbytes"),
                    error: "not an image: unexpected end of file",
                };
                store.mark_failed(&failed, now).unwrap();
            }
            _ => {
                let hash = format!("{:064x}", i / 2);
                let text = TEXTS[i % TEXTS.len()];
                let mut tokens = vec!["<start>".to_string()];
                tokens.extend(text.split(' ').map(String::from));
                tokens.push("<end>".to_string());
                let ids: Vec<u32> = (0..tokens.len() as u32).collect();
                let maps = alphas(i, tokens.len() - 1);
                let mut tx = store.begin().unwrap();
                tx.insert_caption(
                    &NewCaption {
                        content_hash: &hash,
                        model_id: if i % 3 == 0 { m1 } else { m2 },
                        text,
                        tokens: &tokens,
                        token_ids: &ids,
                        score: -(i as f32) / 7.0,
                        finished: i % 9 != 0,
                        beam_size: 3,
                        alphas: &maps,
                        grid: GRID,
                    },
                    now,
                )
                .unwrap();
                tx.mark_done(
                    &ReadImage {
                        path: &path,
                        size,
                        mtime_ns: mtime,
                        content_hash: &hash,
                        width: 640,
                        height: 480,
                    },
                    now,
                )
                .unwrap();
                tx.commit().unwrap();
            }
        }
    }
    store
        .mark_gone("/photos/ålbum 3/img_0003.jpg", now + 1.0)
        .unwrap();
    store
        .mark_skipped("/photos/a pipe", "a named pipe (FIFO)", now + 2.0)
        .unwrap();
    store
        .mark_skipped("/photos/tty", "a character device", now + 3.0)
        .unwrap();
    // Back to the first model: a rollback in the history.
    store.rollback(Recaption::None, now + 4.0).unwrap();
}

fn sqlite_library(path: &Path, images: usize) {
    let mut s = store::open(&Location::Sqlite(path.to_path_buf())).unwrap();
    build_library(s.as_mut(), images);
}

/// Every row of every table of a SQLite file, in key order, as SQLite returns them.
fn dump(path: &Path) -> Vec<(String, Vec<Vec<SqlValue>>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    TABLES
        .iter()
        .map(|t| {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {t} ORDER BY 1"))
                .unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..n)
                        .map(|i| r.get::<_, SqlValue>(i))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            (t.to_string(), rows)
        })
        .collect()
}

fn pg_count(url: &str, table: &str) -> i64 {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

/// Search results in caption order (the backends rank equally good matches differently).
fn search(store: &dyn CaptionStore, words: &str) -> Vec<(i64, String, Option<String>, i64)> {
    let mut rows: Vec<_> = store
        .select(&Selection::Search(words.into()), 10_000)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.caption_id.unwrap(),
                r.path,
                r.caption,
                r.model_id.unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn caption_ids(path: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM captions ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn sqlite_to_postgres_to_sqlite_keeps_every_row() {
    let Some(url) = database_or_skip("sqlite_to_postgres_to_sqlite_keeps_every_row") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, c) = (dir.path().join("a.db"), dir.path().join("c.db"));
    sqlite_library(&a, 120);
    let (la, pg, lc) = (
        Location::Sqlite(a.clone()),
        Location::Postgres(url.clone()),
        Location::Sqlite(c.clone()),
    );

    let there = copy(&la, &pg, &CopyOptions::default()).unwrap();
    let back = copy(&pg, &lc, &CopyOptions::default()).unwrap();
    assert_eq!(there.tables, back.tables);
    let counts: std::collections::HashMap<_, _> = there.tables.iter().cloned().collect();
    assert_eq!(counts["models"], 3);
    assert_eq!(counts["retrain_runs"], 3);
    assert_eq!(counts["skipped_files"], 2);
    assert_eq!(counts["attention"], counts["captions"]);
    assert!(counts["captions"] > 50, "{there}");
    assert!(
        !counts.contains_key("workers"),
        "workers only go PostgreSQL to PostgreSQL"
    );
    assert!(there.to_string().contains("rows/s"), "{there}");

    // Every row of every table, every column, byte for byte.
    let (before, after) = (dump(&a), dump(&c));
    for ((table, rows_a), (_, rows_c)) in before.iter().zip(&after) {
        assert_eq!(rows_a.len(), rows_c.len(), "{table}");
        for (ra, rc) in rows_a.iter().zip(rows_c) {
            assert_eq!(ra, rc, "{table}");
        }
    }

    // PostgreSQL's own columns took their defaults.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE lease_token <> 0 OR lease_owner IS NOT NULL),
                    (SELECT count(*) FROM retrain_runs WHERE host <> '')
             FROM images",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
    let parent: Option<i64> = client
        .query_one("SELECT parent_id FROM models WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(parent, Some(3));
    drop(client);

    let sa = store::open_read_only(&la).unwrap();
    let sp = store::open_read_only(&pg).unwrap();
    let sc = store::open_read_only(&lc).unwrap();
    for words in ["dogs", "bicycle", "sofa"] {
        let found = search(sa.as_ref(), words);
        assert!(!found.is_empty(), "{words}");
        assert_eq!(found, search(sp.as_ref(), words), "{words}: PostgreSQL");
        assert_eq!(found, search(sc.as_ref(), words), "{words}: SQLite again");
    }
    // The full-text index of the SQLite copy is complete, not just non-empty.
    assert_eq!(
        sa.select(&Selection::Search("dogs".into()), 10_000)
            .unwrap(),
        sc.select(&Selection::Search("dogs".into()), 10_000)
            .unwrap()
    );
    for id in caption_ids(&a) {
        let att = sa
            .attention_of(id)
            .unwrap()
            .expect("every caption has attention");
        assert_eq!(att.grid, GRID);
        assert_eq!(Some(&att), sp.attention_of(id).unwrap().as_ref(), "{id}");
        assert_eq!(Some(&att), sc.attention_of(id).unwrap().as_ref(), "{id}");
    }
    assert_eq!(sa.list_models().unwrap(), sp.list_models().unwrap());
    assert_eq!(sa.list_models().unwrap(), sc.list_models().unwrap());
    assert_eq!(sa.list_runs(10).unwrap(), sp.list_runs(10).unwrap());
    assert_eq!(sa.list_runs(10).unwrap(), sc.list_runs(10).unwrap());
    assert_eq!(
        sa.active_model().unwrap().map(|m| m.id),
        sp.active_model().unwrap().map(|m| m.id)
    );
}

#[test]
fn a_non_empty_target_is_refused_unless_replaced() {
    let test = "a_non_empty_target_is_refused_unless_replaced";
    let (Some(url), Some(other)) = (database_or_skip(test), database_or_skip(test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    sqlite_library(&a, 30);
    sqlite_library(&b, 60);
    let (la, lb, pg) = (
        Location::Sqlite(a.clone()),
        Location::Sqlite(b.clone()),
        Location::Postgres(url.clone()),
    );
    copy(&lb, &pg, &CopyOptions::default()).unwrap();
    let images_b = pg_count(&url, "images");

    let err = copy(&la, &pg, &CopyOptions::default()).unwrap_err();
    let text = err.to_string();
    match &err {
        CopyError::TargetNotEmpty { target, counts } => {
            assert!(target.contains("127.0.0.1"), "{target}");
            assert!(
                counts.contains(&("images".to_string(), images_b as u64)),
                "{text}"
            );
            assert!(counts.contains(&("models".to_string(), 3)), "{text}");
        }
        other => panic!("expected TargetNotEmpty, got {other}"),
    }
    assert!(
        text.contains("not empty") && text.contains("--replace"),
        "{text}"
    );
    assert_eq!(
        pg_count(&url, "images"),
        images_b,
        "a refusal changes nothing"
    );

    // A SQLite target is refused the same way.
    let err = copy(&pg, &la, &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, CopyError::TargetNotEmpty { .. }), "{err}");

    let replaced = copy(&la, &pg, &CopyOptions { replace: true }).unwrap();
    let images: u64 = replaced
        .tables
        .iter()
        .find(|(t, _)| t == "images")
        .unwrap()
        .1;
    assert_eq!(pg_count(&url, "images") as u64, images);
    assert_eq!(pg_count(&url, "images"), 30);

    // Replacing works into SQLite too, and the result is the source row for row.
    copy(&pg, &lb, &CopyOptions { replace: true }).unwrap();
    assert_eq!(dump(&a), dump(&b));

    // PostgreSQL to PostgreSQL carries the workers table and PostgreSQL's own columns.
    {
        let mut s = gaze::store::postgres::PgStore::open(&url).unwrap();
        let leases = s.leases().unwrap();
        leases
            .report_worker(&gaze::store::api::WorkerReport {
                id: "host-a:1",
                host: "host-a",
                pid: 1,
                model_id: Some(1),
                started_at: 1.0,
                images_done: 5,
                images_per_second: 2.5,
                error: None,
            })
            .unwrap();
        let claimed = leases.claim("host-a:1", 2, 600.0).unwrap();
        assert!(!claimed.is_empty());
    }
    let pg2 = Location::Postgres(other.clone());
    let report = copy(&pg, &pg2, &CopyOptions::default()).unwrap();
    assert!(
        report.tables.contains(&("workers".to_string(), 1)),
        "{report}"
    );
    let leases = |url: &str| -> Vec<(i64, Option<String>, i64)> {
        let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
        client
            .query(
                "SELECT id, lease_owner, lease_token FROM images ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    assert_eq!(leases(&url), leases(&other));
    assert!(leases(&other).iter().any(|(_, owner, _)| owner.is_some()));
    assert!(matches!(
        copy(&pg, &pg, &CopyOptions { replace: true }),
        Err(CopyError::SameStore(_))
    ));
}

#[test]
fn identities_move_past_the_copied_ids() {
    let Some(url) = database_or_skip("identities_move_past_the_copied_ids") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    sqlite_library(&a, 25);
    let pg = Location::Postgres(url.clone());
    copy(&Location::Sqlite(a.clone()), &pg, &CopyOptions::default()).unwrap();
    let max = |table: &str| -> i64 {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .query_one(&format!("SELECT max(id) FROM {table}"), &[])
            .unwrap()
            .get(0)
    };
    let (models, captions, images, runs) = (
        max("models"),
        max("captions"),
        max("images"),
        max("retrain_runs"),
    );
    let activations = max("model_activations");

    let mut s = store::open(&pg).unwrap();
    let m = s.register_model(&model("h-new", "new"), 2e9).unwrap();
    assert_eq!((m.id, m.known), (models + 1, false));
    s.activate(m.id, "activate", Recaption::None, 2e9).unwrap();
    assert_eq!(max("model_activations"), activations + 1);
    s.mark_pending("/photos/new.jpg", 10, 10, 2e9).unwrap();
    assert_eq!(max("images"), images + 1);
    let tokens = vec!["<start>".to_string(), "dog".into(), "<end>".into()];
    let id = s
        .insert_caption(
            &NewCaption {
                content_hash: "fresh",
                model_id: m.id,
                text: "dog",
                tokens: &tokens,
                token_ids: &[0, 1, 2],
                score: -1.0,
                finished: true,
                beam_size: 1,
                alphas: &alphas(0, 2),
                grid: GRID,
            },
            2e9,
        )
        .unwrap();
    assert_eq!(id, Some(captions + 1));
    let rule = json!({});
    let run = s
        .start_run(
            &NewRun {
                trigger: "manual",
                parent: None,
                rule: &rule,
                fingerprint: "x",
            },
            2e9,
        )
        .unwrap();
    assert_eq!(run, runs + 1);
}

#[test]
fn an_empty_store_copies_and_its_identities_start_at_one() {
    let Some(url) = database_or_skip("an_empty_store_copies_and_its_identities_start_at_one")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("empty.db");
    store::open(&Location::Sqlite(a.clone())).unwrap();
    let pg = Location::Postgres(url);
    let report = copy(&Location::Sqlite(a), &pg, &CopyOptions::default()).unwrap();
    assert!(report.tables.iter().all(|(_, n)| *n == 0), "{report}");
    let mut s = store::open(&pg).unwrap();
    assert_eq!(s.register_model(&model("h", "m"), 1.0).unwrap().id, 1);
}

#[test]
fn a_failed_copy_leaves_the_target_as_it_was() {
    let Some(url) = database_or_skip("a_failed_copy_leaves_the_target_as_it_was") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    sqlite_library(&a, 20);
    // A value the schema does not mean, in a table copied after models and images.
    rusqlite::Connection::open(&a)
        .unwrap()
        .execute("UPDATE captions SET finished = 7 WHERE id = 2", [])
        .unwrap();
    let pg = Location::Postgres(url.clone());
    let err = copy(&Location::Sqlite(a.clone()), &pg, &CopyOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            CopyError::BadValue {
                table: "captions",
                column: "finished",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("captions.finished"), "{err}");
    for table in TABLES {
        assert_eq!(pg_count(&url, table), 0, "{table}");
    }

    // Into a new SQLite file: no file is left behind.
    let c = dir.path().join("c.db");
    copy(
        &Location::Sqlite(a),
        &Location::Sqlite(c.clone()),
        &CopyOptions::default(),
    )
    .unwrap_err();
    assert!(!c.exists());
}

#[test]
fn sqlite_to_sqlite_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    sqlite_library(&a, 40);
    let out = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["store", "copy", "--from"])
        .arg(&a)
        .arg("--to")
        .arg(&b)
        .env_remove("GAZE_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("captions") && stdout.contains("rows/s"),
        "{stdout}"
    );
    assert!(!stdout.contains("workers"), "{stdout}");
    assert_eq!(dump(&a), dump(&b));
    let sb = store::open_read_only(&Location::Sqlite(b.clone())).unwrap();
    assert!(!search(sb.as_ref(), "dogs").is_empty());
    drop(sb);

    // Again: refused, with the counts, for a person to read.
    let out = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["store", "copy", "--from"])
        .arg(&a)
        .arg("--to")
        .arg(&b)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not empty") && stderr.contains("models 3"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["store", "copy", "--replace", "--from"])
        .arg(&a)
        .arg("--to")
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn an_older_sqlite_source_is_upgraded_first() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.db"), dir.path().join("new.db"));
    {
        let mut conn = rusqlite::Connection::open(&old).unwrap();
        store::migrations()
            .unwrap()
            .to_version(&mut conn, 2)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO models (content_hash, path, name, config, created_at, active)
                 VALUES ('m', 'm.safetensors', 'm', '{}', 5, 1);
             INSERT INTO captions (content_hash, model_id, text, tokens, token_ids, score,
                                   finished, beam_size, created_at)
                 VALUES ('h', 1, 'two dogs on grass', '[]', '[]', -1.0, 1, 3, 6);",
        )
        .unwrap();
    }
    let report = copy(
        &Location::Sqlite(old.clone()),
        &Location::Sqlite(new.clone()),
        &CopyOptions::default(),
    )
    .unwrap();
    assert!(
        report.tables.contains(&("captions".to_string(), 1)),
        "{report}"
    );
    // The upgrade records the active model's activation, which travels too.
    assert!(
        report
            .tables
            .contains(&("model_activations".to_string(), 1)),
        "{report}"
    );
    let version: i64 = rusqlite::Connection::open(&old)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version as usize, store::supported_version());
    assert_eq!(dump(&old), dump(&new));
}
