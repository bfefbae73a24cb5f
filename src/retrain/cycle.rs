//! One retraining cycle: record the run, train a candidate from the active model in a thread
//! pool of its own, check that the candidate's file loads and captions, score both models on
//! the same held-out images, and promote or reject by the rule, all recorded in the registry.
//!
//! Whatever goes wrong (bad data, a training error, a panic, a candidate that fails to load or
//! score, a stop request) the run is recorded as failed with its log and the active model is
//! not touched. A run whose process is killed stays `running` until the next cycle (or
//! `gaze retrain`) finds its process gone and records it as failed.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::data;
use super::evaluate::{metric_names, score_split, HeldOutScores};
use super::{RetrainError, RetrainOptions};
use crate::data::karpathy::Split;
use crate::data::PreparedSplit;
use crate::model::file::{self, LoadOptions};
use crate::model::CaptionModel;
use crate::store::api::{CaptionStore, NewModel, NewRun, StoreTx};
use crate::store::registry::ModelStatus;
use crate::store::runs::{self, RunEnd};
use crate::store::{unix_now, Location};
use crate::train::{train, StandardObserver, StopReason, TrainConfig, TrainData, TrainOptions};

/// The active model a run starts from and competes against.
#[derive(Clone)]
pub struct Parent {
    pub id: i64,
    pub model: Arc<CaptionModel>,
}

/// How a cycle is run.
pub struct CycleOptions<'a> {
    pub settings: &'a RetrainOptions,
    /// Where training runs (cpu, cuda, cuda:N).
    pub device: String,
    /// `schedule` or `manual`, recorded with the run.
    pub trigger: &'a str,
    /// Set to stop training early; the run is then recorded as failed.
    pub stop: Arc<AtomicBool>,
}

/// How a run ended (a cycle reports promoted, rejected or failed).
pub use crate::store::runs::RunStatus;

/// What a cycle did.
pub struct CycleReport {
    pub run_id: i64,
    pub status: RunStatus,
    /// The candidate, when one was registered (promoted or rejected).
    pub candidate_id: Option<i64>,
    /// The promoted model, loaded, ready to swap in.
    pub promoted: Option<(i64, String, Arc<CaptionModel>)>,
    pub parent_score: Option<f64>,
    pub candidate_score: Option<f64>,
    pub error: Option<String>,
    pub log_path: PathBuf,
}

/// A run's log: a file in the run's folder, and the same text kept for the database.
struct RunLog {
    file: Option<std::fs::File>,
    text: String,
    started: Instant,
}

impl RunLog {
    fn new(path: &Path) -> Self {
        RunLog {
            file: std::fs::File::create(path).ok(),
            text: String::new(),
            started: Instant::now(),
        }
    }
    fn line(&mut self, msg: &str) {
        let line = format!("[{:7.1}s] {msg}\n", self.started.elapsed().as_secs_f64());
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(line.as_bytes());
            let _ = f.flush();
        }
        tracing::debug!(target: "gaze::retrain", "{msg}");
        self.text.push_str(&line);
    }
}

/// Why a run failed.
enum Failure {
    Plain(String),
    /// The candidate's file was written but does not load or caption.
    Corrupt {
        path: PathBuf,
        reason: String,
    },
}

/// A judged candidate.
struct Judged {
    path: PathBuf,
    model: Arc<CaptionModel>,
    name: String,
    candidate: HeldOutScores,
    parent: Option<HeldOutScores>,
    promote: bool,
}

