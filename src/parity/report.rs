//! Tolerances, how far one tensor is from another, and the rows of the report.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::error::{ParityError, Result};

/// `|got - want| <= rtol * |want| + atol`, elementwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
}

/// Tensors of the parity model.
pub const PARITY_TOL: Tol = Tol {
    rtol: 1e-4,
    atol: 1e-5,
};

/// Scalars: the tests' `1e-4 * max(|want|, 1)`, nearly.
pub const SCALAR_TOL: Tol = Tol {
    rtol: 1e-4,
    atol: 1e-4,
};

/// How far one tensor is from another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diff {
    pub max_abs: f64,
    /// The worst `|got - want| / (rtol * |want| + atol)`: at most 1 passes.
    pub ratio: f64,
}

/// A tensor's values on the host, as `f32`.
pub fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// The largest `|value|` of a tensor.
pub fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(host(t)?.iter().fold(0f64, |m, &v| m.max((v as f64).abs())))
}

/// Compares `got` with `want` elementwise; `what` names the check in a shape error.
pub fn diff(what: &str, got: &Tensor, want: &Tensor, tol: Tol) -> Result<Diff> {
    if got.dims() != want.dims() {
        return Err(ParityError::Shape {
            what: what.to_string(),
            got: got.dims().to_vec(),
            want: want.dims().to_vec(),
        });
    }
    let (g, w) = (host(got)?, host(want)?);
    let mut d = Diff {
        max_abs: 0.0,
        ratio: 0.0,
    };
    for (&a, &b) in g.iter().zip(&w) {
        let e = (a as f64 - b as f64).abs();
        // NaN never passes.
        let e = if e.is_nan() { f64::INFINITY } else { e };
        d.max_abs = d.max_abs.max(e);
        d.ratio = d.ratio.max(e / (tol.rtol * (b as f64).abs() + tol.atol));
    }
    Ok(d)
}

/// Runs `f` on the device and, when given, on the CPU.
pub fn both<T>(
    device: &Device,
    cpu: Option<&Device>,
    f: impl Fn(&Device) -> Result<T>,
) -> Result<(T, Option<T>)> {
    let on_device = f(device)?;
    let on_cpu = cpu.map(&f).transpose()?;
    Ok((on_device, on_cpu))
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// Against PyTorch's values.
    pub vs_reference: Option<Diff>,
    /// Against the same computation on the CPU (off-CPU devices only), or, for rows without
    /// a PyTorch value, against the other computation.
    pub vs_cpu: Option<Diff>,
    /// For exact comparisons (token sequences): what differs, if anything.
    pub mismatch: Option<String>,
    pub ok: bool,
}

/// A fixture file that was not there, so its checks did not run.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    /// Which checks, e.g. "check skipped".
    pub what: &'static str,
}

/// Every check's outcome, in the order they ran.
#[derive(Debug, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
    pub skipped: Vec<Skipped>,
    /// Multiplies every bound.
    pub scale: f64,
}

impl Report {
    pub fn new(scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(ParityError::Scale(scale));
        }
        Ok(Report {
            rows: Vec::new(),
            skipped: Vec::new(),
            scale,
        })
    }

    pub fn failed(&self) -> usize {
        self.rows.iter().filter(|r| !r.ok).count()
    }

    pub fn passed(&self) -> usize {
        self.rows.len() - self.failed()
    }

    /// The row named `name`, if that check ran.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    fn scaled(&self, tol: Tol) -> Tol {
        Tol {
            rtol: tol.rtol * self.scale,
            atol: tol.atol * self.scale,
        }
    }

    /// Compares a device result with PyTorch's and, where given, with the CPU's.
    pub fn tensor(
        &mut self,
        name: &str,
        got: &Tensor,
        want: &Tensor,
        cpu: Option<&Tensor>,
        tol: Tol,
    ) -> Result<()> {
        let tol = self.scaled(tol);
        let vs_reference = diff(name, got, want, tol)?;
        let vs_cpu = match cpu {
            Some(c) => Some(diff(&format!("{name} (CPU)"), got, c, tol)?),
            None => None,
        };
        let ok = vs_reference.ratio <= 1.0 && vs_cpu.is_none_or(|d| d.ratio <= 1.0);
        self.rows.push(Row {
            name: name.into(),
            vs_reference: Some(vs_reference),
            vs_cpu,
            mismatch: None,
            ok,
        });
        Ok(())
    }

    /// A device result compared with another computation only (no PyTorch value).
    pub fn against(&mut self, name: &str, got: &Tensor, other: &Tensor, tol: Tol) -> Result<()> {
        let d = diff(name, got, other, self.scaled(tol))?;
        self.rows.push(Row {
            name: name.into(),
            vs_reference: None,
            vs_cpu: Some(d),
            mismatch: None,
            ok: d.ratio <= 1.0,
        });
        Ok(())
    }

    pub fn scalar(&mut self, name: &str, got: f32, want: f64, cpu: Option<f32>) -> Result<()> {
        let t = |v: f64| Tensor::new(&[v as f32], &Device::Cpu);
        let c = cpu.map(|c| t(c as f64)).transpose()?;
        self.tensor(name, &t(got as f64)?, &t(want)?, c.as_ref(), SCALAR_TOL)
    }

    /// An exact comparison: `mismatch` says what differs, `None` passes.
    pub fn exact(&mut self, name: &str, mismatch: Option<String>) {
        self.rows.push(Row {
            name: name.into(),
            vs_reference: None,
            vs_cpu: None,
            ok: mismatch.is_none(),
            mismatch,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn bound_is_relative_plus_absolute_and_nan_never_passes() {
        let tol = Tol {
            rtol: 0.1,
            atol: 1.0,
        };
        // Bound at 10 is 2: an error of 2 is exactly on it.
        let d = diff("x", &t(&[12.0]), &t(&[10.0]), tol).unwrap();
        assert_eq!(d.max_abs, 2.0);
        assert!((d.ratio - 1.0).abs() < 1e-12, "{d:?}");
        let d = diff("x", &t(&[f32::NAN]), &t(&[1.0]), tol).unwrap();
        assert!(d.ratio > 1.0);
        let err = diff("x", &t(&[1.0, 2.0]), &t(&[1.0]), tol).unwrap_err();
        assert_eq!(err.to_string(), "x: shape [2], expected [1]");
    }

    #[test]
    fn scale_widens_bounds_and_must_be_positive() {
        let mut r = Report::new(2.0).unwrap();
        // 1.5e-5 off at 0 misses 1e-5 but passes twice that.
        r.tensor("a", &t(&[1.5e-5]), &t(&[0.0]), None, PARITY_TOL)
            .unwrap();
        r.tensor("b", &t(&[3.0e-5]), &t(&[0.0]), Some(&t(&[0.0])), PARITY_TOL)
            .unwrap();
        r.exact("c", Some("differs".into()));
        assert!(r.row("a").unwrap().ok);
        assert!(!r.row("b").unwrap().ok);
        assert_eq!((r.passed(), r.failed()), (1, 2));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(Report::new(bad), Err(ParityError::Scale(_))));
        }
    }
}
