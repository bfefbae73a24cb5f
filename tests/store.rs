//! The store's behaviour, one suite run on both backends: every check below takes a
//! `&mut dyn CaptionStore` and runs once on a SQLite file and once on a fresh database of a
//! throwaway PostgreSQL server (tests/common/pg.rs). The lease checks run on PostgreSQL only:
//! a SQLite file serves one machine and has no leases.

mod common;

use gaze::store::api::{
    CaptionStore, Claim, FailedImage, Leases, NewCaption, NewModel, NewRun, ReadImage, Recaption,
    RunEnd, RunStatus, Selection, WorkerReport,
};
use gaze::store::queue::ImageStatus;
use gaze::store::registry::ModelStatus;
use gaze::store::{Location, StoreError};

fn tokens() -> Vec<String> {
    ["<start>", "a", "dog", "runs", "<end>"]
        .map(String::from)
        .into()
}

fn caption<'a>(hash: &'a str, model: i64, text: &'a str, tokens: &'a [String]) -> NewCaption<'a> {
    NewCaption {
        content_hash: hash,
        model_id: model,
        text,
        tokens,
        token_ids: &[1, 4, 5, 6, 2],
        score: -1.25,
        finished: true,
        beam_size: 3,
        alphas: &[],
        grid: 2,
    }
}

fn model(hash: &str) -> NewModel<'_> {
    NewModel {
        content_hash: hash,
        path: "/models/m.safetensors",
        name: hash,
        config_json: "{}",
        provenance_json: "{}",
    }
}

fn read<'a>(path: &'a str, hash: &'a str) -> ReadImage<'a> {
    ReadImage {
        path,
        size: 11,
        mtime_ns: 6,
        content_hash: hash,
        width: 4,
        height: 3,
    }
}

/// Stores `n` done images under `/p/`, each with its own caption by `model`.
fn captioned(store: &mut dyn CaptionStore, model: i64, n: usize, finished: bool, tag: &str) {
    let tokens = tokens();
    let mut tx = store.begin().unwrap();
    for i in 0..n {
        let (path, hash) = (format!("/p/{tag}{i}.jpg"), format!("{tag}{i}"));
        let mut c = caption(&hash, model, "a cat", &tokens);
        c.finished = finished;
        tx.insert_caption(&c, 1.0).unwrap().unwrap();
        tx.mark_done(&read(&path, &hash), 1.0 + i as f64).unwrap();
    }
    tx.commit().unwrap();
}

fn status_of(store: &dyn CaptionStore, path: &str) -> (ImageStatus, u32) {
    let s = store.image_state(path).unwrap().unwrap();
    (s.status, s.attempts)
}

fn queue_states_and_attempts(store: &mut dyn CaptionStore) {
    let m = store.register_model(&model("m"), 1.0).unwrap().id;
    store.activate(m, "start", Recaption::None, 1.0).unwrap();
    assert!(store.image_state("/a/x.jpg").unwrap().is_none());
    store.mark_pending("/a/x.jpg", 10, 5, 1.0).unwrap();
    let failed = FailedImage {
        path: "/a/x.jpg",
        size: 10,
        mtime_ns: 5,
        content_hash: None,
        error: "bad",
    };
    store.mark_failed(&failed, 2.0).unwrap();
    store.mark_failed(&failed, 3.0).unwrap();
    assert_eq!(status_of(store, "/a/x.jpg"), (ImageStatus::Failed, 2));
    // Unchanged: attempts kept. Changed: attempts start afresh.
    store.mark_pending("/a/x.jpg", 10, 5, 4.0).unwrap();
    assert_eq!(status_of(store, "/a/x.jpg"), (ImageStatus::Pending, 2));
    store.mark_pending("/a/x.jpg", 11, 6, 5.0).unwrap();
    assert_eq!(status_of(store, "/a/x.jpg"), (ImageStatus::Pending, 0));
    store.mark_pending("/a/y.jpg", 1, 1, 6.0).unwrap();
    assert_eq!(store.pending_paths().unwrap(), ["/a/x.jpg", "/a/y.jpg"]);
    let pending = store.pending_images().unwrap();
    assert_eq!((pending[0].size, pending[0].mtime_ns), (11, 6));

    for p in ["/a/x.jpg", "/a/sub/y.jpg", "/ab.jpg"] {
        store.mark_done(&read(p, "h1"), 7.0).unwrap();
    }
    // Gone by folder, not by string prefix.
    assert_eq!(store.mark_gone("/a", 8.0).unwrap(), 3);
    assert_eq!(store.live_paths().unwrap(), ["/ab.jpg"]);

    store
        .mark_skipped("/a/fifo", "a named pipe (FIFO)", 9.0)
        .unwrap();
    assert_eq!(store.skipped_paths().unwrap(), ["/a/fifo"]);
    assert_eq!(store.status(10.0).unwrap().skipped, 1);
    // An entry that was a pipe and is a regular file now is no longer skipped.
    store.mark_pending("/a/fifo", 1, 1, 10.0).unwrap();
    assert!(store.skipped_paths().unwrap().is_empty());
    store.mark_skipped("/b/fifo", "a socket", 11.0).unwrap();
    store.unmark_skipped("/b/fifo").unwrap();
    assert!(store.skipped_paths().unwrap().is_empty());
}

