//! What the throughput measurements of `gaze bench` run on: randomly initialised models at the
//! tutorial's sizes, synthetic training data ([`train`]), and the process's CPU time and the
//! machine's description for the reports. The timing loops and the printing are the
//! command's.

pub mod store;
pub mod train;

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::data::WordMap;
use crate::model::{init, CaptionModel, EncoderConfig, ModelConfig, ModelError};

/// Why a benchmark could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    Store(Box<crate::store::StoreError>),
    /// A run finished but the store does not hold what it should (or a lease was lost).
    #[error("{0}")]
    Check(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A word map of `vocab` entries: the four special tokens and `vocab - 4` words `w0`, `w1`...
pub fn word_map(vocab: usize) -> WordMap {
    let words: Vec<String> = (0..vocab.saturating_sub(4))
        .map(|i| format!("w{i}"))
        .collect();
    WordMap::from_counts(words.iter().map(|w| (w.as_str(), 10)), 5)
}

/// A randomly initialised model at the tutorial's sizes with the `encoder` backbone.
pub fn random_model(
    encoder: &str,
    vocab: usize,
    device: &Device,
) -> Result<CaptionModel, BenchError> {
    let Some(encoder_config) = EncoderConfig::named(encoder) else {
        return Err(BenchError::Options(format!("unknown encoder {encoder:?}")));
    };
    let mut cfg = ModelConfig::tutorial(vocab);
    cfg.encoder = encoder_config;
    Ok(init::random_model(&cfg, word_map(vocab), 1, device)?)
}

/// `n` random images of `size x size` on the model's device.
pub fn random_images(n: usize, size: usize, model: &CaptionModel) -> Result<Tensor, BenchError> {
    Ok(Tensor::randn(0f32, 1.0, (n, 3, size, size), &model.device)?)
}

/// `n` random encoder outputs `(N, S, S, E)` of the model's sizes, to time the decoder alone.
pub fn random_features(n: usize, model: &CaptionModel) -> Result<Tensor, BenchError> {
    let s = model.config.encoded_image_size;
    let shape = (n, s, s, model.config.encoder_dim());
    Ok(Tensor::rand(0f32, 1.0, shape, &model.device)?)
}

/// One measurement: the median over its repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Wall-clock seconds of one repeat.
    pub seconds: f64,
    /// CPU seconds (user + system) of one repeat, where the OS tells.
    pub cpu_seconds: Option<f64>,
}

/// Calls `work` once to warm up (kernel loading, allocator), then times `repeats` (at least
/// one) repeats of `rounds` calls. Returns the warm-up call's output and the medians. `work`
/// must wait for the device itself where kernels run asynchronously.
pub fn time<T, E>(
    repeats: usize,
    rounds: usize,
    mut work: impl FnMut() -> Result<T, E>,
) -> Result<(T, Timing), E> {
    let warm = work()?;
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    for _ in 0..repeats.max(1) {
        let cpu = process_cpu_seconds();
        let started = Instant::now();
        for _ in 0..rounds {
            work()?;
        }
        times.push(started.elapsed().as_secs_f64());
        if let (Some(before), Some(after)) = (cpu, process_cpu_seconds()) {
            cpu_times.push(after - before);
        }
    }
    let timing = Timing {
        seconds: median(&mut times).unwrap_or_default(),
        cpu_seconds: median(&mut cpu_times),
    };
    Ok((warm, timing))
}

/// The largest `|a - b|` and the largest `|b|`, to judge a fast path against a reference.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<(f32, f32), BenchError> {
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?;
    let scale = b.abs()?.flatten_all()?.max(0)?;
    Ok((diff.to_scalar::<f32>()?, scale.to_scalar::<f32>()?))
}

/// The CPU model and the worker threads, for the report's first line.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} threads", rayon::current_num_threads())
}

/// CPU seconds this process has used (user + system), where the OS tells (Linux).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The median of `values` (the upper one of an even count), or None when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_maps_and_medians() {
        let wm = word_map(10);
        assert_eq!(wm.len(), 10);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut []), None);
        let mut calls = 0;
        let (first, timing) = time(3, 2, || {
            calls += 1;
            Ok::<_, BenchError>(calls)
        })
        .unwrap();
        assert_eq!((first, calls), (1, 7));
        assert!(timing.seconds >= 0.0);
        assert!(timing.cpu_seconds.is_none_or(|s| s >= 0.0));
        assert!(matches!(
            random_model("resnet7", 10, &Device::Cpu),
            Err(BenchError::Options(_))
        ));
    }
}
