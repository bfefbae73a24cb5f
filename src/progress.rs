//! The one look of gaze's progress bars (training, feature caching, evaluation, the demo).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps: `prefix [=====>    ] pos/len message ETA`.
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