fn one_caption_per_content_and_model(store: &mut dyn CaptionStore) {
    let a = store.register_model(&model("a"), 1.0).unwrap().id;
    let b = store.register_model(&model("b"), 1.0).unwrap().id;
    let tokens = tokens();
    let alphas = vec![vec![0.1, 0.2, 0.3, 0.4]; 4];
    let mut c = caption("h1", a, "a dog runs", &tokens);
    c.alphas = &alphas;
    let id = store.insert_caption(&c, 1.0).unwrap().expect("stored");
    assert!(store.insert_caption(&c, 2.0).unwrap().is_none(), "a repeat");
    assert!(store.caption_exists("h1", a).unwrap());
    assert!(!store.caption_exists("h1", b).unwrap());
    let att = store.attention_of(id).unwrap().expect("attention");
    assert_eq!(att.tokens, tokens);
    assert_eq!((att.grid, att.alphas.len()), (2, 4));
    for (got, want) in att.alphas[0].iter().zip([0.1f32, 0.2, 0.3, 0.4]) {
        assert!((got - want).abs() <= 0.4 / 510.0 + 1e-6, "{got} vs {want}");
    }
    assert!(store.attention_of(id + 1000).unwrap().is_none());
}

fn search_paging_and_selections(store: &mut dyn CaptionStore) {
    let m = store.register_model(&model("m"), 1.0).unwrap().id;
    store.activate(m, "start", Recaption::None, 1.0).unwrap();
    let tokens = tokens();
    let texts = [
        "a dog runs on the grass",
        "two cats sleep",
        "a brown dog catches a ball",
    ];
    for (i, text) in texts.iter().enumerate() {
        let (path, hash) = (format!("/p/{i}.jpg"), format!("h{i}"));
        let mut tx = store.begin().unwrap();
        tx.insert_caption(&caption(&hash, m, text, &tokens), 1.0)
            .unwrap();
        tx.mark_done(&read(&path, &hash), 10.0 + i as f64).unwrap();
        tx.commit().unwrap();
    }
    // Stemming: "dogs" finds "dog"; every word must match.
    let hits = store.select(&Selection::Search("dogs".into()), 10).unwrap();
    let mut paths: Vec<_> = hits.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/p/0.jpg", "/p/2.jpg"]);
    let hits = store
        .select(&Selection::Search("brown dogs".into()), 10)
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].caption.as_deref(), Some(texts[2]));
    assert_eq!(hits[0].model.as_deref(), Some("m"));
    // Words are plain text, never query syntax.
    for odd in ["\"", "dog OR cat", "a & b", "(", "-dog", "   "] {
        store.select(&Selection::Search(odd.into()), 10).unwrap();
    }

    let recent = store.select(&Selection::Recent(2), 10).unwrap();
    let paths: Vec<_> = recent.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/p/2.jpg", "/p/1.jpg"]);
    let page = store.select_page(&Selection::Recent(10), 2).unwrap();
    assert_eq!((page.rows.len(), page.total), (2, 3));
    assert!(page.truncated());
    let page = store
        .select_page(&Selection::Search("dog".into()), 1)
        .unwrap();
    assert_eq!((page.rows.len(), page.total), (1, 2));

    let row = &store
        .select(&Selection::Path("/p/1.jpg".into()), 10)
        .unwrap()[0];
    assert_eq!(row.status, ImageStatus::Done);
    assert_eq!((row.width, row.height), (Some(4), Some(3)));
    assert_eq!(row.finished, Some(true));
    assert_eq!(row.beam_size, Some(3));
    assert!(row.created_at.as_deref().unwrap().ends_with('Z'));
    let by_id = store.select(&Selection::ImageId(row.image_id), 10).unwrap();
    assert_eq!(by_id[0].path, "/p/1.jpg");

    store
        .mark_failed(
            &FailedImage {
                path: "/p/bad.jpg",
                size: 3,
                mtime_ns: 1,
                content_hash: None,
                error: "not an image",
            },
            20.0,
        )
        .unwrap();
    let failed = store.select(&Selection::Failed, 10).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_deref(), Some("not an image"));
    assert!(failed[0].caption.is_none());

    let status = store.status(12.5).unwrap();
    assert_eq!(status.images, 4);
    assert_eq!(status.captions, 3);
    assert_eq!(status.backlog, 0);
    assert_eq!(status.done_last_minute, 3);
    assert_eq!(status.active_model.as_ref().map(|m| m.id), Some(m));
    assert_eq!(status.models, 1);
    let by: Vec<_> = status
        .by_status
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    assert_eq!(
        by,
        [("pending", 0), ("done", 3), ("failed", 1), ("gone", 0)]
    );
}