/// Runs one cycle against the database at `db`. Errors are only those that stop the run from
/// being recorded at all; everything else is a failed run in the report.
pub fn run_cycle(
    db: &Location,
    parent: Option<&Parent>,
    opts: &CycleOptions,
) -> Result<CycleReport, RetrainError> {
    let settings = opts.settings;
    let mut opened = crate::store::open(db)?;
    let store: &mut dyn CaptionStore = &mut *opened;
    // On a shared store, one process at a time retrains (the lock goes with the connection).
    if let Some(leases) = store.leases() {
        if !leases.try_lock_retraining()? {
            return Err(RetrainError::AnotherRunning {
                location: store.location(),
            });
        }
    }
    let stale = store.fail_stale_runs(&runs::process_alive, unix_now())?;
    if stale > 0 {
        tracing::warn!(
            runs = stale,
            "earlier retraining runs were cut short; recorded as failed"
        );
    }
    let rule = json!({"metric": settings.metric, "margin": settings.margin});
    let fingerprint = data::fingerprint(settings).unwrap_or_default();
    let run_id = store.start_run(
        &NewRun {
            trigger: opts.trigger,
            parent: parent.map(|p| p.id),
            rule: &rule,
            fingerprint: &fingerprint,
        },
        unix_now(),
    )?;
    let run_dir = settings.work_dir.join(format!("run-{run_id:04}"));
    std::fs::create_dir_all(&run_dir).map_err(|source| RetrainError::Io {
        path: run_dir.clone(),
        source,
    })?;
    let run_dir = std::fs::canonicalize(&run_dir).unwrap_or(run_dir);
    let log_path = run_dir.join("retrain.log");
    let mut log = RunLog::new(&log_path);
    store.set_run_log_path(run_id, &log_path.to_string_lossy())?;
    tracing::info!(run = run_id, parent = ?parent.map(|p| p.id), log = %log_path.display(), "retraining started");
    log.line(&format!(
        "run {run_id} ({}) from model {:?}; rule: {} at least the active model's + {}",
        opts.trigger,
        parent.map(|p| p.id),
        settings.metric,
        settings.margin
    ));

    let outcome = catch_unwind(AssertUnwindSafe(|| {
        judge(run_id, &run_dir, parent, opts, &mut log)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Failure::Plain(format!("the run panicked: {msg}")))
    });

    let now = unix_now();
    let mut tx = store.begin()?;
    let report = record(
        &mut *tx, run_id, parent, settings, outcome, &mut log, &log_path, now,
    )?;
    tx.commit()?;
    tracing::info!(
        run = run_id,
        status = ?report.status,
        candidate = ?report.candidate_id,
        parent_score = ?report.parent_score,
        candidate_score = ?report.candidate_score,
        error = report.error.as_deref().unwrap_or(""),
        "retraining finished"
    );
    Ok(report)
}

