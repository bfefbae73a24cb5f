//! Settings for `gaze watch` and `gaze retrain`, layered: built-in defaults, then a TOML file,
//! then `GAZE_*` environment variables, then command-line flags ([`Config::layered`]), each
//! layer overriding only the keys it sets. The variables are one table ([`ENV_VARS`]: name,
//! key, conversion); a flag names its key and goes through the same conversion.
//!
//! This is a plain settings layer: strings, numbers and paths. The modules that use a section
//! build their typed options from it (`DaemonOptions::from_config`,
//! `RetrainOptions::from_config`, which also parses the retraining schedule).
//!
//! `config.toml` at the repository root documents every key with its default; a unit test keeps
//! it equal to [`Config::default`]. Relative paths in a file are taken relative to that file's
//! folder; relative paths from the environment or flags, relative to the working directory.
//! Unknown keys are refused (a typo should not be silently ignored). Every numeric setting
//! has a range ([`Config::check_settings`]); an error names the key, the layer its value came
//! from (the file, the variable or the flag) and the range.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::model::beam::{BeamOptions, LengthPenalty, DEFAULT_BAD_ENDINGS};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

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
    #[error("command-line flag {flag} {value:?}: {reason}")]
    Flag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("{key} = {value}{origin} is outside {allowed}")]
    OutOfRange {
        key: String,
        value: String,
        origin: Origin,
        allowed: String,
    },
    #[error("{key} = {value:?}{origin}: {reason}")]
    BadValue {
        key: String,
        value: String,
        origin: Origin,
        reason: String,
    },
    #[error("{key} = {value:?}{origin}: {reason}")]
    LogLevel {
        key: String,
        value: String,
        origin: Origin,
        reason: String,
    },
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A config file (the key was present in it).
    File(PathBuf),
    /// An environment variable, by name.
    Env(&'static str),
    /// A command-line flag, by name (`--batch-size`).
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "command-line flag {flag}"),
        }
    }
}

/// A source in an error message: " (from ...)", or nothing for a default or a value set in
/// code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(pub Option<Source>);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(source) => write!(f, " (from {source})"),
            None => Ok(()),
        }
    }
}

/// The source of each key set by a layer above the defaults ("pipeline.batch_size").
/// Provenance is not a setting: two configs with the same values are equal wherever their
/// values came from, so this always compares equal.
#[derive(Debug, Clone, Default)]
pub struct Sources(BTreeMap<String, Source>);

impl Sources {
    fn set(&mut self, key: &str, source: Source) {
        self.0.insert(key.to_string(), source);
    }
}

impl PartialEq for Sources {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The log levels a bare word may name (any case).
pub const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Parses a log level: one of [`LOG_LEVELS`] (any case), or `tracing` env-filter directives
/// (`gaze=debug,warn`). `EnvFilter` takes an unknown bare word ("loud") as a target name and
/// then logs nothing at all, so a bare word must be a level; other directives need `=`.
/// `key` and `origin` name the setting in the error.
pub fn log_filter(key: &str, spec: &str, origin: Option<Source>) -> Result<EnvFilter, ConfigError> {
    let accepted = "expected error, warn, info, debug, trace or off (any case), \
                    or tracing directives such as \"gaze=debug,warn\"";
    let err = |reason: String| ConfigError::LogLevel {
        key: key.to_string(),
        value: spec.to_string(),
        origin: Origin(origin.clone()),
        reason,
    };
    let mut directives = Vec::new();
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if d.contains('=') {
            directives.push(d.to_string());
        } else if LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)) {
            directives.push(d.to_ascii_lowercase());
        } else {
            return Err(err(format!("{d:?} is not a log level; {accepted}")));
        }
    }
    if directives.is_empty() {
        return Err(err(format!("no log level given; {accepted}")));
    }
    EnvFilter::builder()
        .parse(directives.join(","))
        .map_err(|e| err(format!("not a valid filter ({e}); {accepted}")))
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
    pub retrain: RetrainSection,
    pub worker: WorkerSection,
    pub http: HttpSection,
    /// Where each key's value came from, for error messages.
    #[serde(skip)]
    pub sources: Sources,
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
    /// Named roots of shared folders (name -> where this machine mounts it): images under one
    /// are recorded as `name:/relative/path`, so machines that mount it elsewhere agree.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub roots: std::collections::BTreeMap<String, PathBuf>,
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
            roots: std::collections::BTreeMap::new(),
        }
    }
}

/// `gaze worker`: captioning from a shared PostgreSQL store, on any number of machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    /// How long a claim on an image lasts without being extended, in seconds.
    pub lease_seconds: u64,
    /// Where this machine finds the registry's model files when their recorded paths are not
    /// there (a shared folder mounted elsewhere): looked up by file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            lease_seconds: 60,
            models_dir: None,
        }
    }
}

