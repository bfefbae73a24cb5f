//! What a training run tells the outside world, as it happens. The loop itself writes nothing
//! but checkpoints; progress bars, per-epoch console lines and the `train_log.jsonl` log come
//! from the observer its caller passes: [`StandardObserver`] (the log, plus bars and lines on
//! stderr when asked) or [`SilentObserver`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::error::TrainError;
use super::record::EpochRecord;

/// The log's name in the output folder.
pub const LOG_NAME: &str = "train_log.jsonl";

/// Where an epoch stands after a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchProgress {
    /// Batches of this epoch done (the next batch's index).
    pub batches_done: usize,
    /// Mean loss per word over this run's batches of the epoch so far.
    pub loss: f64,
    /// Top-5 accuracy so far, percent.
    pub top5: f64,
    pub captions_per_second: f64,
    /// Self-critical training: mean reward (CIDEr-D) of the samples so far.
    pub reward: Option<f64>,
}

/// Hooks called by [`super::train`] in the order things happen. All do nothing by default;
/// the two that may fail (they write files) stop the run with their error.
#[allow(unused_variables)]
pub trait TrainObserver {
    /// Encoder features of `images` images of a split (`what`) are about to be cached.
    fn encoding_started(&mut self, what: &str, images: usize) {}
    /// `images` more images were encoded.
    fn encoded(&mut self, images: usize) {}
    fn encoding_finished(&mut self) {}
    /// The run is ready for its first epoch and writes into `out_dir`.
    fn run_started(&mut self, out_dir: &Path) -> Result<(), TrainError> {
        Ok(())
    }
    /// Epoch `epoch` of `batches` batches starts at batch `first_batch` (not 0 when resumed).
    fn epoch_started(&mut self, epoch: usize, batches: usize, first_batch: usize) {}
    fn batch_done(&mut self, progress: &BatchProgress) {}
    /// The epoch's training batches are over (all of them, or cut short).
    fn batches_finished(&mut self) {}
    /// Validation of `images` images starts.
    fn validation_started(&mut self, images: usize) {}
    /// `images` more images were validated.
    fn validated(&mut self, images: usize) {}
    fn validation_finished(&mut self) {}
    /// A checkpoint (`best`: the best model so far) was written to `path`.
    fn checkpoint_saved(&mut self, path: &Path, best: bool) {}
    /// The epoch is over: validated, checkpointed and recorded.
    fn epoch_finished(&mut self, record: &EpochRecord) -> Result<(), TrainError> {
        Ok(())
    }
}

/// Reports nothing and writes no log.
#[derive(Debug, Default, Clone, Copy)]
pub struct SilentObserver;

impl TrainObserver for SilentObserver {}

/// Appends each epoch's record as one JSON line to `train_log.jsonl` in the output folder.
#[derive(Debug, Default)]
pub struct JsonlLog {
    file: Option<(PathBuf, File)>,
}

impl TrainObserver for JsonlLog {
    fn run_started(&mut self, out_dir: &Path) -> Result<(), TrainError> {
        let path = out_dir.join(LOG_NAME);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?;
        self.file = Some((path, file));
        Ok(())
    }

    fn epoch_finished(&mut self, record: &EpochRecord) -> Result<(), TrainError> {
        let Some((path, file)) = self.file.as_mut() else {
            return Ok(());
        };
        let line = serde_json::to_string(record).expect("record serialises");
        writeln!(file, "{line}").map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })
    }
}

/// Progress bars (gaze's look) while encoding, training and validating, and one line per
/// epoch, on stderr.
#[derive(Debug, Default)]
pub struct ConsoleObserver {
    bar: Option<ProgressBar>,
}

impl ConsoleObserver {
    fn start(&mut self, len: usize, prefix: &str) -> &ProgressBar {
        self.bar.insert(crate::progress::bar(len as u64, prefix))
    }

    fn inc(&self, n: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl TrainObserver for ConsoleObserver {
    fn encoding_started(&mut self, what: &str, images: usize) {
        self.start(images, what);
    }

    fn encoded(&mut self, images: usize) {
        self.inc(images);
    }

    fn encoding_finished(&mut self) {
        self.clear();
    }

    fn epoch_started(&mut self, epoch: usize, batches: usize, first_batch: usize) {
        self.start(batches, &format!("epoch {epoch}"))
            .set_position(first_batch as u64);
    }

    fn batch_done(&mut self, p: &BatchProgress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.batches_done as u64);
            bar.set_message(match p.reward {
                Some(reward) => format!(
                    "loss {:.4} reward {:.3} {:.1} images/s",
                    p.loss, reward, p.captions_per_second
                ),
                None => format!(
                    "loss {:.3} top5 {:.1}% {:.0} captions/s",
                    p.loss, p.top5, p.captions_per_second
                ),
            });
        }
    }

    fn batches_finished(&mut self) {
        self.clear();
    }

    fn validation_started(&mut self, images: usize) {
        self.start(images, "validate");
    }

    fn validated(&mut self, images: usize) {
        self.inc(images);
    }

    fn validation_finished(&mut self) {
        self.clear();
    }

