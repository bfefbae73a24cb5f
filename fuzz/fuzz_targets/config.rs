//! The daemon's settings: TOML over the defaults, validated, then `GAZE_*` environment
//! variables on top, validated again.
//!
//! Input layout: leading lines of the form `GAZE_NAME=value` are the environment; the rest is
//! the TOML text.
#![no_main]

use std::collections::BTreeMap;

use gaze::config::Config;
use gaze::retrain::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut env = BTreeMap::new();
    let mut rest = text.as_ref();
    while rest.starts_with("GAZE_") {
        let (line, tail) = rest.split_once('\n').unwrap_or((rest, ""));
        let Some((name, value)) = line.split_once('=') else {
            break;
        };
        env.insert(name.to_string(), value.to_string());
        rest = tail;
    }
    let mut cfg = match Config::from_toml_str(rest) {
        Ok(cfg) => cfg,
        Err(_) => Config::default(),
    };
    let _ = cfg.validate();
    if cfg.apply_env(|k| env.get(k).cloned()).is_ok() {
        let _ = cfg.validate();
        // A schedule that validates must also plan its next run without panicking.
        if let Ok(schedule) = Schedule::parse(&cfg.retrain.schedule) {
            let _ = schedule.next_after(1.7e9, 1.7e9);
        }
    }
});