/// `gaze serve` and `gaze watch --http`: the HTTP API, metrics and web page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// The address to bind, `host:port`.
    pub listen: String,
    /// The bearer token every route but `/healthz` needs; required off loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Larger request bodies are refused (413).
    pub max_body_bytes: u64,
    /// Uploads being read or decoded at once; more are refused (503).
    pub max_concurrent_uploads: usize,
    /// Decoded uploads waiting for a batch; a full queue refuses more (503, Retry-After).
    pub queue_depth: usize,
    /// The longest wait for a caption (504 after it).
    pub request_timeout_ms: u64,
    /// Threads of the HTTP runtime.
    pub threads: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:8080".into(),
            token: None,
            max_body_bytes: 32 << 20,
            max_concurrent_uploads: 64,
            queue_depth: 64,
            request_timeout_ms: 60_000,
            threads: 2,
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
    /// What the CPU encoder's convolutions compute in: f32, bf16 (AVX-512 BF16 CPUs) or auto.
    pub precision: String,
    pub beam_size: usize,
    pub max_steps: usize,
    /// How the final beam is picked: none, avg, wu:ALPHA or power:ALPHA.
    pub length_penalty: String,
    pub forbid_unk: bool,
    pub block_trigrams: bool,
    pub no_repeat: bool,
    /// Whether a caption may not end on a word of `bad_ending_words`.
    pub bad_endings: bool,
    pub bad_ending_words: Vec<String>,
    pub temperature: f64,
    /// Diverse beam search: groups (1: the plain search) and the cost of a word per earlier
    /// group that chose it at the same step.
    pub diverse_groups: usize,
    pub diversity: f64,
}