    fn epoch_finished(&mut self, r: &EpochRecord) -> Result<(), TrainError> {
        if let (Some(s), Some(best)) = (&r.scst, r.best_cider_d) {
            eprintln!(
                "epoch {}{}: reward {:.4} baseline {:.4} ({:.0}% beat it, {:.1} images/s) | val CIDEr-D {:.4} BLEU-4 {:.4}{} | best CIDEr-D {:.4}",
                r.epoch,
                if r.partial { " (partial)" } else { "" },
                s.mean_reward,
                s.mean_baseline,
                100.0 * s.beat_baseline,
                r.captions_per_second,
                r.val.cider_d,
                r.val.bleu4,
                if r.is_best { " *" } else { "" },
                best
            );
            return Ok(());
        }
        eprintln!(
            "epoch {}{}: train loss {:.4} top5 {:.2}% ({:.0} captions/s) | val loss {:.4} top5 {:.2}% BLEU-4 {:.4}{} | best {:.4}",
            r.epoch,
            if r.partial { " (partial)" } else { "" },
            r.train_loss,
            r.train_top5,
            r.captions_per_second,
            r.val.loss,
            r.val.top5,
            r.val.bleu4,
            if r.is_best { " *" } else { "" },
            r.best_bleu4.unwrap_or(f64::NAN)
        );
        Ok(())
    }
}

/// What `gaze train` has always reported: the JSON-lines log, and with `progress` the bars
/// and per-epoch lines.
#[derive(Debug, Default)]
pub struct StandardObserver {
    log: JsonlLog,
    console: Option<ConsoleObserver>,
}

impl StandardObserver {
    pub fn new(progress: bool) -> Self {
        StandardObserver {
            log: JsonlLog::default(),
            console: progress.then(ConsoleObserver::default),
        }
    }
}

impl TrainObserver for StandardObserver {
    fn encoding_started(&mut self, what: &str, images: usize) {
        if let Some(c) = &mut self.console {
            c.encoding_started(what, images);
        }
    }

    fn encoded(&mut self, images: usize) {
        if let Some(c) = &mut self.console {
            c.encoded(images);
        }
    }

    fn encoding_finished(&mut self) {
        if let Some(c) = &mut self.console {
            c.encoding_finished();
        }
    }

    fn run_started(&mut self, out_dir: &Path) -> Result<(), TrainError> {
        self.log.run_started(out_dir)
    }

    fn epoch_started(&mut self, epoch: usize, batches: usize, first_batch: usize) {
        if let Some(c) = &mut self.console {
            c.epoch_started(epoch, batches, first_batch);
        }
    }

    fn batch_done(&mut self, progress: &BatchProgress) {
        if let Some(c) = &mut self.console {
            c.batch_done(progress);
        }
    }

    fn batches_finished(&mut self) {
        if let Some(c) = &mut self.console {
            c.batches_finished();
        }
    }

    fn validation_started(&mut self, images: usize) {
        if let Some(c) = &mut self.console {
            c.validation_started(images);
        }
    }

    fn validated(&mut self, images: usize) {
        if let Some(c) = &mut self.console {
            c.validated(images);
        }
    }

    fn validation_finished(&mut self) {
        if let Some(c) = &mut self.console {
            c.validation_finished();
        }
    }

    fn epoch_finished(&mut self, record: &EpochRecord) -> Result<(), TrainError> {
        // The log first: a line on the console for an epoch the log lacks would mislead.
        self.log.epoch_finished(record)?;
        if let Some(c) = &mut self.console {
            c.epoch_finished(record)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::record::Validation;

    fn record(epoch: usize) -> EpochRecord {
        EpochRecord {
            epoch,
            partial: false,
            train_loss: 2.5,
            train_top5: 40.0,
            captions_per_second: 100.0,
            train_seconds: 1.5,
            val: Validation {
                loss: 3.0,
                top5: 30.0,
                bleu4: 0.125,
                cider_d: 0.5,
                beam_size: 1,
                images: 4,
                seconds: 0.5,
            },
            decoder_lr: 4e-4,
            encoder_lr: 0.0,
            is_best: true,
            best_bleu4: Some(0.125),
            best_cider_d: None,
            scst: None,
            epochs_since_improvement: 0,
        }
    }

    #[test]
    fn the_log_appends_one_line_per_epoch_with_the_fields_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_NAME), "earlier\n").unwrap();
        let mut log = StandardObserver::new(false);
        log.run_started(dir.path()).unwrap();
        log.epoch_finished(&record(0)).unwrap();
        log.epoch_finished(&record(1)).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOG_NAME)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "earlier");
        assert_eq!(
            lines[1],
            "{\"epoch\":0,\"partial\":false,\"train_loss\":2.5,\"train_top5\":40.0,\
             \"captions_per_second\":100.0,\"train_seconds\":1.5,\"val\":{\"loss\":3.0,\
             \"top5\":30.0,\"bleu4\":0.125,\"cider_d\":0.5,\"beam_size\":1,\"images\":4,\"seconds\":0.5},\
             \"decoder_lr\":0.0004,\"encoder_lr\":0.0,\"is_best\":true,\"best_bleu4\":0.125,\
             \"epochs_since_improvement\":0}"
        );
        assert!(lines[2].starts_with("{\"epoch\":1,"), "{}", lines[2]);
    }

    #[test]
    fn an_unwritable_log_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the log should be: it cannot be opened for appending.
        std::fs::create_dir(dir.path().join(LOG_NAME)).unwrap();
        let e = JsonlLog::default().run_started(dir.path()).unwrap_err();
        assert!(e.to_string().contains(LOG_NAME), "{e}");
    }

    #[test]
    fn the_silent_observer_writes_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut silent = SilentObserver;
        silent.run_started(dir.path()).unwrap();
        silent.epoch_finished(&record(0)).unwrap();
        assert!(!dir.path().join(LOG_NAME).exists());
    }
}