/// Records how a run ended in `tx`: the candidate registered (ready, rejected or corrupt), the
/// scores, the promotion with its requeue, and the run's end.
#[allow(clippy::too_many_arguments)]
fn record(
    tx: &mut dyn StoreTx,
    run_id: i64,
    parent: Option<&Parent>,
    settings: &RetrainOptions,
    outcome: Result<Judged, Failure>,
    log: &mut RunLog,
    log_path: &Path,
    now: f64,
) -> Result<CycleReport, RetrainError> {
    let log_path = log_path.to_path_buf();
    let report = match outcome {
        Ok(j) => {
            let hash = crate::files::content_hash(&j.path).map_err(|source| RetrainError::Io {
                path: j.path.clone(),
                source,
            })?;
            let candidate_json = j.candidate.to_json();
            let parent_json = j.parent.as_ref().map(|p| p.to_json());
            let candidate_score = j.candidate.metric(&settings.metric);
            let parent_score = j.parent.as_ref().and_then(|p| p.metric(&settings.metric));
            if let Some(existing) = tx.model_by_hash(&hash)? {
                // Identical bytes to a known model: nothing new to promote.
                let error = format!("the candidate is identical to model {}", existing.id);
                log.line(&error);
                tx.finish_run(run_id, &RunEnd::failed(&log.text, &error), now)?;
                return Ok(failed_report(run_id, error, log_path));
            }
            let id = tx
                .register_model(
                    &NewModel {
                        content_hash: &hash,
                        path: &j.path.to_string_lossy(),
                        name: &j.name,
                        config_json: &serde_json::to_string(&j.model.config).expect("serialises"),
                        provenance_json: &j.model.provenance.to_string(),
                    },
                    now,
                )?
                .id;
            let verdict = if j.promote {
                ModelStatus::Ready
            } else {
                ModelStatus::Rejected
            };
            tx.set_trained(id, parent.map(|p| p.id), verdict)?;
            tx.set_metrics(id, &candidate_json)?;
            if let (Some(p), Some(pj)) = (parent, &parent_json) {
                tx.set_metrics(p.id, pj)?;
            }
            let status = if j.promote {
                // The policy's requeue commits with the promotion, so a daemon started later
                // (or another one) finds the new model's work as pending rows.
                let requeued = tx
                    .activate(id, "retrain", settings.recaption, now)?
                    .requeued;
                log.line(&format!(
                    "promoted: model {id} is now active; {requeued} image(s) queued again \
                     (recaption = {:?})",
                    settings.recaption
                ));
                RunStatus::Promoted
            } else {
                log.line(&format!("rejected: model {id} stays inactive"));
                RunStatus::Rejected
            };
            let log_tail = runs::tail(&log.text, runs::LOG_KEEP);
            tx.finish_run(
                run_id,
                &RunEnd {
                    status,
                    candidate: Some(id),
                    parent_metrics: parent_json.as_ref(),
                    candidate_metrics: Some(&candidate_json),
                    log: &log_tail,
                    error: None,
                },
                now,
            )?;
            CycleReport {
                run_id,
                status,
                candidate_id: Some(id),
                promoted: j.promote.then(|| (id, j.name.clone(), j.model.clone())),
                parent_score,
                candidate_score,
                error: None,
                log_path: log_path.clone(),
            }
        }
        Err(failure) => {
            let (error, corrupt) = match failure {
                Failure::Plain(e) => (e, None),
                Failure::Corrupt { path, reason } => (
                    format!("the candidate {} is unusable: {reason}", path.display()),
                    Some(path),
                ),
            };
            log.line(&format!("failed: {error}; the active model is unchanged"));
            let mut candidate = None;
            if let Some(path) = corrupt {
                if let Ok(hash) = crate::files::content_hash(&path) {
                    if tx.model_by_hash(&hash)?.is_none() {
                        let id = tx
                            .register_model(
                                &NewModel {
                                    content_hash: &hash,
                                    path: &path.to_string_lossy(),
                                    name: &format!("retrain-{run_id}"),
                                    config_json: "{}",
                                    provenance_json: "{}",
                                },
                                now,
                            )?
                            .id;
                        tx.set_trained(id, parent.map(|p| p.id), ModelStatus::Corrupt)?;
                        candidate = Some(id);
                    }
                }
            }
            let log_tail = runs::tail(&log.text, runs::LOG_KEEP);
            let end = RunEnd {
                candidate,
                ..RunEnd::failed(&log_tail, &error)
            };
            tx.finish_run(run_id, &end, now)?;
            let mut r = failed_report(run_id, error, log_path.clone());
            r.candidate_id = candidate;
            r
        }
    };
    Ok(report)
}

fn failed_report(run_id: i64, error: String, log_path: PathBuf) -> CycleReport {
    CycleReport {
        run_id,
        status: RunStatus::Failed,
        candidate_id: None,
        promoted: None,
        parent_score: None,
        candidate_score: None,
        error: Some(error),
        log_path,
    }
}

