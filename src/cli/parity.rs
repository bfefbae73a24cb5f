//! `gaze bench parity`: the PyTorch parity fixtures run on a chosen device, from the binary.
//!
//! The integration tests check the CPU against PyTorch; this command runs the same checks
//! ([`gaze::parity`], where the tolerances are described) on any device (`--device cuda`), so
//! a machine with a GPU and no Rust toolchain can check the CUDA build. Each row prints the
//! largest absolute error and, in brackets, the worst error divided by its bound (at most 1
//! passes). `--tolerance-scale` multiplies every bound. Exit code 0 when every check passes,
//! 2 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use gaze::parity::{Diff, Fixtures, Report};

#[derive(Args, Debug)]
pub struct ParityArgs {
    /// Folder holding `parity/` (required) and `efficientnet/` (checked when present).
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "GAZE_DEVICE")]
    pub device: String,
    /// Multiplies every tolerance.
    #[arg(long, default_value_t = 1.0)]
    pub tolerance_scale: f64,
}

pub fn run(args: ParityArgs) -> Result<ExitCode> {
    if !(args.tolerance_scale.is_finite() && args.tolerance_scale > 0.0) {
        bail!(
            "--tolerance-scale must be a positive number, got {}",
            args.tolerance_scale
        );
    }
    let device = gaze::device::open_device(&args.device)?;
    let fx = Fixtures::load(&args.fixtures)?;
    println!(
        "parity on {} ({}), fixtures {}",
        args.device,
        describe(&device),
        args.fixtures.display()
    );
    println!(
        "bounds, elementwise |got - want| <= rtol * |want| + atol, times {}: tensors rtol 1e-4 \
         atol 1e-5; scalars rtol 1e-4 atol 1e-4; EfficientNet atol 1e-4 * max|want|; depthwise \
         atol 1e-4 (weight gradient 1e-3); tokens exact",
        args.tolerance_scale
    );
    println!("each row: largest |error| and (worst error / bound): at most 1 passes");
    let report = gaze::parity::run(&fx, &device, args.tolerance_scale)?;
    print(&report);
    let failed = report.failed();
    println!("{} passed, {} failed", report.passed(), failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "CPU",
        Device::Cuda(_) => "CUDA",
        Device::Metal(_) => "Metal",
    }
}

/// The skipped checks, then the table.
fn print(report: &Report) {
    for s in &report.skipped {
        println!("({} not found: {})", s.path.display(), s.what);
    }
    let cell = |d: Option<Diff>| match d {
        Some(d) => format!("{:.2e} ({:.2})", d.max_abs, d.ratio),
        None => "-".into(),
    };
    println!(
        "{:<44} {:>20} {:>20}  result",
        "check", "vs PyTorch", "vs CPU"
    );
    for r in &report.rows {
        println!(
            "{:<44} {:>20} {:>20}  {}{}",
            r.name,
            cell(r.vs_reference),
            cell(r.vs_cpu),
            if r.ok { "ok" } else { "FAIL" },
            r.mismatch
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
}
