//! EfficientNet-Lite0 with the built-in weights, and the depthwise convolution with its
//! gradients, against `efficientnet/expected.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};

use super::error::{ParityError, Result};
use super::fixtures::load_tensors;
use super::report::{both, max_abs, Report, Tol};
use crate::kernels::depthwise::{depthwise_by_taps, depthwise_conv2d};
use crate::model::encoder::efficientnet::{pretrained_tensors, EfficientNetLite, PREFIX};
use crate::model::weights::Weights;

/// The expected tensors of one file, each looked up by name.
struct Expected<'a> {
    path: &'a Path,
    tensors: HashMap<String, Tensor>,
}

impl Expected<'_> {
    fn get(&self, n: &str) -> Result<&Tensor> {
        self.tensors.get(n).ok_or_else(|| ParityError::NoTensor {
            file: self.path.to_path_buf(),
            name: n.into(),
        })
    }
}

/// The tests' bounds, relative to the largest expected value.
fn relative(want: &Tensor, rel: f64) -> Result<Tol> {
    Ok(Tol {
        rtol: 0.0,
        atol: rel * max_abs(want)?.max(1.0),
    })
}

pub fn efficientnet_section(
    path: &Path,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let exp = Expected {
        path,
        tensors: load_tensors(path, &Device::Cpu)?,
    };
    let (got, on_cpu) = both(dev, cpu, |d| {
        let weights = Weights::new(pretrained_tensors(d, true)?, d);
        let net = EfficientNetLite::load(&weights.pp("encoder").pp(PREFIX), true);
        weights.check(Path::new("built-in EfficientNet-Lite0"))?;
        let logits = net.classify(&exp.get("chelsea.input")?.to_device(d)?)?;
        let features = net.forward_t(&exp.get("features256.input")?.to_device(d)?, false)?;
        Ok((logits, features))
    })?;
    let c = on_cpu.as_ref();
    let want = exp.get("chelsea.logits")?;
    r.tensor(
        "EfficientNet-Lite0 logits",
        &got.0,
        want,
        c.map(|t| &t.0),
        relative(want, 1e-4)?,
    )?;
    let want = exp.get("features256.output")?;
    r.tensor(
        "EfficientNet-Lite0 features",
        &got.1,
        want,
        c.map(|t| &t.1),
        relative(want, 1e-4)?,
    )?;
    for (k, s, p) in [(3usize, 1usize, 1usize), (5, 2, 2), (3, 2, 0)] {
        depthwise_checks(&exp, k, s, p, dev, cpu, r)?;
    }
    Ok(())
}

/// Output, input gradient and weight gradient of one depthwise convolution, for the
/// gradient `gy` of the output: `[y, gx, gw]`.
fn depthwise_run(
    exp: &Expected,
    tag: &str,
    (s, p): (usize, usize),
    d: &Device,
    taps: bool,
) -> Result<[Tensor; 3]> {
    let x = Var::from_tensor(&exp.get(&format!("{tag}.x"))?.to_device(d)?)?;
    let w = Var::from_tensor(&exp.get(&format!("{tag}.w"))?.to_device(d)?)?;
    let gy = exp.get(&format!("{tag}.gy"))?.to_device(d)?;
    let y = if taps {
        depthwise_by_taps(x.as_tensor(), w.as_tensor(), s, p)?
    } else {
        depthwise_conv2d(x.as_tensor(), w.as_tensor(), s, p)?
    };
    let grads = (&y * &gy)?.sum_all()?.backward()?;
    let missing = |what: &str| ParityError::Missing(format!("no {what} gradient"));
    let gx = grads.get(x.as_tensor()).ok_or_else(|| missing("input"))?;
    let gw = grads.get(w.as_tensor()).ok_or_else(|| missing("weight"))?;
    Ok([y.clone(), gx.clone(), gw.clone()])
}

fn depthwise_checks(
    exp: &Expected,
    k: usize,
    s: usize,
    p: usize,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let tag = format!("dw_k{k}_s{s}_p{p}");
    // On the CPU the direct kernel runs; elsewhere the tap-sum formulation. On the CPU the
    // tap sum is checked as well, so that the GPU's formulation is checked anywhere.
    let (got, on_cpu) = both(dev, cpu, |d| depthwise_run(exp, &tag, (s, p), d, false))?;
    let taps = if dev.is_cpu() {
        Some(depthwise_run(exp, &tag, (s, p), dev, true)?)
    } else {
        None
    };
    let parts = [
        ("output", "y", 1e-4),
        ("input gradient", "gx", 1e-4),
        ("weight gradient", "gw", 1e-3),
    ];
    for (i, (part, suffix, bound)) in parts.into_iter().enumerate() {
        let want = exp.get(&format!("{tag}.{suffix}"))?;
        let tol = Tol {
            rtol: 0.0,
            atol: bound,
        };
        r.tensor(
            &format!("depthwise k{k} s{s} p{p}: {part}"),
            &got[i],
            want,
            on_cpu.as_ref().map(|t| &t[i]),
            tol,
        )?;
        if let Some(taps) = &taps {
            r.tensor(
                &format!("depthwise k{k} s{s} p{p}: {part} (taps)"),
                &taps[i],
                want,
                None,
                tol,
            )?;
        }
    }
    Ok(())
}