/// Prepares the data, trains, checks and scores: everything but the database.
fn judge(
    run_id: i64,
    run_dir: &Path,
    parent: Option<&Parent>,
    opts: &CycleOptions,
    log: &mut RunLog,
) -> Result<Judged, Failure> {
    let settings = opts.settings;
    let plain = Failure::Plain;
    if !metric_names().contains(&settings.metric.as_str()) {
        return Err(plain(format!(
            "unknown metric {:?}; use one of {}",
            settings.metric,
            metric_names().join(", ")
        )));
    }
    let threads = settings.train_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("gaze-retrain-{i}"))
        .build()
        .map_err(|e| plain(format!("starting {threads} training threads: {e}")))?;
    log.line(&format!("training on {threads} thread(s)"));
    pool.install(|| {
        let (folder, base) = data::locate(settings, &mut |m| log.line(m)).map_err(plain)?;
        let mut train_data = TrainData::from_prepared(&folder, &base)
            .map_err(|e| plain(format!("reading the training data: {e}")))?;
        let heldout = open_heldout(&folder, &base).map_err(plain)?;
        log.line(&format!(
            "data {base}: {} training images, {} validation, {} held-out ({:?})",
            train_data.train.num_images(),
            train_data.val.num_images(),
            heldout.image_count(),
            heldout.split()
        ));

        let cfg = training_config(opts, threads).map_err(plain)?;
        let warm = warm_start(parent, settings, &mut train_data, run_dir, &cfg, log)?;
        let train_opts = TrainOptions {
            out_dir: run_dir.to_path_buf(),
            checkpoint: warm,
            stop: opts.stop.clone(),
        };
        // The run folder keeps its train_log.jsonl, as `gaze train` writes it.
        let mut observer = StandardObserver::new(false);
        let outcome = train(&cfg, &train_data, &train_opts, &mut observer)
            .map_err(|e| plain(format!("training failed: {e}")))?;
        for r in &outcome.history {
            log.line(&format!(
                "epoch {}{}: loss {:.4}, validation BLEU-4 {:.4} ({:.1}s)",
                r.epoch,
                if r.partial { " (partial)" } else { "" },
                r.train_loss,
                r.val.bleu4,
                r.train_seconds
            ));
        }
        if outcome.stop == StopReason::Interrupted {
            return Err(plain("stopped before the end (shutting down)".into()));
        }
        let trained = outcome.best.clone().unwrap_or(outcome.checkpoint.clone());

        // The candidate: a clean model file (no optimiser state) named after the run.
        let name = format!("retrain-{run_id}");
        let path = run_dir.join(format!("{name}.safetensors"));
        clean_copy(
            &trained,
            &path,
            json!({
                "name": name,
                "parent_model_id": parent.map(|p| p.id),
                "retrain_run": run_id,
                "data_name": base,
                "trained_by": format!("gaze {}", env!("CARGO_PKG_VERSION")),
            }),
        )
        .map_err(plain)?;
        let candidate = check_candidate(&path, &train_data.word_map, opts)?;
        let corrupt = |reason: String| Failure::Corrupt {
            path: path.clone(),
            reason,
        };
        let cand_scores = score_split(
            &candidate,
            &heldout,
            settings.holdout_images,
            settings.beam_size,
        )
        .map_err(corrupt)?;
        let cand_value = cand_scores
            .metric(&settings.metric)
            .filter(|v| v.is_finite())
            .ok_or_else(|| corrupt(format!("no finite {} score", settings.metric)))?;
        log.line(&format!(
            "candidate: {} = {cand_value:.4} on {} held-out images",
            settings.metric, cand_scores.images
        ));
        let parent_scores = match parent {
            Some(p) => Some(score_parent(p, &heldout, settings, log).map_err(plain)?),
            None => None,
        };
        let promote = match &parent_scores {
            None => true,
            Some(s) => {
                let p = s.metric(&settings.metric).unwrap_or(f64::NEG_INFINITY);
                cand_value >= p + settings.margin
            }
        };
        Ok(Judged {
            path,
            model: Arc::new(candidate),
            name,
            candidate: cand_scores,
            parent: parent_scores,
            promote,
        })
    })
}

