//! The settings and file steps of `gaze demo`, which runs the whole system on a synthetic
//! dataset: a training configuration small enough to learn the synthetic captions in a few
//! minutes on two cores, the daemon's settings for a quick inbox, and the test images dropped
//! into it as a user would. The command runs the steps and tells the story.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::daemon::DaemonOptions;
use crate::data::karpathy::Split;
use crate::data::synth::{self, SynthOptions};
use crate::train::features::CacheMode;
use crate::train::TrainConfig;

/// A file step that failed: what was being done, and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct DemoError {
    what: String,
    #[source]
    source: std::io::Error,
}

fn io<T>(what: impl FnOnce() -> String, result: std::io::Result<T>) -> Result<T, DemoError> {
    result.map_err(|source| DemoError {
        what: what(),
        source,
    })
}

/// A small model on the built-in EfficientNet-Lite0 encoder (frozen, features cached in
/// memory), trained for at most `minutes` and validated on at most 100 of `val_images`.
pub fn training_config(minutes: f64, val_images: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        encoder: "efficientnet-lite0".into(),
        encoded_image_size: 8,
        emb_dim: 128,
        attention_dim: 128,
        decoder_dim: 256,
        decoder_lr: 1e-3,
        epochs: 100,
        max_minutes: Some(minutes),
        val_images: Some(val_images.min(100)),
        feature_cache: CacheMode::Memory,
        seed,
        ..TrainConfig::default()
    }
}

/// The daemon watching `inbox` with short settling and batching waits, so each caption shows
/// soon after its file lands.
pub fn daemon_options(inbox: &Path) -> Result<DaemonOptions, ConfigError> {
    let mut cfg = Config::default();
    cfg.watch.folders = vec![inbox.to_path_buf()];
    cfg.watch.stable_ms = 200;
    cfg.pipeline.max_wait_ms = 100;
    DaemonOptions::from_config(&cfg)
}

/// Starts the inbox and database afresh (the SQLite file and its `-wal` and `-shm`), so a
/// second demo run shows the same thing.
pub fn reset(inbox: &Path, db: &Path) -> Result<(), DemoError> {
    if inbox.exists() {
        io(
            || format!("clearing {}", inbox.display()),
            std::fs::remove_dir_all(inbox),
        )?;
    }
    io(
        || format!("creating {}", inbox.display()),
        std::fs::create_dir_all(inbox),
    )?;
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            io(
                || format!("removing {}", path.display()),
                std::fs::remove_file(&path),
            )?;
        }
    }
    Ok(())
}

/// Copies the test split's image files of the dataset `opts` describes into `inbox`, as a
/// user would, and returns their paths there.
pub fn drop_test_images(opts: &SynthOptions, inbox: &Path) -> Result<Vec<PathBuf>, DemoError> {
    let mut dropped = Vec::new();
    for item in synth::plan(opts)
        .into_iter()
        .filter(|i| i.split == Split::Test)
    {
        let from = opts.out_dir.join("images").join(&item.filename);
        let to = inbox.join(&item.filename);
        // Written under a hidden name and renamed, so the watcher sees whole files only.
        let partial = inbox.join(format!(".{}", item.filename));
        io(
            || format!("copying {} to {}", from.display(), inbox.display()),
            std::fs::copy(&from, &partial),
        )?;
        io(
            || format!("moving {} into place", partial.display()),
            std::fs::rename(&partial, &to),
        )?;
        dropped.push(to);
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_empties_the_inbox_and_removes_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let db = dir.path().join("gaze.db");
        std::fs::create_dir_all(&inbox).unwrap();
        std::fs::write(inbox.join("old.jpg"), b"x").unwrap();
        for name in ["gaze.db", "gaze.db-wal", "gaze.db-shm", "other.db"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        reset(&inbox, &db).unwrap();
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0);
        assert!(!db.exists() && !dir.path().join("gaze.db-wal").exists());
        assert!(dir.path().join("other.db").exists());

        let missing = SynthOptions {
            test: 1,
            ..SynthOptions::new(dir.path().join("nowhere"))
        };
        let err = drop_test_images(&missing, &inbox).unwrap_err();
        assert!(err.to_string().starts_with("copying "), "{err}");
    }
}
