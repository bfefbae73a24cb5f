//! Settings for `gaze watch`, layered: built-in defaults, then a TOML file, then `GAZE_*`
//! environment variables, then command-line flags (the CLI applies those last), each layer
//! overriding only the keys it sets.
//!
//! `config.toml` at the repository root documents every key with its default; a unit test keeps
//! it equal to [`Config::default`]. Relative paths in a file are taken relative to that file's
//! folder; relative paths from the environment or flags, relative to the working directory.
//! Unknown keys are refused (a typo should not be silently ignored), except the reserved
//! `[retrain]` section, which is read but not used yet.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable naming a config file when `--config` is not given.
pub const CONFIG_ENV: &str = "GAZE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: String,
        value: String,
        reason: String,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub watch: WatchSection,
    pub database: DatabaseSection,
    pub model: ModelSection,
    pub pipeline: PipelineSection,
    pub limits: LimitsSection,
    pub log: LogSection,
    /// Reserved for scheduled retraining; accepted and kept, not used yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrain: Option<toml::Table>,
}

/// What to watch and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSection {
    /// Folders watched recursively.
    pub folders: Vec<PathBuf>,
    /// Globs (case-insensitive) a file's path relative to its watched folder must match;
    /// `*` also crosses `/`.
    pub include: Vec<String>,
    /// Globs that exclude a file even when it is included.
    pub exclude: Vec<String>,
    /// Follow symbolic links (a folder reached twice is visited once, so loops are harmless).
    pub follow_symlinks: bool,
    /// Poll the folders instead of using kernel notifications (network filesystems).
    pub poll: bool,
    pub poll_interval_ms: u64,
    /// A full rescan every this many seconds catches events the filesystem lost (0: never).
    pub rescan_interval_secs: u64,
    /// A file is taken once its size and modification time have not changed for this long
    /// (or at once on a close-after-write event).
    pub stable_ms: u64,
}