impl Default for ModelSection {
    fn default() -> Self {
        let search = BeamOptions::default();
        ModelSection {
            path: None,
            word_map: None,
            device: "cpu".into(),
            precision: "f32".into(),
            beam_size: 3,
            max_steps: 50,
            length_penalty: search.length_penalty.to_string(),
            forbid_unk: search.forbid_unk,
            block_trigrams: search.block_repeated_trigrams,
            no_repeat: search.no_repeat,
            bad_endings: false,
            bad_ending_words: DEFAULT_BAD_ENDINGS.iter().map(|w| w.to_string()).collect(),
            temperature: search.temperature.into(),
            diverse_groups: search.groups,
            diversity: search.diversity.into(),
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

/// Which stored images a newly active model captions again (the store owns the policy).
pub use crate::store::registry::Recaption;

/// Scheduled retraining: when, on what, for how long, and when a candidate replaces the
/// active model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainSection {
    /// Run retraining cycles inside `gaze watch`.
    pub enabled: bool,
    /// An interval ("90s", "30m", "6h", "1d", "1h30m") or a 5-field cron expression in UTC
    /// ("0 3 * * *"); also "@hourly", "@daily", "@weekly".
    pub schedule: String,
    /// Run a scheduled cycle only when the data or these settings changed since the last
    /// completed run (`gaze retrain --now` always runs).
    pub only_when_changed: bool,
    /// Folder for each run's files (log, training checkpoints, the candidate model).
    pub work_dir: PathBuf,
    /// A folder of prepared files (the tutorial's layout) and their base name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_name: Option<String>,
    /// A folder of labelled images: `x.jpg` with its captions in `x.txt`, one per line. They
    /// are prepared (again when they change) into `work_dir/labelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
    /// Captions per image and minimum word frequency when preparing `images`.
    pub captions_per_image: u32,
    pub min_word_freq: u32,
    /// Start from the active model's weights (captions are re-encoded with its word map).
    pub warm_start: bool,
    /// A training config (TOML, as `gaze train --config`) for the other hyperparameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_config: Option<PathBuf>,
    /// Budget: at most this many epochs and/or minutes (0: no limit from that side).
    pub epochs: usize,
    pub max_minutes: f64,
    /// Promotion rule: the candidate's `metric` on the held-out split must be at least the
    /// active model's plus `margin`.
    pub metric: String,
    pub margin: f64,
    /// Held-out images scored per model (the test split, or val when there is none).
    pub holdout_images: usize,
    /// Beams when scoring the held-out split.
    pub beam_size: usize,
    /// Threads for training (0: half the cores, at least one), so captioning keeps the rest.
    pub threads: usize,
    /// After a promotion, which stored images the new model captions again.
    pub recaption: Recaption,
}

impl Default for RetrainSection {
    fn default() -> Self {
        RetrainSection {
            enabled: false,
            schedule: "6h".into(),
            only_when_changed: true,
            work_dir: PathBuf::from("retrain"),
            prepared: None,
            data_name: None,
            images: None,
            captions_per_image: 5,
            min_word_freq: 1,
            warm_start: true,
            train_config: None,
            epochs: 1,
            max_minutes: 30.0,
            metric: "cider_d".into(),
            margin: 0.0,
            holdout_images: 500,
            beam_size: 3,
            threads: 0,
            recaption: Recaption::Missing,
        }
    }
}

/// One `GAZE_*` variable: its name, the key it sets, and how it converts the text. A
/// command-line flag names the key and goes through the same conversion.
struct EnvVar {
    var: &'static str,
    key: &'static str,
    set: fn(&mut Config, &OsStr) -> Result<(), String>,
}

/// A table row: the variable, the field it sets (which also spells its key), the conversion.
macro_rules! env_var {
    ($var:literal => $section:ident . $field:ident, $convert:expr) => {
        EnvVar {
            var: $var,
            key: concat!(stringify!($section), ".", stringify!($field)),
            set: |cfg, value| {
                cfg.$section.$field = $convert(value)?;
                Ok(())
            },
        }
    };
}

/// Every environment variable and its key.
const ENV_VARS: &[EnvVar] = &[
    env_var!("GAZE_FOLDERS" => watch.folders, folders),
    env_var!("GAZE_INCLUDE" => watch.include, list),
    env_var!("GAZE_EXCLUDE" => watch.exclude, list),
    env_var!("GAZE_FOLLOW_SYMLINKS" => watch.follow_symlinks, boolean),
    env_var!("GAZE_POLL" => watch.poll, boolean),
    env_var!("GAZE_POLL_INTERVAL_MS" => watch.poll_interval_ms, parse),
    env_var!("GAZE_RESCAN_INTERVAL_SECS" => watch.rescan_interval_secs, parse),
    env_var!("GAZE_STABLE_MS" => watch.stable_ms, parse),
    env_var!("GAZE_LEASE_SECONDS" => worker.lease_seconds, parse),
    env_var!("GAZE_HTTP_LISTEN" => http.listen, text),
    env_var!("GAZE_HTTP_TOKEN" => http.token, some_text),
    env_var!("GAZE_DB" => database.path, path),
    env_var!("GAZE_MODEL" => model.path, some_path),
    env_var!("GAZE_WORD_MAP" => model.word_map, some_path),
    env_var!("GAZE_DEVICE" => model.device, text),
    env_var!("GAZE_PRECISION" => model.precision, text),
    env_var!("GAZE_BEAM_SIZE" => model.beam_size, parse),
    env_var!("GAZE_MAX_STEPS" => model.max_steps, parse),
    env_var!("GAZE_BATCH_SIZE" => pipeline.batch_size, parse),
    env_var!("GAZE_MAX_WAIT_MS" => pipeline.max_wait_ms, parse),
    env_var!("GAZE_DECODE_THREADS" => pipeline.decode_threads, parse),
    env_var!("GAZE_QUEUE_DEPTH" => pipeline.queue_depth, parse),
    env_var!("GAZE_MAX_PIXELS" => limits.max_pixels, parse),
    env_var!("GAZE_MAX_FILE_BYTES" => limits.max_file_bytes, parse),
    env_var!("GAZE_MAX_ATTEMPTS" => limits.max_attempts, parse),
    env_var!("GAZE_LOG" => log.level, text),
    env_var!("GAZE_RETRAIN" => retrain.enabled, boolean),
    env_var!("GAZE_RETRAIN_SCHEDULE" => retrain.schedule, text),
    env_var!("GAZE_RETRAIN_WORK_DIR" => retrain.work_dir, path),
    env_var!("GAZE_RETRAIN_PREPARED" => retrain.prepared, some_path),
    env_var!("GAZE_RETRAIN_DATA_NAME" => retrain.data_name, some_text),
    env_var!("GAZE_RETRAIN_IMAGES" => retrain.images, some_path),
    env_var!("GAZE_RETRAIN_EPOCHS" => retrain.epochs, parse),
    env_var!("GAZE_RETRAIN_MAX_MINUTES" => retrain.max_minutes, parse),
    env_var!("GAZE_RETRAIN_METRIC" => retrain.metric, text),
    env_var!("GAZE_RETRAIN_MARGIN" => retrain.margin, parse),
    env_var!("GAZE_RETRAIN_THREADS" => retrain.threads, parse),
    env_var!("GAZE_RETRAIN_RECAPTION" => retrain.recaption, parse),
];

// Conversions of a value; the caller names the variable or flag in an error. Values other
// than paths are text (a variable read as a `String`, a flag written from its typed value).

fn parse<T: std::str::FromStr>(value: &OsStr) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    value
        .to_string_lossy()
        .trim()
        .parse()
        .map_err(|e: T::Err| e.to_string())
}

fn boolean(value: &OsStr) -> Result<bool, String> {
    match value.to_string_lossy().trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true/false, yes/no, on/off or 1/0".into()),
    }
}