fn registry_activates_rolls_back_and_requeues_by_policy(store: &mut dyn CaptionStore) {
    let a = store.register_model(&model("a"), 1.0).unwrap();
    assert!(!a.known);
    let again = store.register_model(&model("a"), 2.0).unwrap();
    assert_eq!((again.id, again.known), (a.id, true));
    let a = a.id;
    assert!(matches!(
        store.rollback(Recaption::None, 1.0),
        Err(StoreError::NoActiveModel)
    ));
    let first = store.activate(a, "start", Recaption::Missing, 1.0).unwrap();
    assert_eq!((first.previous, first.requeued), (None, 0));
    assert!(matches!(
        store.rollback(Recaption::None, 1.0),
        Err(StoreError::NothingToRollBack)
    ));
    captioned(store, a, 3, true, "fin");
    captioned(store, a, 2, false, "unfin");

    // Missing: only images without a finished caption by any model.
    let b = store.register_model(&model("b"), 2.0).unwrap().id;
    let act = store
        .activate(b, "activate", Recaption::Missing, 3.0)
        .unwrap();
    assert_eq!((act.previous, act.requeued), (Some(a), 2));
    let noop = store.activate(b, "activate", Recaption::All, 3.5).unwrap();
    assert_eq!((noop.previous, noop.requeued), (None, 0), "already active");

    // All: every stored image the new model has not captioned.
    captioned(store, b, 1, true, "fin");
    let c = store.register_model(&model("c"), 4.0).unwrap().id;
    store.set_trained(c, Some(b), ModelStatus::Ready).unwrap();
    let act = store.activate(c, "retrain", Recaption::All, 5.0).unwrap();
    // The unfinished ones are pending already (queued by the last activation).
    assert_eq!((act.previous, act.requeued), (Some(b), 3));
    let row = store.model(c).unwrap().unwrap();
    assert_eq!(
        (row.kind.as_str(), row.parent_id, row.active),
        ("trained", Some(b), true)
    );

    // Rollbacks walk back through the history.
    let back = store.rollback(Recaption::None, 6.0).unwrap();
    assert_eq!((back.from, back.to, back.requeued), (c, b, 0));
    let back = store.rollback(Recaption::None, 7.0).unwrap();
    assert_eq!((back.from, back.to), (b, a));
    assert_eq!(store.active_model().unwrap().unwrap().id, a);
    assert!(matches!(
        store.rollback(Recaption::None, 8.0),
        Err(StoreError::NothingToRollBack)
    ));
    let listed: Vec<_> = store.list_models().unwrap().iter().map(|m| m.id).collect();
    assert_eq!(listed, [a, b, c]);
    assert_eq!(store.list_models().unwrap()[0].captions, 5);
    assert_eq!(store.model_by_hash("b").unwrap().unwrap().id, b);
    assert!(store.model(999).unwrap().is_none());
    assert_eq!(
        store
            .list_models()
            .unwrap()
            .iter()
            .filter(|m| m.active)
            .count(),
        1
    );

    // Corrupt and candidate models are never activated.
    let bad = store.register_model(&model("bad"), 9.0).unwrap().id;
    store.set_status(bad, ModelStatus::Corrupt).unwrap();
    assert!(matches!(
        store.activate(bad, "activate", Recaption::None, 9.0),
        Err(StoreError::NotActivatable { .. })
    ));
    let cand = store.register_model(&model("cand"), 9.0).unwrap().id;
    store
        .set_trained(cand, Some(a), ModelStatus::Candidate)
        .unwrap();
    assert!(matches!(
        store.activate(cand, "activate", Recaption::None, 9.0),
        Err(StoreError::NotActivatable { .. })
    ));
    assert!(matches!(
        store.activate(999, "activate", Recaption::None, 9.0),
        Err(StoreError::NoSuchModel(999))
    ));
    store
        .set_metrics(cand, &serde_json::json!({"bleu4": 0.25}))
        .unwrap();
    assert_eq!(
        store.model(cand).unwrap().unwrap().metrics,
        Some(serde_json::json!({"bleu4": 0.25}))
    );
    // A daemon that swapped models itself queues the work by the same policy.
    store.mark_done(&read("/p/fin0.jpg", "fin0"), 10.0).unwrap();
    store.mark_done(&read("/p/fin1.jpg", "fin1"), 10.0).unwrap();
    assert_eq!(
        store.requeue(b, Recaption::All, 10.0).unwrap(),
        1,
        "fin0 has b's caption"
    );
    assert_eq!(store.requeue(b, Recaption::None, 10.0).unwrap(), 0);
}

