//! Which model captions, and loading it safely: the model given at start is registered (keyed
//! by the BLAKE3 hash of its file) and either becomes active or gives way to the registry's
//! active model; a registered model is loaded only when its file still has the recorded hash.
//! These run on the store of whoever calls them (the daemon at start, retraining, a command),
//! never on a stage's own.

use std::path::Path;
use std::sync::Arc;

use super::DaemonError;
use crate::model::CaptionModel;
use crate::store::api::CaptionStore;
use crate::store::registry::{ModelRow, NewModel, Recaption};
use crate::store::{unix_now, StoreError};

/// A loaded model and its row in `models`.
#[derive(Clone)]
pub struct ActiveModel {
    pub id: i64,
    pub name: String,
    pub model: Arc<CaptionModel>,
}

/// Records a loaded model in `models` (keyed by the BLAKE3 hash of its file) and makes it the
/// active one.
pub fn register_model(
    store: &mut dyn CaptionStore,
    model: Arc<CaptionModel>,
) -> Result<ActiveModel, DaemonError> {
    let (active, _) = register_model_as(store, model, true)?;
    Ok(active)
}

/// Records a loaded model in `models`; with `activate`, also makes it the active one (recorded
/// in the activation history, nothing queued again). Returns it and whether it was registered
/// before.
pub(crate) fn register_model_as(
    store: &mut dyn CaptionStore,
    model: Arc<CaptionModel>,
    activate: bool,
) -> Result<(ActiveModel, bool), DaemonError> {
    let path = model.source.clone();
    let hash = crate::files::content_hash(&path).map_err(|source| DaemonError::Io {
        path: path.clone(),
        source,
    })?;
    let name = model
        .provenance
        .get("name")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| model_name(&path));
    let config = serde_json::to_string(&model.config).expect("a config serialises");
    let provenance = model.provenance.to_string();
    // Recorded absolute, so the row still names the file when read from elsewhere.
    let path_text = std::fs::canonicalize(&path)
        .unwrap_or_else(|_| path.clone())
        .to_string_lossy()
        .into_owned();
    let registry_err = registry_error(&path);
    let now = unix_now();
    let mut tx = store.begin().map_err(&registry_err)?;
    let registered = tx
        .register_model(
            &NewModel {
                content_hash: &hash,
                path: &path_text,
                name: &name,
                config_json: &config,
                provenance_json: &provenance,
            },
            now,
        )
        .map_err(&registry_err)?;
    if activate {
        tx.activate(registered.id, "start", Recaption::None, now)
            .map_err(&registry_err)?;
    }
    tx.commit().map_err(&registry_err)?;
    let active = ActiveModel {
        id: registered.id,
        name,
        model,
    };
    Ok((active, registered.known))
}

/// A store error met while recording the model at `path`.
fn registry_error(path: &Path) -> impl Fn(StoreError) -> DaemonError + '_ {
    move |e| DaemonError::Registry {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn model_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Registers the model the daemon was given and decides which model captions:
/// - a model not seen before becomes active, and stored images it has not captioned are
///   queued again (the user brought a new model);
/// - a known model that is no longer active (the registry moved on: a promotion, `gaze models
///   activate` or `rollback`) gives way to the registry's active model, when that one's file
///   still loads and has the recorded hash; nothing is queued again.
pub(crate) fn choose_model(
    store: &mut dyn CaptionStore,
    model: Arc<CaptionModel>,
) -> Result<ActiveModel, DaemonError> {
    let location = store.location();
    let device = model.device.clone();
    let (configured, known) = register_model_as(store, model, false)?;
    let model_path = configured.model.source.clone();
    let registry_err = registry_error(&model_path);
    let current = store.active_model().map_err(&registry_err)?;
    if let Some(row) = current.filter(|r| known && r.id != configured.id) {
        match load_registered(&row, &device, None) {
            Ok(m) => {
                tracing::info!(
                    model = %row.name,
                    model_id = row.id,
                    configured = %configured.name,
                    "keeping the registry's active model"
                );
                return Ok(ActiveModel {
                    id: row.id,
                    name: row.name,
                    model: Arc::new(m),
                });
            }
            Err(reason) => tracing::warn!(
                model_id = row.id,
                %reason,
                "the registry's active model cannot be used; the configured model takes over"
            ),
        }
    }
    // Becoming active (a new model, or one taking over again) queues what it has not captioned.
    let activation = store
        .activate(configured.id, "start", Recaption::All, unix_now())
        .map_err(&registry_err)?;
    tracing::info!(
        model = %configured.name,
        model_id = configured.id,
        requeued = activation.requeued,
        db = %location,
        "model active"
    );
    Ok(configured)
}

/// Loads a registered model's file, checking its hash against the registry's. Where the
/// recorded path is missing on this machine, `models_dir` (a share mounted elsewhere) is
/// searched for a file of the same name.
pub(crate) fn load_registered(
    row: &ModelRow,
    device: &candle_core::Device,
    models_dir: Option<&Path>,
) -> Result<CaptionModel, String> {
    let recorded = Path::new(&row.path);
    let elsewhere = models_dir
        .zip(recorded.file_name())
        .map(|(dir, name)| dir.join(name))
        .filter(|p| !recorded.exists() && p.exists());
    let path = elsewhere.as_deref().unwrap_or(recorded);
    let hash = crate::files::content_hash(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if hash != row.content_hash {
        return Err(format!(
            "{}: the file changed since it was registered (hash {} instead of {})",
            path.display(),
            &hash[..12],
            &row.content_hash[..row.content_hash.len().min(12)]
        ));
    }
    CaptionModel::load(path, &crate::model::LoadOptions::default(), device)
        .map_err(|e| e.to_string())
}
