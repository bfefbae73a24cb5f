//! Parity with PyTorch: the fixtures of `tests/fixtures/parity/` (made by `make_parity.py`)
//! and `tests/fixtures/efficientnet/`, computed on a chosen device and compared with what
//! PyTorch computed. Off the CPU each quantity is computed on the CPU too and the two are
//! compared, which also sets gaze's CPU-only kernels (the fused attention scores, the
//! depthwise convolution, the CPU encoder engine) against the generic paths that serve other
//! devices. On the CPU those generic paths (candle ops, the ones the GPU runs) are checked
//! against PyTorch too, in the rows marked "candle ops", "taps" and "generic ops".
//!
//! Tolerances are the integration tests', elementwise `|got - want| <= rtol * |want| + atol`:
//! - tensors of the parity model: `rtol = 1e-4`, `atol = 1e-5`;
//! - scalars (losses, beam scores): `rtol = 1e-4`, `atol = 1e-4`;
//! - EfficientNet logits and features: `atol = 1e-4 * max|want|` (at least 1e-4);
//! - depthwise convolution: `atol = 1e-4` (output, input gradient), `1e-3` (weight gradient);
//! - token sequences, batch order, word counts: exact.
//!
//! The same bound applies to the device-vs-CPU comparison. [`run`] returns a [`Report`] (one
//! [`Row`] per check) and prints nothing; `gaze bench parity` prints it. The pieces each check
//! computes ([`model::teacher_forcing`], [`training::training_step`], ...) are public so that
//! the integration tests assert the same computations.

pub mod efficientnet;
pub mod error;
pub mod fixtures;
pub mod model;
pub mod report;
pub mod training;

use candle_core::Device;

pub use error::ParityError;
pub use fixtures::Fixtures;
pub use report::{Diff, Report, Row, Skipped, Tol, PARITY_TOL, SCALAR_TOL};

type Section = fn(&Fixtures, &Device, Option<&Device>, &mut Report) -> error::Result<()>;

/// Runs every check on `device` (and, off the CPU, on the CPU as well) with every bound
/// multiplied by `scale`. Checks whose fixture file is missing (the bottleneck encoder,
/// `efficientnet/`) are listed in [`Report::skipped`]. An error means a check could not run.
pub fn run(fx: &Fixtures, device: &Device, scale: f64) -> Result<Report, ParityError> {
    let mut report = Report::new(scale)?;
    let cpu = (!device.is_cpu()).then_some(Device::Cpu);
    let sections: [(&str, Section); 6] = [
        ("encoder", model::encoder_section),
        ("teacher forcing", model::teacher_section),
        ("beam search", model::beam_section),
        ("training step", training::training_section),
        ("fine-tuning forward", model::fine_tune_section),
        ("attention paths", model::attention_section),
    ];
    let failed = |check: &'static str| {
        move |e: ParityError| ParityError::Check {
            check,
            source: Box::new(e),
        }
    };
    for (what, section) in sections {
        section(fx, device, cpu.as_ref(), &mut report).map_err(failed(what))?;
    }
    model::bottleneck_section(fx, device, cpu.as_ref(), &mut report)?;
    let effnet = fx.root().join("efficientnet/expected.safetensors");
    if effnet.exists() {
        efficientnet::efficientnet_section(&effnet, device, cpu.as_ref(), &mut report)
            .map_err(failed("EfficientNet"))?;
    } else {
        report.skipped.push(Skipped {
            path: effnet,
            what: "EfficientNet and depthwise checks skipped",
        });
    }
    Ok(report)
}