fn a_transaction_takes_effect_only_when_committed(store: &mut dyn CaptionStore) {
    let m = store.register_model(&model("m"), 1.0).unwrap().id;
    let tokens = tokens();
    {
        let mut tx = store.begin().unwrap();
        tx.insert_caption(&caption("h1", m, "a dog", &tokens), 1.0)
            .unwrap();
        tx.mark_done(&read("/p/x.jpg", "h1"), 1.0).unwrap();
        // Dropped uncommitted.
    }
    assert!(!store.caption_exists("h1", m).unwrap());
    assert!(store.image_state("/p/x.jpg").unwrap().is_none());
    let mut tx = store.begin().unwrap();
    tx.insert_caption(&caption("h1", m, "a dog", &tokens), 1.0)
        .unwrap();
    tx.mark_done(&read("/p/x.jpg", "h1"), 1.0).unwrap();
    tx.commit().unwrap();
    assert!(store.caption_exists("h1", m).unwrap());
    // The store is usable after a failed call inside a transaction that was dropped.
    {
        let mut tx = store.begin().unwrap();
        assert!(tx.activate(999, "activate", Recaption::None, 2.0).is_err());
    }
    assert_eq!(store.status(2.0).unwrap().captions, 1);
}

fn runs_are_recorded_and_stale_ones_failed(store: &mut dyn CaptionStore) {
    let m = store.register_model(&model("m"), 1.0).unwrap().id;
    let rule = serde_json::json!({"metric": "bleu4", "margin": 0.0});
    let run = NewRun {
        trigger: "manual",
        parent: Some(m),
        rule: &rule,
        fingerprint: "fp1",
    };
    let r1 = store.start_run(&run, 1.0).unwrap();
    store.set_run_log_path(r1, "/tmp/no-such-log").unwrap();
    let metrics = serde_json::json!({"bleu4": 0.3});
    store
        .finish_run(
            r1,
            &RunEnd {
                status: RunStatus::Rejected,
                candidate: Some(m),
                parent_metrics: Some(&metrics),
                candidate_metrics: Some(&metrics),
                log: "trained",
                error: None,
            },
            2.0,
        )
        .unwrap();
    assert_eq!(
        store.last_decided_fingerprint().unwrap().as_deref(),
        Some("fp1")
    );
    let r2 = store.start_run(&run, 3.0).unwrap();
    let runs = store.list_runs(10).unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [r2, r1]);
    let got = store.run(r1).unwrap().unwrap();
    assert_eq!(got.status, RunStatus::Rejected);
    assert_eq!(got.rule, Some(rule.clone()));
    assert_eq!(got.parent_metrics, Some(metrics.clone()));
    assert_eq!(got.log_path.as_deref(), Some("/tmp/no-such-log"));
    assert_eq!(store.model(m).unwrap().unwrap().run_id, Some(r1));
    // This process's own runs are never stale.
    assert_eq!(store.fail_stale_runs(&|_| false, 4.0).unwrap(), 0);
    assert_eq!(store.run(r2).unwrap().unwrap().status, RunStatus::Running);
    assert!(store.run(999).unwrap().is_none());
}

