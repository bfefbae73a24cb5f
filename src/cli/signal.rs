//! The process's Ctrl-C (and SIGTERM) handler, in one place: `ctrlc` allows one handler per
//! process, so each command installs it once, through here. The first signal asks the work to
//! stop; a second exits at once with status 130.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

/// Installs the handler: `first` runs on the first signal, a second signal exits with 130.
pub fn on_interrupt(first: impl Fn() + Send + 'static) -> Result<()> {
    let signals = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) == 0 {
            first();
        } else {
            std::process::exit(130);
        }
    })
    .context("installing the signal handler")
}

/// Installs the handler with a stop flag that the first signal raises, printing `message` to
/// stderr; the work polls the flag.
pub fn stop_flag(message: &'static str) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let raised = stop.clone();
    on_interrupt(move || {
        raised.store(true, Ordering::SeqCst);
        eprintln!("{message}");
    })?;
    Ok(stop)
}
