//! The tutorial's learning-rate and early-stopping rule, as pure decisions: learning rates ×
//! `lr_decay_factor` (0.8) after every `lr_decay_every` (8) epochs without improvement, stop
//! after `patience` (20). The loop keeps the counters (in the checkpoint's state) and asks here
//! what they mean.

use super::config::TrainConfig;

/// The rule's three settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Stop once this many epochs in a row did not improve.
    pub patience: usize,
    /// Decay after every this many epochs without improvement (0: never).
    pub decay_every: usize,
    /// What a decay multiplies the learning rates by.
    pub decay_factor: f64,
}

/// What to do before an epoch's first batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochStart {
    /// Train with the learning rates as they are.
    Train,
    /// Multiply the learning rates by the decay factor, then train.
    DecayThenTrain,
    /// Patience ran out: no more epochs.
    Stop,
}

impl Schedule {
    pub fn from_config(cfg: &TrainConfig) -> Self {
        Schedule {
            patience: cfg.patience,
            decay_every: cfg.lr_decay_every,
            decay_factor: cfg.lr_decay_factor,
        }
    }

    /// The decision at the start of an epoch (not when resuming in the middle of one).
    pub fn at_epoch_start(&self, epochs_since_improvement: usize) -> EpochStart {
        let n = epochs_since_improvement;
        if n >= self.patience {
            EpochStart::Stop
        } else if n > 0 && self.decay_every > 0 && n.is_multiple_of(self.decay_every) {
            EpochStart::DecayThenTrain
        } else {
            EpochStart::Train
        }
    }

    /// A learning rate after one decay.
    pub fn decayed(&self, lr: f64) -> f64 {
        lr * self.decay_factor
    }

    /// Whether a validation score beats the best so far (`None`: nothing validated yet, so
    /// any score, even 0 or NaN, is the best). A tie is not an improvement.
    pub fn improves(&self, score: f64, best: Option<f64>) -> bool {
        match best {
            None => true,
            Some(best) => score > best,
        }
    }

    /// The epochs without improvement after a whole epoch.
    pub fn after_epoch(&self, improved: bool, epochs_since_improvement: usize) -> usize {
        if improved {
            0
        } else {
            epochs_since_improvement + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tutorial() -> Schedule {
        Schedule::from_config(&TrainConfig::default())
    }

    #[test]
    fn the_default_is_the_tutorials_rule() {
        assert_eq!(
            tutorial(),
            Schedule {
                patience: 20,
                decay_every: 8,
                decay_factor: 0.8
            }
        );
    }

    #[test]
    fn decays_after_every_eight_epochs_without_improvement_and_stops_at_twenty() {
        let s = tutorial();
        let decisions: Vec<EpochStart> = (0..=21).map(|n| s.at_epoch_start(n)).collect();
        for (n, d) in decisions.iter().enumerate() {
            let expected = match n {
                8 | 16 => EpochStart::DecayThenTrain,
                20 | 21 => EpochStart::Stop,
                _ => EpochStart::Train,
            };
            assert_eq!(*d, expected, "after {n} epochs without improvement");
        }
    }

    #[test]
    fn decay_every_zero_never_decays() {
        let s = Schedule {
            decay_every: 0,
            ..tutorial()
        };
        assert!((0..20).all(|n| s.at_epoch_start(n) == EpochStart::Train));
        assert_eq!(s.at_epoch_start(20), EpochStart::Stop);
    }

    #[test]
    fn patience_zero_stops_before_the_first_epoch() {
        let s = Schedule {
            patience: 0,
            ..tutorial()
        };
        assert_eq!(s.at_epoch_start(0), EpochStart::Stop);
    }

    #[test]
    fn a_decay_multiplies_by_the_factor() {
        let s = tutorial();
        assert_eq!(s.decayed(4e-4), 4e-4 * 0.8);
        assert_eq!(s.decayed(s.decayed(1.0)), 0.8 * 0.8);
    }

    #[test]
    fn the_first_score_improves_and_a_tie_does_not() {
        let s = tutorial();
        assert!(s.improves(0.0, None));
        assert!(s.improves(f64::NAN, None));
        assert!(s.improves(0.21, Some(0.2)));
        assert!(!s.improves(0.2, Some(0.2)));
        assert!(!s.improves(0.19, Some(0.2)));
        assert!(!s.improves(f64::NAN, Some(0.2)));
    }

    #[test]
    fn an_improvement_resets_the_count() {
        let s = tutorial();
        assert_eq!(s.after_epoch(true, 7), 0);
        assert_eq!(s.after_epoch(false, 7), 8);
        assert_eq!(s.after_epoch(false, 0), 1);
    }
}
