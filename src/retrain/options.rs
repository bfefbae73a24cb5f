//! The typed retraining settings: [`RetrainOptions::from_config`] builds them from the plain
//! `[retrain]` section of the config, parsing the schedule and checking what the section's
//! types cannot (metric names are checked where they are scored).

use std::path::PathBuf;

use super::Schedule;
use crate::config::{Config, ConfigError, Recaption, RetrainSection};

/// Scheduled retraining: when, on what, for how long, and when a candidate replaces the
/// active model (each setting is documented in `config.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainOptions {
    pub schedule: Schedule,
    /// The schedule as written, for messages.
    pub schedule_text: String,
    /// Run a scheduled cycle only when the data or these settings changed.
    pub only_when_changed: bool,
    pub work_dir: PathBuf,
    pub prepared: Option<PathBuf>,
    pub data_name: Option<String>,
    pub images: Option<PathBuf>,
    pub captions_per_image: u32,
    pub min_word_freq: u32,
    pub warm_start: bool,
    pub train_config: Option<PathBuf>,
    pub epochs: usize,
    pub max_minutes: f64,
    pub metric: String,
    pub margin: f64,
    pub holdout_images: usize,
    pub beam_size: usize,
    /// The setting as written (0: half the cores); see [`RetrainOptions::train_threads`].
    pub threads: usize,
    pub recaption: Recaption,
}

impl RetrainOptions {
    /// The options of `cfg.retrain` (whether or not it is enabled), or the first setting that
    /// is wrong: the schedule, then the data, the budget and the counts.
    pub fn from_config(cfg: &Config) -> Result<RetrainOptions, ConfigError> {
        let r = &cfg.retrain;
        let schedule = Schedule::parse(&r.schedule)
            .map_err(|e| ConfigError::Invalid(format!("retrain.schedule: {e}")))?;
        check(r)?;
        Ok(RetrainOptions {
            schedule,
            schedule_text: r.schedule.clone(),
            only_when_changed: r.only_when_changed,
            work_dir: r.work_dir.clone(),
            prepared: r.prepared.clone(),
            data_name: r.data_name.clone(),
            images: r.images.clone(),
            captions_per_image: r.captions_per_image,
            min_word_freq: r.min_word_freq,
            warm_start: r.warm_start,
            train_config: r.train_config.clone(),
            epochs: r.epochs,
            max_minutes: r.max_minutes,
            metric: r.metric.clone(),
            margin: r.margin,
            holdout_images: r.holdout_images,
            beam_size: r.beam_size,
            threads: r.threads,
            recaption: r.recaption,
        })
    }

    /// Training threads: the setting, or half the cores.
    pub fn train_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (cores / 2).max(1)
    }

    /// The settings that shape what a run learns, as the `[retrain]` section would hold them,
    /// with `enabled`, `schedule` and `only_when_changed` cleared (they do not): the text the
    /// data fingerprint digests, unchanged from when the section itself was digested, so the
    /// fingerprints recorded with earlier runs still compare equal.
    pub(crate) fn shaping_section(&self) -> RetrainSection {
        RetrainSection {
            enabled: false,
            schedule: String::new(),
            only_when_changed: false,
            work_dir: self.work_dir.clone(),
            prepared: self.prepared.clone(),
            data_name: self.data_name.clone(),
            images: self.images.clone(),
            captions_per_image: self.captions_per_image,
            min_word_freq: self.min_word_freq,
            warm_start: self.warm_start,
            train_config: self.train_config.clone(),
            epochs: self.epochs,
            max_minutes: self.max_minutes,
            metric: self.metric.clone(),
            margin: self.margin,
            holdout_images: self.holdout_images,
            beam_size: self.beam_size,
            threads: self.threads,
            recaption: self.recaption,
        }
    }
}

/// The checks of the section past the schedule.
fn check(r: &RetrainSection) -> Result<(), ConfigError> {
    if r.prepared.is_none() && r.images.is_none() {
        return Err(ConfigError::Invalid(
            "retrain: no data; set retrain.prepared (with data_name) or retrain.images".into(),
        ));
    }
    if r.prepared.is_some() && r.data_name.is_none() {
        return Err(ConfigError::Invalid(
            "retrain.prepared needs retrain.data_name (the files' base name)".into(),
        ));
    }
    if r.prepared.is_some() && r.images.is_some() {
        return Err(ConfigError::Invalid(
            "retrain: give retrain.prepared or retrain.images, not both".into(),
        ));
    }
    if r.epochs == 0 && r.max_minutes <= 0.0 {
        return Err(ConfigError::Invalid(
            "retrain: set a budget (epochs and/or max_minutes)".into(),
        ));
    }
    if r.beam_size == 0 || r.holdout_images == 0 || r.captions_per_image == 0 {
        return Err(ConfigError::Invalid(
            "retrain.beam_size, holdout_images and captions_per_image must be at least 1".into(),
        ));
    }
    if !r.margin.is_finite() || !r.max_minutes.is_finite() {
        return Err(ConfigError::Invalid(
            "retrain.margin and max_minutes must be numbers".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn with_data() -> Config {
        let mut cfg = Config::default();
        cfg.retrain.prepared = Some("data".into());
        cfg.retrain.data_name = Some("base".into());
        cfg
    }

    #[test]
    fn the_schedule_is_parsed_and_a_bad_one_named_first() {
        let mut cfg = with_data();
        cfg.retrain.schedule = "90s".into();
        let opts = RetrainOptions::from_config(&cfg).unwrap();
        assert_eq!(opts.schedule, Schedule::Every(Duration::from_secs(90)));
        assert_eq!(opts.schedule_text, "90s");
        assert_eq!(opts.recaption, cfg.retrain.recaption);
        // A bad schedule is reported before the missing data.
        cfg.retrain.schedule = "soon".into();
        cfg.retrain.prepared = None;
        let e = RetrainOptions::from_config(&cfg).unwrap_err().to_string();
        assert!(e.starts_with("invalid setting: retrain.schedule: "), "{e}");
    }

    /// A change to a good config, and a part of the error it must cause.
    type Case = (fn(&mut Config), &'static str);

    #[test]
    fn the_section_is_checked() {
        let cases: [Case; 5] = [
            (|c| c.retrain.prepared = None, "no data"),
            (|c| c.retrain.data_name = None, "needs retrain.data_name"),
            (|c| c.retrain.images = Some("i".into()), "not both"),
            (
                |c| {
                    c.retrain.epochs = 0;
                    c.retrain.max_minutes = 0.0;
                },
                "set a budget",
            ),
            (|c| c.retrain.beam_size = 0, "must be at least 1"),
        ];
        for (spoil, expected) in cases {
            let mut cfg = with_data();
            spoil(&mut cfg);
            let e = RetrainOptions::from_config(&cfg).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
        let mut cfg = with_data();
        cfg.retrain.margin = f64::NAN;
        assert!(RetrainOptions::from_config(&cfg).is_err());
    }

    #[test]
    fn the_fingerprint_text_is_the_section_without_its_timing() {
        let mut cfg = with_data();
        cfg.retrain.enabled = true;
        cfg.retrain.train_config = Some("t.toml".into());
        let opts = RetrainOptions::from_config(&cfg).unwrap();
        let mut section = cfg.retrain.clone();
        section.enabled = false;
        section.schedule.clear();
        section.only_when_changed = false;
        assert_eq!(opts.shaping_section(), section);
    }
}
