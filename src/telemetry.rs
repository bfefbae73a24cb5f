//! What the daemon's stages measure about themselves, for `GET /metrics`: counters and
//! histograms kept in atomics, so a stage records with a few relaxed adds and never waits on
//! whoever reads them, and the Prometheus text format they are shown in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// A histogram with fixed upper bounds (Prometheus `le`), the sum kept in microunits.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then the `+Inf` bucket (not cumulative; summed when shown).
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// Latency buckets in seconds, 1 ms to 60 s.
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Batch-size buckets.
pub const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let slot = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of `name` with `labels` (`k="v"` pairs,
    /// comma-separated, or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Why an image failed, as `gaze_failures_total{kind}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    /// The file could not be read (permissions, too large, not a regular file).
    Unreadable,
    /// The bytes are not an image gaze decodes, or a broken one.
    Undecodable,
    /// The file went before it was read.
    Vanished,
    /// The model failed on the batch.
    Inference,
}

impl FailureKind {
    const ALL: [FailureKind; 4] = [
        FailureKind::Unreadable,
        FailureKind::Undecodable,
        FailureKind::Vanished,
        FailureKind::Inference,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unreadable => "unreadable",
            FailureKind::Undecodable => "undecodable",
            FailureKind::Vanished => "vanished",
            FailureKind::Inference => "inference",
        }
    }
}

/// The daemon's measurements, shared by its stages and the HTTP server.
#[derive(Debug)]
pub struct Telemetry {
    pub decode_seconds: Histogram,
    pub inference_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
    failures: [AtomicU64; 4],
    /// The model captioning now: id and name.
    active_model: Mutex<Option<(i64, String)>>,
    /// HTTP requests by (route, status code), and their latency by route.
    http_requests: Mutex<BTreeMap<(String, u16), u64>>,
    http_seconds: Mutex<BTreeMap<String, std::sync::Arc<Histogram>>>,
    /// Set once the writer has stopped on an error: the store takes no more writes.
    writer_failed: std::sync::atomic::AtomicBool,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            decode_seconds: Histogram::new(SECONDS),
            inference_seconds: Histogram::new(SECONDS),
            commit_seconds: Histogram::new(SECONDS),
            batch_size: Histogram::new(BATCH),
            failures: Default::default(),
            active_model: Mutex::new(None),
            http_requests: Mutex::new(BTreeMap::new()),
            http_seconds: Mutex::new(BTreeMap::new()),
            writer_failed: Default::default(),
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Telemetry {
    pub fn failed(&self, kind: FailureKind) {
        self.failures[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn failures(&self, kind: FailureKind) -> u64 {
        self.failures[kind as usize].load(Relaxed)
    }

    pub fn set_active_model(&self, id: i64, name: &str) {
        *self.active_model.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, name.into()));
    }

    pub fn active_model(&self) -> Option<(i64, String)> {
        self.active_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_writer_failed(&self) {
        self.writer_failed.store(true, Relaxed);
    }

    pub fn writer_failed(&self) -> bool {
        self.writer_failed.load(Relaxed)
    }

    /// Counts one HTTP request on `route` (the route's template, not the raw path, so that
    /// the label set stays small) answered with `code` after `elapsed`.
    pub fn http_request(&self, route: &str, code: u16, elapsed: Duration) {
        *self
            .http_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_string(), code))
            .or_insert(0) += 1;
        let histogram = self
            .http_seconds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_string())
            .or_insert_with(|| std::sync::Arc::new(Histogram::new(SECONDS)))
            .clone();
        histogram.observe_duration(elapsed);
    }

    /// The measurements in Prometheus text format, after `store_lines` (the gauges read from
    /// the store at scrape time), with `captioned` (the run's count of images captioned).
    pub fn render(&self, store_lines: &str, captioned: u64) -> String {
        let mut out = String::from(store_lines);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "gaze_captioned_total",
            "counter",
            "Images captioned by the model since the start.",
        );
        let _ = writeln!(out, "gaze_captioned_total {captioned}");
        family(
            &mut out,
            "gaze_failures_total",
            "counter",
            "Images that failed since the start, by kind.",
        );
        for kind in FailureKind::ALL {
            let _ = writeln!(
                out,
                "gaze_failures_total{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.failures(kind)
            );
        }
        for (name, h, help) in [
            (
                "gaze_batch_size",
                &self.batch_size,
                "Images per batch the model ran on.",
            ),
            (
                "gaze_decode_seconds",
                &self.decode_seconds,
                "Reading, hashing, decoding, resizing and normalising one image.",
            ),
            (
                "gaze_inference_seconds",
                &self.inference_seconds,
                "Captioning one batch.",
            ),
            (
                "gaze_commit_seconds",
                &self.commit_seconds,
                "One store transaction of the writer.",
            ),
        ] {
            family(&mut out, name, "histogram", help);
            h.render(&mut out, name, "");
        }
        family(
            &mut out,
            "gaze_active_model",
            "gauge",
            "The model captioning now (1).",
        );
        if let Some((id, name)) = self.active_model() {
            let _ = writeln!(
                out,
                "gaze_active_model{{id=\"{id}\",name=\"{}\"}} 1",
                label_value(&name)
            );
        }
        family(
            &mut out,
            "gaze_http_requests_total",
            "counter",
            "HTTP requests by route and status code.",
        );
        for ((route, code), n) in self
            .http_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "gaze_http_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
                label_value(route)
            );
        }
        family(
            &mut out,
            "gaze_http_request_seconds",
            "histogram",
            "HTTP request latency by route.",
        );
        let routes: Vec<(String, std::sync::Arc<Histogram>)> = self
            .http_seconds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (route, h) in routes {
            h.render(
                &mut out,
                "gaze_http_request_seconds",
                &format!("route=\"{}\"", label_value(&route)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"1\"} 2\nx_bucket{a=\"b\",le=\"2\"} 3\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 4\nx_sum{a=\"b\"} 6\nx_count{a=\"b\"} 4\n"
        );
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn render_names_every_family_and_escapes_labels() {
        let t = Telemetry::default();
        t.set_active_model(3, "a \"quoted\" name");
        t.failed(FailureKind::Vanished);
        t.http_request("/v1/images/{id}", 404, Duration::from_millis(2));
        let text = t.render("", 2);
        assert!(text.contains("gaze_captioned_total 2\n"));
        assert!(text.contains("gaze_active_model{id=\"3\",name=\"a \\\"quoted\\\" name\"} 1"));
        assert!(text.contains("gaze_failures_total{kind=\"vanished\"} 1"));
        assert!(text.contains("gaze_http_requests_total{route=\"/v1/images/{id}\",code=\"404\"} 1"));
        assert!(text.contains("gaze_http_request_seconds_count{route=\"/v1/images/{id}\"} 1"));
    }
}