/// A ','-separated list.
fn list(value: &OsStr) -> Result<Vec<String>, String> {
    Ok(value
        .to_string_lossy()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

/// Paths separated as in PATH (':' on Unix).
fn folders(value: &OsStr) -> Result<Vec<PathBuf>, String> {
    Ok(std::env::split_paths(value)
        .filter(|p| !p.as_os_str().is_empty())
        .collect())
}

fn path(value: &OsStr) -> Result<PathBuf, String> {
    Ok(PathBuf::from(value))
}

fn some_path(value: &OsStr) -> Result<Option<PathBuf>, String> {
    Ok(Some(PathBuf::from(value)))
}

fn text(value: &OsStr) -> Result<String, String> {
    Ok(value.to_string_lossy().trim().to_string())
}

fn some_text(value: &OsStr) -> Result<Option<String>, String> {
    text(value).map(Some)
}

/// The command-line layer: each flag given, with the key it replaces. A value is converted as
/// the key's environment variable is (a path keeps its bytes); folders given as arguments
/// replace `watch.folders`.
#[derive(Debug, Default)]
pub struct Flags {
    given: Vec<(&'static str, &'static str, OsString)>,
    folders: Vec<PathBuf>,
}

impl Flags {
    pub fn new() -> Flags {
        Flags::default()
    }

    /// `flag` sets `key` to `value`, when given.
    pub fn value(
        mut self,
        flag: &'static str,
        key: &'static str,
        value: Option<impl fmt::Display>,
    ) -> Flags {
        if let Some(v) = value {
            self.given.push((flag, key, v.to_string().into()));
        }
        self
    }

    /// `flag` sets the path `key` to `value`, when given.
    pub fn path(mut self, flag: &'static str, key: &'static str, value: Option<&Path>) -> Flags {
        if let Some(v) = value {
            self.given.push((flag, key, v.as_os_str().to_owned()));
        }
        self
    }

    /// A switch: when on, `flag` sets `key` to true (off leaves the key as it is).
    pub fn switch(self, flag: &'static str, key: &'static str, on: bool) -> Flags {
        self.value(flag, key, on.then_some(true))
    }

    /// Folders given as arguments; none leaves `watch.folders` as it is.
    pub fn folders(mut self, dirs: &[PathBuf]) -> Flags {
        self.folders = dirs.to_vec();
        self
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

    /// Every layer: defaults, then the file (`file`, else the one `GAZE_CONFIG` names), then
    /// the environment, then `flags`.
    pub fn layered(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &Flags,
    ) -> Result<Config, ConfigError> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env(CONFIG_ENV).map(PathBuf::from));
        let mut cfg = Config::load(file.as_deref(), &env)?;
        cfg.apply_flags(flags)?;
        Ok(cfg)
    }

    /// Reads a TOML file over the defaults; relative paths become relative to its folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::files::read_text(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::from_toml_str(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        })?;
        // The text parsed as a Config just above, so it is a table of tables.
        if let Ok(table) = text.parse::<toml::Table>() {
            for (section, keys) in &table {
                for key in keys.as_table().into_iter().flat_map(|t| t.keys()) {
                    cfg.sources.set(
                        &format!("{section}.{key}"),
                        Source::File(path.to_path_buf()),
                    );
                }
            }
        }
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
        self.watch.roots.values_mut().for_each(fix);
        self.worker.models_dir.iter_mut().for_each(fix);
        // A server's URL is not a path.
        if !crate::store::postgres::is_url(&self.database.path.to_string_lossy()) {
            fix(&mut self.database.path);
        }
        if let Some(p) = self.model.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.model.word_map.as_mut() {
            fix(p);
        }
        let r = &mut self.retrain;
        fix(&mut r.work_dir);
        for p in [&mut r.prepared, &mut r.images, &mut r.train_config]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
    }

    /// Applies every `GAZE_*` variable that `env` reports (the table [`ENV_VARS`]; the names
    /// are listed in `config.toml` beside their keys) and records each as its key's source.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for e in ENV_VARS {
            if let Some(value) = env(e.var) {
                (e.set)(self, OsStr::new(&value)).map_err(|reason| ConfigError::Env {
                    var: e.var.into(),
                    value,
                    reason,
                })?;
                self.sources.set(e.key, Source::Env(e.var));
            }
        }
        Ok(())
    }

    /// Applies the command-line layer, through the conversions of [`ENV_VARS`], and records
    /// each flag as its key's source.
    pub fn apply_flags(&mut self, flags: &Flags) -> Result<(), ConfigError> {
        if !flags.folders.is_empty() {
            self.watch.folders = flags.folders.clone();
        }
        for (flag, key, value) in &flags.given {
            let setting = ENV_VARS.iter().find(|e| e.key == *key).ok_or_else(|| {
                ConfigError::Invalid(format!("{flag}: {key} cannot be set from the command line"))
            })?;
            (setting.set)(self, value).map_err(|reason| ConfigError::Flag {
                flag,
                value: value.to_string_lossy().into_owned(),
                reason,
            })?;
            self.sources.set(key, Source::Flag(flag));
        }
        Ok(())
    }

    /// Records where a key's value came from (the command-line layer calls this for its flags).
    pub fn set_source(&mut self, key: &str, source: Source) {
        self.sources.set(key, source);
    }

    /// Where a key's value came from; `None` for a built-in default or a value set in code.
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.0.get(key)
    }

    /// Checks every numeric setting against its range (documented in `config.toml`) and the
    /// log level, naming the key, where its value came from and what is allowed. The bounds
    /// keep a typo from aborting the daemon: queues and thread pools are allocated up front.
    pub fn check_settings(&self) -> Result<(), ConfigError> {
        const MINUTE_MS: u64 = 60_000;
        const HOUR_MS: u64 = 60 * MINUTE_MS;
        const DAY_MS: u64 = 24 * HOUR_MS;
        const DAY_SECS: u64 = 24 * 3600;
        let (w, m, p, l, r) = (
            &self.watch,
            &self.model,
            &self.pipeline,
            &self.limits,
            &self.retrain,
        );
        let h = &self.http;
        let counts: [(&str, u64, RangeInclusive<u64>); 25] = [
            ("http.max_body_bytes", h.max_body_bytes, 1..=16 << 30),
            (
                "http.max_concurrent_uploads",
                h.max_concurrent_uploads as u64,
                1..=100_000,
            ),
            ("http.queue_depth", h.queue_depth as u64, 1..=1_000_000),
            ("http.request_timeout_ms", h.request_timeout_ms, 1..=HOUR_MS),
            ("http.threads", h.threads as u64, 1..=1024),
            ("watch.poll_interval_ms", w.poll_interval_ms, 1..=DAY_MS),
            (
                "watch.rescan_interval_secs",
                w.rescan_interval_secs,
                0..=30 * DAY_SECS,
            ),
            ("watch.stable_ms", w.stable_ms, 0..=HOUR_MS),
            (
                "worker.lease_seconds",
                self.worker.lease_seconds,
                1..=DAY_SECS,
            ),
            ("model.beam_size", m.beam_size as u64, 1..=100),
            ("model.max_steps", m.max_steps as u64, 1..=1000),
            ("model.diverse_groups", m.diverse_groups as u64, 1..=100),
            ("pipeline.batch_size", p.batch_size as u64, 1..=4096),
            ("pipeline.max_wait_ms", p.max_wait_ms, 0..=HOUR_MS),
            ("pipeline.decode_threads", p.decode_threads as u64, 1..=1024),
            ("pipeline.queue_depth", p.queue_depth as u64, 1..=1_000_000),
            ("limits.max_pixels", l.max_pixels, 1..=1 << 32),
            ("limits.max_file_bytes", l.max_file_bytes, 1..=16 << 30),
            ("limits.max_attempts", l.max_attempts.into(), 1..=1000),
            (
                "retrain.captions_per_image",
                r.captions_per_image.into(),
                1..=1000,
            ),
            (
                "retrain.min_word_freq",
                r.min_word_freq.into(),
                0..=1_000_000,
            ),
            ("retrain.epochs", r.epochs as u64, 0..=10_000),
            (
                "retrain.holdout_images",
                r.holdout_images as u64,
                1..=1_000_000,
            ),
            ("retrain.beam_size", r.beam_size as u64, 1..=100),
            ("retrain.threads", r.threads as u64, 0..=1024),
        ];
        for (key, value, allowed) in counts {
            if !allowed.contains(&value) {
                return Err(self.out_of_range(
                    key,
                    value.to_string(),
                    format!("{}..={}", allowed.start(), allowed.end()),
                ));
            }
        }
        let amounts: [(&str, f64, RangeInclusive<f64>); 4] = [
            // Not 0: the scores are divided by it.
            ("model.temperature", m.temperature, 1e-3..=1e3),
            ("model.diversity", m.diversity, 0.0..=1e6),
            (
                "retrain.max_minutes",
                r.max_minutes,
                0.0..=30.0 * 24.0 * 60.0,
            ),
            ("retrain.margin", r.margin, -1e6..=1e6),
        ];
        for (key, value, allowed) in amounts {
            // `contains` is false for NaN, so "nan" is refused too.
            if !allowed.contains(&value) {
                return Err(self.out_of_range(
                    key,
                    value.to_string(),
                    format!("{}..={}", allowed.start(), allowed.end()),
                ));
            }
        }
        self.search()?;
        self.precision()?;
        self.log_filter().map(drop)
    }

    /// The CPU engine's precision `model.precision` asks for (`auto` resolved for this CPU); an
    /// error names the setting, where it came from, and why (bf16 on a CPU without AVX-512
    /// BF16 is refused).
    pub fn precision(&self) -> Result<crate::kernels::bf16::Precision, ConfigError> {
        let value = &self.model.precision;
        crate::kernels::bf16::Precision::parse(value).map_err(|reason| ConfigError::BadValue {
            key: "model.precision".into(),
            value: value.clone(),
            origin: Origin(self.source("model.precision").cloned()),
            reason,
        })
    }

    /// The search `[model]` asks for, bad endings still as words (a model's word map turns
    /// them into ids: [`crate::model::beam::word_ids`]); an error names a bad
    /// `model.length_penalty` and where it came from.
    pub fn search(&self) -> Result<(BeamOptions, Vec<String>), ConfigError> {
        let m = &self.model;
        let length_penalty: LengthPenalty =
            m.length_penalty
                .parse()
                .map_err(|reason| ConfigError::BadValue {
                    key: "model.length_penalty".into(),
                    value: m.length_penalty.clone(),
                    origin: Origin(self.source("model.length_penalty").cloned()),
                    reason,
                })?;
        let search = BeamOptions {
            beam_size: m.beam_size.max(1),
            max_steps: m.max_steps,
            length_penalty,
            forbid_unk: m.forbid_unk,
            block_repeated_trigrams: m.block_trigrams,
            temperature: m.temperature as f32,
            no_repeat: m.no_repeat,
            bad_endings: Vec::new(),
            groups: m.diverse_groups,
            diversity: m.diversity as f32,
        };
        let words = if m.bad_endings {
            m.bad_ending_words.clone()
        } else {
            Vec::new()
        };
        Ok((search, words))
    }

    fn out_of_range(&self, key: &str, value: String, allowed: String) -> ConfigError {
        ConfigError::OutOfRange {
            key: key.to_string(),
            value,
            origin: Origin(self.source(key).cloned()),
            allowed,
        }
    }

    /// The `tracing` filter of `log.level`; an error names where the level came from.
    pub fn log_filter(&self) -> Result<EnvFilter, ConfigError> {
        log_filter(
            "log.level",
            &self.log.level,
            self.source("log.level").cloned(),
        )
    }

    /// Checks what the types cannot: [`Config::check_settings`], and that a model and folders
    /// are named. The `[retrain]` section is checked where its typed options are built
    /// (`RetrainOptions::from_config` in the retraining module), which parses the schedule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_scan()?;
        if self.model.path.is_none() {
            return Err(ConfigError::Invalid(
                "no model: set [model] path in the config file, GAZE_MODEL, or --model".into(),
            ));
        }
        Ok(())
    }

    /// [`Config::validate`] for `gaze serve`: a model is needed, folders are not (uploads are
    /// captioned with none watched).
    pub fn validate_serve(&self) -> Result<(), ConfigError> {
        self.check_settings()?;
        if self.model.path.is_none() {
            return Err(ConfigError::Invalid(
                "no model: set [model] path in the config file, GAZE_MODEL, or --model".into(),
            ));
        }
        Ok(())
    }

    /// [`Config::validate`] for a daemon that only discovers files (`--no-caption`): every
    /// setting in range and something to watch; no model needed.
    pub fn validate_scan(&self) -> Result<(), ConfigError> {
        self.check_settings()?;
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
        full.retrain.prepared = Some("p".into());
        full.retrain.data_name = Some("d".into());
        full.retrain.images = Some("i".into());
        full.retrain.train_config = Some("t".into());
        full.http.token = Some("s".into());
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
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gaze.toml");
        std::fs::write(
            &file,
            "[watch]\nfolders = [\"in\"]\nstable_ms = 10\n[pipeline]\nbatch_size = 4\n\
             [model]\npath = \"/abs/model.safetensors\"\n[retrain]\nschedule = \"1d\"\nprepared = \"data\"\n",
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
        assert_eq!(cfg.retrain.schedule, "1d");
        assert_eq!(cfg.retrain.prepared, Some(dir.path().join("data")));
        assert_eq!(cfg.retrain.work_dir, dir.path().join("retrain"));
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

    fn file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("gaze.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn out_of_range_numbers_name_the_key_its_source_and_the_range() {
        let dir = tempfile::tempdir().unwrap();
        // From the file: the path is the source.
        let path = file(dir.path(), "[pipeline]\nbatch_size = 100000000000\n");
        let cfg = Config::load(Some(&path), |_| None).unwrap();
        let e = cfg.check_settings().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "pipeline.batch_size = 100000000000 (from config file {}) is outside 1..=4096",
                path.display()
            )
        );
        // A later layer takes the key over, and with it the source.
        let env: HashMap<&str, &str> =
            [("GAZE_BATCH_SIZE", "16"), ("GAZE_DECODE_THREADS", "100000")].into();
        let mut cfg = Config::load(Some(&path), |k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(cfg.pipeline.batch_size, 16);
        assert_eq!(
            cfg.check_settings().unwrap_err().to_string(),
            "pipeline.decode_threads = 100000 (from environment variable GAZE_DECODE_THREADS) \
             is outside 1..=1024"
        );
        // The command-line layer names its flag.
        cfg.pipeline.decode_threads = 4;
        cfg.pipeline.batch_size = 100_000_000_000;
        cfg.set_source("pipeline.batch_size", Source::Flag("--batch-size"));
        let e = cfg.check_settings().unwrap_err().to_string();
        assert!(
            e.contains("pipeline.batch_size = 100000000000 (from command-line flag --batch-size)")
                && e.contains("1..=4096"),
            "{e}"
        );
        cfg.pipeline.batch_size = 4096;
        cfg.check_settings().unwrap();
        // validate checks the ranges too, and a value set in code names no source.
        cfg.model.path = Some("m".into());
        cfg.watch.folders = vec!["f".into()];
        cfg.model.beam_size = 101;
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "model.beam_size = 101 is outside 1..=100"
        );
        // Not a number: NaN is outside every range.
        let cfg = Config::load(None, |k| {
            (k == "GAZE_RETRAIN_MARGIN").then(|| "NaN".to_string())
        })
        .unwrap();
        let e = cfg.check_settings().unwrap_err().to_string();
        assert!(
            e.contains("retrain.margin = NaN (from environment variable GAZE_RETRAIN_MARGIN)"),
            "{e}"
        );
    }

    #[test]
    fn every_numeric_setting_has_a_range() {
        // Each number in the file, set far too large in turn, is refused by name: a new
        // numeric key without a range fails here.
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut checked = 0;
        for (section, table) in value.as_table().unwrap() {
            for (key, v) in table.as_table().unwrap() {
                let huge: &[&str] = match v {
                    toml::Value::Integer(_) => &["9223372036854775807", "4294967295"],
                    toml::Value::Float(_) => &["1e300"],
                    _ => continue,
                };
                // The first huge value the key's type holds (u32 keys refuse i64::MAX).
                let cfg = huge
                    .iter()
                    .find_map(|h| {
                        Config::from_toml_str(&format!("[{section}]\n{key} = {h}\n")).ok()
                    })
                    .unwrap_or_else(|| panic!("{section}.{key}: no huge value parses"));
                let e = cfg.check_settings().unwrap_err().to_string();
                assert!(e.starts_with(&format!("{section}.{key} = ")), "{e}");
                assert!(e.contains(" is outside "), "{e}");
                checked += 1;
            }
        }
        assert_eq!(checked, 29);
        Config::default().check_settings().unwrap();
    }

    #[test]
    fn log_levels_are_levels_or_directives() {
        for ok in [
            "info",
            "WARN",
            " Debug ",
            "off",
            "gaze=debug",
            "gaze=debug,warn",
        ] {
            log_filter("log.level", ok, None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // A bare word that is not a level would be a target name and silence everything.
        for bad in ["loud", "info,loud", "", " , ", "gaze=loud", "3"] {
            assert!(log_filter("log.level", bad, None).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "[log]\nlevel = \"loud\"\n");
        let cfg = Config::load(Some(&path), |_| None).unwrap();
        let e = cfg.check_settings().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "log.level = \"loud\" (from config file {}): \"loud\" is not a log level",
                path.display()
            )) && e.contains("error, warn, info, debug, trace or off"),
            "{e}"
        );
        let cfg = Config::load(Some(&path), |k| {
            (k == "GAZE_LOG").then(|| "loud".to_string())
        })
        .unwrap();
        let e = cfg.log_filter().unwrap_err().to_string();
        assert!(e.contains("(from environment variable GAZE_LOG)"), "{e}");
        let cfg = Config::load(Some(&path), |k| {
            (k == "GAZE_LOG").then(|| "gaze=trace".to_string())
        })
        .unwrap();
        cfg.check_settings().unwrap();
    }

    #[test]
    fn flags_are_the_last_layer_and_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            dir.path(),
            "[pipeline]\nbatch_size = 4\n[watch]\nfolders = [\"in\"]\n",
        );
        let env: HashMap<&str, &str> = [
            ("GAZE_CONFIG", path.to_str().unwrap()),
            ("GAZE_BATCH_SIZE", "16"),
            ("GAZE_DB", "env.db"),
        ]
        .into();
        let env = |k: &str| env.get(k).map(|v| v.to_string());
        // No flags: the file GAZE_CONFIG names, then the environment.
        let cfg = Config::layered(None, env, &Flags::new()).unwrap();
        assert_eq!(cfg.pipeline.batch_size, 16);
        assert_eq!(cfg.watch.folders, vec![dir.path().join("in")]);
        let flags = Flags::new()
            .folders(&["a".into(), "b".into()])
            .value("--batch-size", "pipeline.batch_size", Some(100_000))
            .path("--db", "database.path", Some(Path::new("flag.db")))
            .switch("--poll", "watch.poll", true)
            .switch("--retrain", "retrain.enabled", false)
            .value("--margin", "retrain.margin", Some(-0.25))
            .value("--device", "model.device", None::<&str>);
        let cfg = Config::layered(None, env, &flags).unwrap();
        assert_eq!(
            cfg.watch.folders,
            vec![PathBuf::from("a"), PathBuf::from("b")]
        );
        assert_eq!(cfg.database.path, PathBuf::from("flag.db")); // not relative to the file
        assert!(cfg.watch.poll);
        assert!(!cfg.retrain.enabled);
        assert_eq!(cfg.retrain.margin, -0.25);
        assert_eq!(cfg.model.device, "cpu");
        assert_eq!(cfg.source("database.path"), Some(&Source::Flag("--db")));
        assert_eq!(cfg.source("model.device"), None);
        assert_eq!(
            cfg.check_settings().unwrap_err().to_string(),
            "pipeline.batch_size = 100000 (from command-line flag --batch-size) is outside 1..=4096"
        );
        // An explicit file wins over GAZE_CONFIG.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "[model]\nbeam_size = 7\n").unwrap();
        let cfg = Config::layered(Some(&other), env, &Flags::new()).unwrap();
        assert_eq!((cfg.model.beam_size, cfg.pipeline.batch_size), (7, 16));
        assert!(cfg.watch.folders.is_empty());
        // A value the key's conversion refuses, and a key no flag can set.
        let bad = Flags::new().value("--batch-size", "pipeline.batch_size", Some("many"));
        let e = Config::layered(None, |_| None, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("command-line flag --batch-size \"many\": "),
            "{e}"
        );
        let unknown = Flags::new().value("--beams", "model.beams", Some(3));
        let e = Config::layered(None, |_| None, &unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--beams") && e.contains("model.beams"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_path_flag_keeps_its_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let raw = Path::new(OsStr::from_bytes(b"caf\xe9.db"));
        let flags = Flags::new().path("--db", "database.path", Some(raw));
        let cfg = Config::layered(None, |_| None, &flags).unwrap();
        assert_eq!(cfg.database.path, raw);
    }

    #[test]
    fn every_environment_variable_is_documented() {
        for e in ENV_VARS {
            assert!(
                SHIPPED.contains(e.var),
                "config.toml does not name {}",
                e.var
            );
        }
        assert_eq!(ENV_VARS.len(), 38);
    }

    #[test]
    fn precision_is_checked_with_its_key() {
        let cfg = Config::from_toml_str("[model]\nprecision = \"f16\"\n").unwrap();
        let err = cfg.check_settings().unwrap_err().to_string();
        assert!(
            err.contains("model.precision") && err.contains("f32, bf16 or auto"),
            "{err}"
        );
        let cfg = Config::from_toml_str("[model]\nprecision = \"auto\"\n").unwrap();
        cfg.check_settings().unwrap();
        assert_eq!(
            Config::default().precision().unwrap(),
            crate::kernels::bf16::Precision::F32
        );
    }

    #[test]
    fn decoding_keys_become_the_search() {
        let cfg = Config::from_toml_str(
            "[model]\nbeam_size = 4\nlength_penalty = \"wu:0.7\"\nno_repeat = true\n\
             bad_endings = true\nbad_ending_words = [\"a\", \"of\"]\ntemperature = 0.5\n\
             diverse_groups = 2\ndiversity = 1.5\n",
        )
        .unwrap();
        cfg.check_settings().unwrap();
        let (search, words) = cfg.search().unwrap();
        assert_eq!(search.beam_size, 4);
        assert_eq!(search.length_penalty, LengthPenalty::Wu { alpha: 0.7 });
        assert!(search.no_repeat && !search.forbid_unk && !search.block_repeated_trigrams);
        assert_eq!(
            (search.temperature, search.groups, search.diversity),
            (0.5, 2, 1.5)
        );
        assert_eq!(words, vec!["a".to_string(), "of".to_string()]);
        // Off by default: the tutorial's search.
        let (plain, words) = Config::default().search().unwrap();
        assert_eq!(
            plain,
            BeamOptions {
                beam_size: 3,
                ..BeamOptions::default()
            }
        );
        assert!(words.is_empty());
        let bad = Config::from_toml_str("[model]\nlength_penalty = \"wu\"\n").unwrap();
        let e = bad.check_settings().unwrap_err().to_string();
        assert!(e.starts_with("model.length_penalty = \"wu\""), "{e}");
        assert!(e.contains("wu:ALPHA"), "{e}");
    }
}