/// Runs each check on a fresh SQLite file and on a fresh PostgreSQL database.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let loc = gaze::store::Location::Sqlite(dir.path().join("gaze.db"));
                    let mut store = gaze::store::open(&loc).unwrap();
                    super::$check(&mut *store);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $check() {
                    let Some(url) = super::common::pg::database_or_skip(stringify!($check)) else {
                        return;
                    };
                    let mut store = gaze::store::open(&gaze::store::Location::Postgres(url)).unwrap();
                    super::$check(&mut *store);
                }
            )*
        }
    };
}

on_both_backends!(
    queue_states_and_attempts,
    one_caption_per_content_and_model,
    search_paging_and_selections,
    registry_activates_rolls_back_and_requeues_by_policy,
    a_transaction_takes_effect_only_when_committed,
    runs_are_recorded_and_stale_ones_failed,
);

fn pg(test: &str) -> Option<(String, gaze::store::BoxedStore)> {
    let url = common::pg::database_or_skip(test)?;
    let store = gaze::store::open(&Location::Postgres(url.clone())).unwrap();
    Some((url, store))
}

fn leases(store: &mut gaze::store::BoxedStore) -> &mut dyn Leases {
    store.leases().expect("PostgreSQL has leases")
}

#[test]
fn sqlite_has_no_leases() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = gaze::store::open(&Location::Sqlite(dir.path().join("g.db"))).unwrap();
    assert!(store.leases().is_none());
}

#[test]
fn claims_are_exclusive_and_expire() {
    let Some((url, mut a)) = pg("claims_are_exclusive_and_expire") else {
        return;
    };
    let mut b = gaze::store::open(&Location::Postgres(url)).unwrap();
    for i in 0..10 {
        a.mark_pending(&format!("/p/{i}.jpg"), 1, 1, i as f64)
            .unwrap();
    }
    let first = leases(&mut a).claim("w1", 4, 60.0).unwrap();
    let second = leases(&mut b).claim("w2", 100, 60.0).unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(second.len(), 6, "the rest, none twice");
    let mut all: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|c| c.path.clone())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10);
    // Oldest first.
    assert_eq!(first[0].path, "/p/0.jpg");
    assert!(leases(&mut a).claim("w3", 10, 60.0).unwrap().is_empty());

    // A lease of 0 s expires at once: the image is claimable again, with a new token, and
    // the old holder no longer holds it.
    let short = leases(&mut a).claim("w3", 1, 0.0).unwrap();
    assert!(short.is_empty(), "everything is leased");
    let c = &first[0];
    assert!(leases(&mut a).holds("w1", &c.path, c.token).unwrap());
    assert!(!leases(&mut a).holds("w2", &c.path, c.token).unwrap());
    assert_eq!(leases(&mut a).extend("w1", &[c.token], 0.0).unwrap(), 1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(
        !leases(&mut a).holds("w1", &c.path, c.token).unwrap(),
        "expired"
    );
    let retaken = leases(&mut b).claim("w2", 10, 60.0).unwrap();
    assert_eq!(retaken.len(), 1);
    assert_eq!(retaken[0].path, c.path);
    assert!(retaken[0].token > c.token);
    assert_eq!(leases(&mut a).extend("w1", &[c.token], 60.0).unwrap(), 0);
}