impl Default for WatchSection {
    fn default() -> Self {
        WatchSection {
            folders: Vec::new(),
            include: [
                "*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.gif", "*.tif", "*.tiff",
            ]
            .map(String::from)
            .to_vec(),
            exclude: ["**/.*", "*.part", "*.tmp", "*.crdownload"]
                .map(String::from)
                .to_vec(),
            follow_symlinks: false,
            poll: false,
            poll_interval_ms: 2000,
            rescan_interval_secs: 300,
            stable_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSection {
    pub path: PathBuf,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection {
            path: PathBuf::from("gaze.db"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A gaze model file, or tutorial state dicts with `word_map`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub word_map: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    pub device: String,
    pub beam_size: usize,
    pub max_steps: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: None,
            word_map: None,
            device: "cpu".into(),
            beam_size: 3,
            max_steps: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSection {
    pub batch_size: usize,
    pub max_wait_ms: u64,
    pub decode_threads: usize,
    /// Files waiting for a decode thread (the bound that gives backpressure).
    pub queue_depth: usize,
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            batch_size: 8,
            max_wait_ms: 250,
            decode_threads: 2,
            queue_depth: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Images with more pixels are refused before decoding (decompression bombs).
    pub max_pixels: u64,
    /// Files larger than this are refused without being read.
    pub max_file_bytes: u64,
    /// A failing file is tried this many times, and again whenever it changes.
    pub max_attempts: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_pixels: 120_000_000,
            max_file_bytes: 64 * 1024 * 1024,
            max_attempts: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// error, warn, info, debug, trace, or a tracing env-filter string.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the environment as `env` reports it
    /// (`|k| std::env::var(k).ok()` in the binary).
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    /// Reads a TOML file over the defaults; relative paths become relative to its folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::from_toml_str(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_relative_to(base);
        Ok(cfg)
    }

    pub fn from_toml_str(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve_relative_to(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.watch.folders.iter_mut().for_each(fix);
        fix(&mut self.database.path);
        if let Some(p) = self.model.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.model.word_map.as_mut() {
            fix(p);
        }
    }

    /// Applies every `GAZE_*` variable that `env` reports. The names are listed in
    /// `config.toml` beside their keys.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                var: var.into(),
                value: value.into(),
                reason: e.to_string(),
            })
        }
        fn boolean(var: &str, value: &str) -> Result<bool, ConfigError> {
            match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" | "" => Ok(false),
                _ => Err(ConfigError::Env {
                    var: var.into(),
                    value: value.into(),
                    reason: "expected true/false, yes/no, on/off or 1/0".into(),
                }),
            }
        }
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let set = |var: &str,
                   apply: &mut dyn FnMut(&str) -> Result<(), ConfigError>|
         -> Result<(), ConfigError> {
            match env(var) {
                Some(v) => apply(&v),
                None => Ok(()),
            }
        };
        let w = &mut self.watch;
        set("GAZE_FOLDERS", &mut |v| {
            w.folders = std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            Ok(())
        })?;
        set("GAZE_INCLUDE", &mut |v| {
            w.include = list(v);
            Ok(())
        })?;
        set("GAZE_EXCLUDE", &mut |v| {
            w.exclude = list(v);
            Ok(())
        })?;
        set("GAZE_FOLLOW_SYMLINKS", &mut |v| {
            w.follow_symlinks = boolean("GAZE_FOLLOW_SYMLINKS", v)?;
            Ok(())
        })?;
        set("GAZE_POLL", &mut |v| {
            w.poll = boolean("GAZE_POLL", v)?;
            Ok(())
        })?;
        set("GAZE_POLL_INTERVAL_MS", &mut |v| {
            w.poll_interval_ms = parse("GAZE_POLL_INTERVAL_MS", v)?;
            Ok(())
        })?;
        set("GAZE_RESCAN_INTERVAL_SECS", &mut |v| {
            w.rescan_interval_secs = parse("GAZE_RESCAN_INTERVAL_SECS", v)?;
            Ok(())
        })?;
        set("GAZE_STABLE_MS", &mut |v| {
            w.stable_ms = parse("GAZE_STABLE_MS", v)?;
            Ok(())
        })?;
        let d = &mut self.database;
        set("GAZE_DB", &mut |v| {
            d.path = PathBuf::from(v);
            Ok(())
        })?;
        let m = &mut self.model;
        set("GAZE_MODEL", &mut |v| {
            m.path = Some(PathBuf::from(v));
            Ok(())
        })?;
        set("GAZE_WORD_MAP", &mut |v| {
            m.word_map = Some(PathBuf::from(v));
            Ok(())
        })?;
        set("GAZE_DEVICE", &mut |v| {
            m.device = v.trim().to_string();
            Ok(())
        })?;
        set("GAZE_BEAM_SIZE", &mut |v| {
            m.beam_size = parse("GAZE_BEAM_SIZE", v)?;
            Ok(())
        })?;
        set("GAZE_MAX_STEPS", &mut |v| {
            m.max_steps = parse("GAZE_MAX_STEPS", v)?;
            Ok(())
        })?;
        let p = &mut self.pipeline;
        set("GAZE_BATCH_SIZE", &mut |v| {
            p.batch_size = parse("GAZE_BATCH_SIZE", v)?;
            Ok(())
        })?;
        set("GAZE_MAX_WAIT_MS", &mut |v| {
            p.max_wait_ms = parse("GAZE_MAX_WAIT_MS", v)?;
            Ok(())
        })?;
        set("GAZE_DECODE_THREADS", &mut |v| {
            p.decode_threads = parse("GAZE_DECODE_THREADS", v)?;
            Ok(())
        })?;
        set("GAZE_QUEUE_DEPTH", &mut |v| {
            p.queue_depth = parse("GAZE_QUEUE_DEPTH", v)?;
            Ok(())
        })?;
        let l = &mut self.limits;
        set("GAZE_MAX_PIXELS", &mut |v| {
            l.max_pixels = parse("GAZE_MAX_PIXELS", v)?;
            Ok(())
        })?;
        set("GAZE_MAX_FILE_BYTES", &mut |v| {
            l.max_file_bytes = parse("GAZE_MAX_FILE_BYTES", v)?;
            Ok(())
        })?;
        set("GAZE_MAX_ATTEMPTS", &mut |v| {
            l.max_attempts = parse("GAZE_MAX_ATTEMPTS", v)?;
            Ok(())
        })?;
        let g = &mut self.log;
        set("GAZE_LOG", &mut |v| {
            g.level = v.trim().to_string();
            Ok(())
        })?;
        Ok(())
    }

    /// Checks what the types cannot: counts that must be positive, and that a model is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("pipeline.batch_size", self.pipeline.batch_size),
            ("pipeline.decode_threads", self.pipeline.decode_threads),
            ("pipeline.queue_depth", self.pipeline.queue_depth),
            ("model.beam_size", self.model.beam_size),
            ("model.max_steps", self.model.max_steps),
            ("limits.max_attempts", self.limits.max_attempts as usize),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if self.watch.poll && self.watch.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "watch.poll_interval_ms must be at least 1 when polling".into(),
            ));
        }
        if self.model.path.is_none() {
            return Err(ConfigError::Invalid(
                "no model: set [model] path in the config file, GAZE_MODEL, or --model".into(),
            ));
        }
        if self.watch.folders.is_empty() {
            return Err(ConfigError::Invalid(
                "no folders to watch: set [watch] folders, GAZE_FOLDERS, or give folders on the command line".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SHIPPED: &str = include_str!("../config.toml");

    #[test]
    fn the_shipped_file_is_the_defaults_and_names_every_key() {
        let parsed = Config::from_toml_str(SHIPPED).unwrap();
        assert_eq!(parsed, Config::default());
        // Every key (with optional ones filled in) appears in the file, set or commented out.
        let mut full = Config::default();
        full.model.path = Some("m".into());
        full.model.word_map = Some("w".into());
        let value = toml::Value::try_from(&full).unwrap();
        for (section, table) in value.as_table().unwrap() {
            assert!(
                SHIPPED.contains(&format!("[{section}]")),
                "config.toml lacks [{section}]"
            );
            for key in table.as_table().unwrap().keys() {
                let documented = SHIPPED.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(&format!("{key} ="))
                });
                assert!(documented, "config.toml does not document {section}.{key}");
            }
        }
        assert!(
            SHIPPED.contains("[retrain]"),
            "the reserved section is mentioned"
        );
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gaze.toml");
        std::fs::write(
            &file,
            "[watch]\nfolders = [\"in\"]\nstable_ms = 10\n[pipeline]\nbatch_size = 4\n\
             [model]\npath = \"/abs/model.safetensors\"\n[retrain]\nevery = \"1d\"\n",
        )
        .unwrap();
        let env: HashMap<&str, &str> = [
            ("GAZE_BATCH_SIZE", "16"),
            ("GAZE_POLL", "yes"),
            ("GAZE_EXCLUDE", "*.raw, *.tmp"),
        ]
        .into();
        let cfg = Config::load(Some(&file), |k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(cfg.watch.folders, vec![dir.path().join("in")]);
        assert_eq!(cfg.watch.stable_ms, 10); // file over default
        assert_eq!(cfg.pipeline.batch_size, 16); // env over file
        assert!(cfg.watch.poll);
        assert_eq!(cfg.watch.exclude, vec!["*.raw", "*.tmp"]);
        assert_eq!(cfg.pipeline.decode_threads, 2); // default
        assert_eq!(
            cfg.model.path.as_deref(),
            Some(Path::new("/abs/model.safetensors"))
        );
        assert!(cfg.retrain.is_some());
        cfg.validate().unwrap();
    }

    #[test]
    fn errors_name_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[pipeline]\nbatch_sise = 4\n").unwrap();
        let e = Config::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("batch_sise"), "{e}");
        let e = Config::load(None, |k| {
            (k == "GAZE_BATCH_SIZE").then(|| "many".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("GAZE_BATCH_SIZE"), "{e}");
        let mut cfg = Config::default();
        cfg.model.path = Some("m".into());
        cfg.watch.folders = vec!["f".into()];
        cfg.pipeline.batch_size = 0;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
        cfg.pipeline.batch_size = 1;
        cfg.model.path = None;
        assert!(cfg.validate().unwrap_err().to_string().contains("model"));
    }
}