/// The training settings of a run: the configured file (or the defaults), bounded by the
/// run's epochs, minutes, device and threads.
fn training_config(opts: &CycleOptions, threads: usize) -> Result<TrainConfig, String> {
    let settings = opts.settings;
    let mut cfg = match &settings.train_config {
        Some(path) => {
            let text =
                crate::files::read_text(path).map_err(|e| format!("{}: {e}", path.display()))?;
            TrainConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => TrainConfig::default(),
    };
    cfg.epochs = if settings.epochs > 0 {
        settings.epochs
    } else {
        usize::MAX
    };
    cfg.max_minutes = (settings.max_minutes > 0.0).then_some(settings.max_minutes);
    cfg.device = opts.device.clone();
    cfg.workers = cfg.workers.min(threads).max(1);
    Ok(cfg)
}

/// With warm starts on and an active model: the training data speaks the active model's word
/// map, and training starts from a clean copy of its file. Returns that copy's path.
fn warm_start(
    parent: Option<&Parent>,
    settings: &RetrainOptions,
    train_data: &mut TrainData,
    run_dir: &Path,
    cfg: &TrainConfig,
    log: &mut RunLog,
) -> Result<Option<PathBuf>, Failure> {
    let Some(p) = parent.filter(|_| settings.warm_start) else {
        log.line(&format!("fresh model ({} encoder)", cfg.encoder));
        return Ok(None);
    };
    let unknown = data::remap_to(train_data, &p.model.word_map).map_err(Failure::Plain)?;
    if unknown > 0 {
        log.line(&format!(
            "{unknown} caption tokens are not in the active model's word map: <unk>"
        ));
    }
    let path = run_dir.join("warm_start.safetensors");
    clean_copy(&p.model.source, &path, json!({"name": "warm start"})).map_err(Failure::Plain)?;
    log.line(&format!(
        "warm start from model {} ({})",
        p.id,
        p.model.source.display()
    ));
    Ok(Some(path))
}

/// The active model's scores on the same held-out images as the candidate.
fn score_parent(
    p: &Parent,
    heldout: &PreparedSplit,
    settings: &RetrainOptions,
    log: &mut RunLog,
) -> Result<HeldOutScores, String> {
    let s = score_split(
        &p.model,
        heldout,
        settings.holdout_images,
        settings.beam_size,
    )
    .map_err(|e| format!("scoring the active model: {e}"))?;
    log.line(&format!(
        "active model {}: {} = {:.4}",
        p.id,
        settings.metric,
        s.metric(&settings.metric).unwrap_or(f64::NAN)
    ));
    Ok(s)
}

/// The held-out split: test, or val when the test split is empty or missing.
fn open_heldout(folder: &Path, base: &str) -> Result<PreparedSplit, String> {
    match PreparedSplit::open(folder, base, Split::Test) {
        Ok(s) if s.image_count() > 0 => Ok(s),
        _ => PreparedSplit::open(folder, base, Split::Val)
            .map_err(|e| format!("opening the held-out split: {e}")),
    }
}

/// Writes `from`'s model (weights, config, word map) to `to` without optimiser state or
/// training metadata, with `provenance`.
fn clean_copy(from: &Path, to: &Path, provenance: Value) -> Result<(), String> {
    let device = candle_core::Device::Cpu;
    let mf =
        file::read_model_file(from, &LoadOptions::default(), &device).map_err(|e| e.to_string())?;
    let mut tensors: Vec<_> = mf
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("optim."))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = to.with_extension("safetensors.tmp");
    file::write_model_file(&tmp, &tensors, &mf.config, &mf.word_map, &provenance)
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))
}

/// Loads a candidate model file and checks it: its word map is the training data's, and it
/// captions an image. A candidate failing here is never activated.
fn check_candidate(
    path: &Path,
    word_map: &crate::data::WordMap,
    opts: &CycleOptions,
) -> Result<CaptionModel, Failure> {
    let corrupt = |reason: String| Failure::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let device = crate::device::open_device(&opts.device).map_err(|e| corrupt(e.to_string()))?;
    let model = CaptionModel::load(path, &LoadOptions::default(), &device)
        .map_err(|e| corrupt(e.to_string()))?;
    if model.word_map.words() != word_map.words() {
        return Err(corrupt("its word map is not the training data's".into()));
    }
    let side = crate::data::image::TUTORIAL_SIZE as usize;
    let grey = candle_core::Tensor::zeros((1, 3, side, side), candle_core::DType::F32, &device)
        .map_err(|e| corrupt(e.to_string()))?;
    let caps = model
        .caption_images(&grey, &crate::model::BeamOptions::default())
        .map_err(|e| corrupt(format!("it cannot caption: {e}")))?;
    if caps.len() != 1 || !caps[0].score.is_finite() {
        return Err(corrupt("its caption score is not finite".into()));
    }
    Ok(model)
}