#[test]
fn a_commit_is_fenced_by_the_lease() {
    let Some((url, mut a)) = pg("a_commit_is_fenced_by_the_lease") else {
        return;
    };
    let mut b = gaze::store::open(&Location::Postgres(url)).unwrap();
    let m = a.register_model(&model("m"), 1.0).unwrap().id;
    a.mark_pending("/p/x.jpg", 11, 6, 1.0).unwrap();
    let old = leases(&mut a).claim("w1", 1, 60.0).unwrap().remove(0);
    // w1 is paused past its lease (simulated: its lease is cut to nothing); w2 takes over.
    leases(&mut a).extend("w1", &[old.token], 0.0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new = leases(&mut b).claim("w2", 1, 60.0).unwrap().remove(0);
    let tokens = tokens();

    // w1's late commit is refused; w2's goes through.
    let mut tx = a.begin().unwrap();
    assert!(!tx
        .leases()
        .unwrap()
        .holds("w1", &old.path, old.token)
        .unwrap());
    drop(tx);
    let mut tx = b.begin().unwrap();
    assert!(tx
        .leases()
        .unwrap()
        .holds("w2", &new.path, new.token)
        .unwrap());
    tx.insert_caption(&caption("h1", m, "a dog", &tokens), 2.0)
        .unwrap();
    tx.mark_done(&read("/p/x.jpg", "h1"), 2.0).unwrap();
    tx.commit().unwrap();
    assert_eq!(status_of(&*a, "/p/x.jpg"), (ImageStatus::Done, 0));
    // A done image is no longer held by anyone.
    assert!(!leases(&mut b).holds("w2", &new.path, new.token).unwrap());

    // A changed file voids the lease on its old content.
    a.mark_pending("/p/y.jpg", 1, 1, 3.0).unwrap();
    let y = leases(&mut a).claim("w1", 1, 60.0).unwrap().remove(0);
    a.mark_pending("/p/y.jpg", 2, 2, 4.0).unwrap();
    assert!(!leases(&mut a).holds("w1", &y.path, y.token).unwrap());
}

#[test]
fn failures_follow_the_attempts_rule_and_misses_are_not_failures() {
    let Some((_, mut s)) = pg("failures_follow_the_attempts_rule_and_misses_are_not_failures")
    else {
        return;
    };
    s.mark_pending("/p/bad.jpg", 1, 1, 1.0).unwrap();
    for attempt in 1..=3u32 {
        let c: Claim = leases(&mut s).claim("w1", 1, 60.0).unwrap().remove(0);
        assert_eq!(c.attempts, attempt - 1);
        assert!(leases(&mut s)
            .fail_leased("w1", &c, "not an image", 3, 2.0)
            .unwrap());
        let want = if attempt < 3 {
            ImageStatus::Pending
        } else {
            ImageStatus::Failed
        };
        assert_eq!(status_of(&*s, "/p/bad.jpg"), (want, attempt));
    }
    assert!(leases(&mut s).claim("w1", 1, 60.0).unwrap().is_empty());

    s.mark_pending("/p/far.jpg", 1, 1, 5.0).unwrap();
    let c = leases(&mut s).claim("w1", 1, 60.0).unwrap().remove(0);
    assert!(leases(&mut s)
        .release("w1", &c, "root photos: a/far.jpg not found", 6.0)
        .unwrap());
    assert_eq!(status_of(&*s, "/p/far.jpg"), (ImageStatus::Pending, 0));
    let again = leases(&mut s).claim("w2", 1, 60.0).unwrap();
    assert_eq!(again.len(), 1, "another worker may find it");
    // A stale holder's verdicts change nothing.
    assert!(!leases(&mut s)
        .fail_leased("w1", &c, "late", 3, 7.0)
        .unwrap());
    assert!(!leases(&mut s).release("w1", &c, "late", 7.0).unwrap());
}

#[test]
fn workers_report_and_retraining_is_locked() {
    let Some((url, mut s)) = pg("workers_report_and_retraining_is_locked") else {
        return;
    };
    let m = s.register_model(&model("m"), 1.0).unwrap().id;
    s.mark_pending("/p/x.jpg", 1, 1, 1.0).unwrap();
    leases(&mut s).claim("host-a:1", 5, 60.0).unwrap();
    leases(&mut s)
        .report_worker(&WorkerReport {
            id: "host-a:1",
            host: "host-a",
            pid: 1,
            model_id: Some(m),
            started_at: 1.0,
            images_done: 7,
            images_per_second: 2.5,
            error: None,
        })
        .unwrap();
    let workers = s.status(gaze::store::unix_now()).unwrap().workers;
    assert_eq!(workers.len(), 1);
    let w = &workers[0];
    assert_eq!(
        (w.id.as_str(), w.host.as_str(), w.leases),
        ("host-a:1", "host-a", 1)
    );
    assert_eq!((w.model.as_deref(), w.images_done), (Some("m"), 7));

    let mut other = gaze::store::open(&Location::Postgres(url)).unwrap();
    assert!(leases(&mut s).try_lock_retraining().unwrap());
    assert!(!leases(&mut other).try_lock_retraining().unwrap());
    leases(&mut s).unlock_retraining().unwrap();
    assert!(leases(&mut other).try_lock_retraining().unwrap());
}

#[test]
fn schema_versions_are_checked() {
    let Some((url, s)) = pg("schema_versions_are_checked") else {
        return;
    };
    drop(s);
    let loc = Location::Postgres(url.clone());
    gaze::store::open_read_only(&loc).unwrap();
    // A schema from a newer gaze is refused, for writing and for reading.
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    client
        .batch_execute("INSERT INTO gaze_schema (version, applied_at) VALUES (99, 0)")
        .unwrap();
    let err = gaze::store::open(&loc).err().unwrap().to_string();
    assert!(err.contains("newer"), "{err}");
    let err = gaze::store::open_read_only(&loc).err().unwrap().to_string();
    assert!(err.contains("newer"), "{err}");
    // A database of some other program is never taken over.
    client
        .batch_execute("DROP TABLE gaze_schema CASCADE")
        .unwrap();
    let err = gaze::store::open(&loc).err().unwrap();
    assert!(matches!(err, StoreError::NotGaze { .. }), "{err}");
}

#[test]
fn a_bad_server_is_a_clear_error() {
    // Nothing listens on port 1.
    let loc = Location::Postgres("postgres://gaze:secret@127.0.0.1:1/gaze".into());
    let err = gaze::store::open(&loc).err().unwrap().to_string();
    assert!(err.contains("postgres://gaze@127.0.0.1:1/gaze"), "{err}");
    assert!(err.contains("connecting"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn a_lost_connection_is_made_again() {
    let Some((url, mut s)) = pg("a_lost_connection_is_made_again") else {
        return;
    };
    leases(&mut s).limit_idle_transactions(30).unwrap();
    s.mark_pending("/p/x.jpg", 1, 1, 1.0).unwrap();
    // The server ends the session (as after a restart, or an idle transaction cut off).
    let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid != pg_backend_pid()",
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The call that meets the dead connection may fail; the next one connects again.
    let first = s.image_state("/p/x.jpg");
    let state = match first {
        Ok(state) => state,
        Err(_) => s.image_state("/p/x.jpg").unwrap(),
    };
    assert_eq!(state.unwrap().status, ImageStatus::Pending);
    // Transactions work on the new connection.
    let tx = s.begin().unwrap();
    assert!(tx.image_state("/p/x.jpg").unwrap().is_some());
    tx.commit().unwrap();
}
