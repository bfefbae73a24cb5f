//! `gaze bench parity`: the PyTorch parity fixtures run on a chosen device, from the binary.
//!
//! The integration tests check the CPU against PyTorch; this command does the same on any
//! device (`--device cuda`), so a machine with a GPU and no Rust toolchain can check the CUDA
//! build. Each quantity is computed on the device and compared with what PyTorch computed
//! (`tests/fixtures/parity/make_parity.py`); off the CPU it is computed on the CPU too and the
//! two are compared, which also sets gaze's CPU-only kernels (the fused attention scores, the
//! depthwise convolution, the CPU encoder engine) against the generic paths that serve other
//! devices. On the CPU those generic paths (candle ops, the ones the GPU runs) are checked
//! against PyTorch too, in the rows marked "candle ops", "taps" and "generic ops".
//!
//! Tolerances are the tests', elementwise `|got - want| <= rtol * |want| + atol`:
//! - tensors of the parity model: `rtol = 1e-4`, `atol = 1e-5`;
//! - scalars (losses, beam scores): `rtol = 1e-4`, `atol = 1e-4`;
//! - EfficientNet logits and features: `atol = 1e-4 * max|want|` (at least 1e-4);
//! - depthwise convolution: `atol = 1e-4` (output, input gradient), `1e-3` (weight gradient);
//! - token sequences, batch order, word counts: exact.
//!
//! The same bound applies to the device-vs-CPU comparison. Each row prints the largest
//! absolute error and, in brackets, the worst error divided by its bound (at most 1 passes).
//! `--tolerance-scale` multiplies every bound. Exit code 0 when every check passes, 2
//! otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use gaze::model::decoder::TeacherOptions;
use gaze::model::encoder::depthwise::{depthwise_by_taps, depthwise_conv2d};
use gaze::model::encoder::efficientnet::{pretrained_tensors, EfficientNetLite, PREFIX};
use gaze::model::weights::Weights;
use gaze::model::{
    BeamOptions, BlockKind, CaptionModel, Encoder, EncoderConfig, LoadOptions, ModelConfig,
};
use gaze::train::{adam::Adam, loss::batch_loss};

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

/// `|got - want| <= rtol * |want| + atol`, elementwise.
#[derive(Debug, Clone, Copy)]
struct Tol {
    rtol: f64,
    atol: f64,
}

const PARITY_TOL: Tol = Tol {
    rtol: 1e-4,
    atol: 1e-5,
};

/// Scalars: the tests' `1e-4 * max(|want|, 1)`, nearly.
const SCALAR_TOL: Tol = Tol {
    rtol: 1e-4,
    atol: 1e-4,
};

/// How far one tensor is from another.
#[derive(Debug, Clone, Copy)]
struct Diff {
    max_abs: f64,
    /// The worst `|got - want| / (rtol * |want| + atol)`: at most 1 passes.
    ratio: f64,
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

fn diff(got: &Tensor, want: &Tensor, tol: Tol) -> Result<Diff> {
    if got.dims() != want.dims() {
        bail!("shape {:?}, expected {:?}", got.dims(), want.dims());
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

/// One line of the report.
struct Row {
    name: String,
    /// Against PyTorch's values.
    vs_reference: Option<Diff>,
    /// Against the same computation on the CPU (off-CPU devices only).
    vs_cpu: Option<Diff>,
    /// For exact comparisons (token sequences): what differs, if anything.
    mismatch: Option<String>,
    ok: bool,
}

struct Report {
    rows: Vec<Row>,
    scale: f64,
}

impl Report {
    fn scaled(&self, tol: Tol) -> Tol {
        Tol {
            rtol: tol.rtol * self.scale,
            atol: tol.atol * self.scale,
        }
    }

    /// Compares a device result with PyTorch's and, where given, with the CPU's.
    fn tensor(
        &mut self,
        name: &str,
        got: &Tensor,
        want: &Tensor,
        cpu: Option<&Tensor>,
        tol: Tol,
    ) -> Result<()> {
        let tol = self.scaled(tol);
        let vs_reference = diff(got, want, tol).with_context(|| name.to_string())?;
        let vs_cpu = match cpu {
            Some(c) => Some(diff(got, c, tol).with_context(|| format!("{name} (CPU)"))?),
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
    fn against(&mut self, name: &str, got: &Tensor, other: &Tensor, tol: Tol) -> Result<()> {
        let d = diff(got, other, self.scaled(tol)).with_context(|| name.to_string())?;
        self.rows.push(Row {
            name: name.into(),
            vs_reference: None,
            vs_cpu: Some(d),
            mismatch: None,
            ok: d.ratio <= 1.0,
        });
        Ok(())
    }

    fn scalar(&mut self, name: &str, got: f32, want: f64, cpu: Option<f32>) -> Result<()> {
        let t = |v: f64| Tensor::new(&[v as f32], &Device::Cpu);
        let c = cpu.map(|c| t(c as f64)).transpose()?;
        self.tensor(name, &t(got as f64)?, &t(want)?, c.as_ref(), SCALAR_TOL)
    }

    fn exact(&mut self, name: &str, mismatch: Option<String>) {
        self.rows.push(Row {
            name: name.into(),
            vs_reference: None,
            vs_cpu: None,
            ok: mismatch.is_none(),
            mismatch,
        });
    }

    fn print(&self) {
        let cell = |d: Option<Diff>| match d {
            Some(d) => format!("{:.2e} ({:.2})", d.max_abs, d.ratio),
            None => "-".into(),
        };
        println!(
            "{:<44} {:>20} {:>20}  result",
            "check", "vs PyTorch", "vs CPU"
        );
        for r in &self.rows {
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
}

/// The fixtures, read once on the CPU.
struct Fixtures {
    dir: PathBuf,
    expected: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

impl Fixtures {
    fn load(dir: &Path) -> Result<Self> {
        let expected_path = dir.join("expected.safetensors");
        let expected = candle_core::safetensors::load(&expected_path, &Device::Cpu)
            .with_context(|| format!("cannot read {}", expected_path.display()))?;
        let meta_path = dir.join("expected.json");
        let text = std::fs::read(&meta_path)
            .with_context(|| format!("cannot read {}", meta_path.display()))?;
        let meta = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not valid JSON", meta_path.display()))?;
        Ok(Fixtures {
            dir: dir.to_path_buf(),
            expected,
            meta,
        })
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.expected
            .get(name)
            .with_context(|| format!("{}: no tensor {name}", self.dir.display()))
    }

    /// An expected tensor moved to `device`.
    fn on(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.get(name)?.to_device(device)?)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, pointer: &str) -> Result<T> {
        let v = self
            .meta
            .pointer(pointer)
            .with_context(|| format!("expected.json: no {pointer}"))?;
        Ok(serde_json::from_value(v.clone())?)
    }

    fn model(&self, device: &Device) -> Result<CaptionModel> {
        let opts = LoadOptions {
            word_map: Some(self.dir.join("WORDMAP_parity.json")),
            encoded_image_size: Some(5),
        };
        Ok(CaptionModel::load(
            &self.dir.join("weights.safetensors"),
            &opts,
            device,
        )?)
    }
}

pub fn run(args: ParityArgs) -> Result<ExitCode> {
    if !(args.tolerance_scale.is_finite() && args.tolerance_scale > 0.0) {
        bail!(
            "--tolerance-scale must be a positive number, got {}",
            args.tolerance_scale
        );
    }
    let device = gaze::device::open_device(&args.device)?;
    let fx = Fixtures::load(&args.fixtures.join("parity"))?;
    let cpu = (!device.is_cpu()).then_some(Device::Cpu);
    let mut report = Report {
        rows: Vec::new(),
        scale: args.tolerance_scale,
    };
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
    // Each section runs on the device and, off the CPU, on the CPU as well.
    let sections: [(&str, Section); 6] = [
        ("encoder", encoder_section),
        ("teacher forcing", teacher_section),
        ("beam search", beam_section),
        ("training step", training_section),
        ("fine-tuning forward", fine_tune_section),
        ("attention paths", attention_section),
    ];
    for (what, section) in sections {
        section(&fx, &device, cpu.as_ref(), &mut report)
            .with_context(|| format!("parity check \"{what}\" failed to run"))?;
    }
    bottleneck_section(&args.fixtures, &fx, &device, cpu.as_ref(), &mut report)?;
    let effnet = args.fixtures.join("efficientnet/expected.safetensors");
    if effnet.exists() {
        efficientnet_section(&effnet, &device, cpu.as_ref(), &mut report)
            .context("parity check \"EfficientNet\" failed to run")?;
    } else {
        println!(
            "({} not found: EfficientNet and depthwise checks skipped)",
            effnet.display()
        );
    }
    report.print();
    let failed = report.rows.iter().filter(|r| !r.ok).count();
    println!("{} passed, {} failed", report.rows.len() - failed, failed);
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

type Section = fn(&Fixtures, &Device, Option<&Device>, &mut Report) -> Result<()>;

/// Runs `f` on the device and, when given, on the CPU.
fn both<T>(
    device: &Device,
    cpu: Option<&Device>,
    f: impl Fn(&Device) -> Result<T>,
) -> Result<(T, Option<T>)> {
    let on_device = f(device)?;
    let on_cpu = cpu.map(&f).transpose()?;
    Ok((on_device, on_cpu))
}

fn encoder_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let (got, on_cpu) = both(dev, cpu, |d| {
        let model = fx.model(d)?;
        Ok(model.encoder.forward(&fx.on("tf_images", d)?)?)
    })?;
    r.tensor(
        "encoder output",
        &got,
        fx.get("encoder_out")?,
        on_cpu.as_ref(),
        PARITY_TOL,
    )?;
    if dev.is_cpu() {
        // The CPU runs its own encoder engine; check the candle ops other devices run too.
        let model = fx.model(dev)?;
        let reference = model.encoder.forward_reference(&fx.on("tf_images", dev)?)?;
        r.tensor(
            "encoder output (candle ops, the GPU path)",
            &reference,
            fx.get("encoder_out")?,
            None,
            PARITY_TOL,
        )?;
    }
    Ok(())
}

fn teacher_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let lengths: Vec<usize> = fx.json("/lengths")?;
    let sort_ind: Vec<usize> = fx.json("/tf_sort_ind")?;
    let decode_lengths: Vec<usize> = fx.json("/tf_decode_lengths")?;
    let (got, on_cpu) = both(dev, cpu, |d| {
        let model = fx.model(d)?;
        let captions = fx.on("tf_captions", d)?.to_dtype(DType::U32)?;
        Ok(model
            .decoder
            .forward_teacher(&fx.on("encoder_out", d)?, &captions, &lengths)?)
    })?;
    r.exact(
        "teacher forcing: batch order",
        (got.sort_ind != sort_ind || got.decode_lengths != decode_lengths).then(|| {
            format!(
                "order {:?} lengths {:?}, expected {sort_ind:?} {decode_lengths:?}",
                got.sort_ind, got.decode_lengths
            )
        }),
    );
    let c = on_cpu.as_ref();
    r.tensor(
        "teacher forcing: predictions",
        &got.predictions,
        fx.get("tf_predictions")?,
        c.map(|t| &t.predictions),
        PARITY_TOL,
    )?;
    r.tensor(
        "teacher forcing: attention",
        &got.alphas,
        fx.get("tf_alphas")?,
        c.map(|t| &t.alphas),
        PARITY_TOL,
    )
}

fn beam_section(fx: &Fixtures, dev: &Device, cpu: Option<&Device>, r: &mut Report) -> Result<()> {
    for k in [1usize, 3, 5] {
        let opts = BeamOptions {
            beam_size: k,
            ..Default::default()
        };
        let (got, on_cpu) = both(dev, cpu, |d| {
            let model = fx.model(d)?;
            Ok(model.caption_images(&fx.on("images", d)?, &opts)?)
        })?;
        for (i, cap) in got.iter().enumerate() {
            let tokens: Vec<u32> = fx.json(&format!("/beams/{k}/{i}/tokens"))?;
            let score: f64 = fx.json(&format!("/beams/{k}/{i}/score"))?;
            let name = format!("beam {k}, image {i}");
            let cpu_cap = on_cpu.as_ref().map(|c| &c[i]);
            let mismatch = if cap.tokens != tokens {
                Some(format!("tokens {:?}, PyTorch {tokens:?}", cap.tokens))
            } else if cpu_cap.is_some_and(|c| c.tokens != cap.tokens) {
                Some(format!(
                    "tokens {:?}, CPU {:?}",
                    cap.tokens,
                    cpu_cap.map(|c| &c.tokens)
                ))
            } else if !cap.finished {
                Some("no beam reached <end>".into())
            } else {
                None
            };
            r.exact(&format!("{name}: tokens"), mismatch);
            r.scalar(
                &format!("{name}: score"),
                cap.score,
                score,
                cpu_cap.map(|c| c.score),
            )?;
            let alphas = |c: &gaze::model::Caption| Tensor::new(c.alphas.clone(), &Device::Cpu);
            let want = fx.get(&format!("beam{k}_image{i}_alphas"))?;
            if cap.alphas.len() == want.dim(0)? {
                r.tensor(
                    &format!("{name}: attention"),
                    &alphas(cap)?,
                    want,
                    cpu_cap
                        .filter(|c| c.alphas.len() == cap.alphas.len())
                        .map(alphas)
                        .transpose()?
                        .as_ref(),
                    PARITY_TOL,
                )?;
            }
        }
    }
    Ok(())
}

const GRADED: [&str; 5] = [
    "fc.weight",
    "decode_step.weight_ih",
    "attention.full_att.weight",
    "embedding.weight",
    "init_h.bias",
];

/// Loss parts, gradients and the parameters after one Adam step.
struct StepResult {
    loss: f32,
    cross_entropy: f32,
    attention_reg: f32,
    words: usize,
    top5: usize,
    grads: Vec<Tensor>,
    after_adam: Vec<Tensor>,
}

fn training_step(fx: &Fixtures, d: &Device) -> Result<StepResult> {
    let path = fx.dir.join("weights.safetensors");
    let tensors = candle_core::safetensors::load(&path, d)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let wm = gaze::data::WordMap::load(&fx.dir.join("WORDMAP_parity.json"))?;
    let cfg = gaze::model::file::infer_config(&tensors, wm.len(), Some(5), &path)?;
    let mut weights = Weights::new(tensors, d);
    let vars = weights.make_trainable(|n| n.starts_with("decoder."))?;
    let model = CaptionModel::build(&weights, cfg, wm, serde_json::json!({}), &path)?;
    let lengths: Vec<usize> = fx.json("/lengths")?;
    let captions = fx.on("tf_captions", d)?.to_dtype(DType::U32)?;
    let features = model.encoder.forward(&fx.on("tf_images", d)?)?;
    let loss = batch_loss(
        &model.decoder,
        &features,
        &captions,
        &lengths,
        1.0,
        &mut TeacherOptions::default(),
    )?;
    let grads = loss.loss.backward()?;
    let var = |name: &str| -> Result<&Var> {
        let full = format!("decoder.{name}");
        vars.iter()
            .find(|(n, _)| *n == full)
            .map(|(_, v)| v)
            .with_context(|| format!("{full} is not trainable"))
    };
    let mut graded = Vec::new();
    for name in GRADED {
        let v = var(name)?;
        let g = grads
            .get(v.as_tensor())
            .with_context(|| format!("no gradient for decoder.{name}"))?;
        graded.push(g.copy()?);
    }
    let mut adam = Adam::new(vars.clone(), 4e-4)?;
    adam.step(&grads, Some(5.0))?;
    let after_adam = GRADED
        .iter()
        .map(|n| Ok(var(n)?.as_tensor().copy()?))
        .collect::<Result<Vec<_>>>()?;
    Ok(StepResult {
        loss: loss.value(),
        cross_entropy: loss.cross_entropy,
        attention_reg: loss.attention_reg,
        words: loss.words,
        top5: loss.top5_correct,
        grads: graded,
        after_adam,
    })
}

fn training_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let (got, on_cpu) = both(dev, cpu, |d| training_step(fx, d))?;
    let c = on_cpu.as_ref();
    r.scalar(
        "training: loss",
        got.loss,
        fx.json("/train/loss")?,
        c.map(|s| s.loss),
    )?;
    r.scalar(
        "training: cross-entropy",
        got.cross_entropy,
        fx.json("/train/cross_entropy")?,
        c.map(|s| s.cross_entropy),
    )?;
    r.scalar(
        "training: attention regularisation",
        got.attention_reg,
        fx.json("/train/attention_reg")?,
        c.map(|s| s.attention_reg),
    )?;
    let words: usize = fx.json("/train/words")?;
    let top5: usize = fx.json("/train/top5_correct")?;
    r.exact(
        "training: words and top-5 hits",
        (got.words != words || got.top5 != top5).then(|| {
            format!(
                "{} words, {} hits; PyTorch {words}, {top5}",
                got.words, got.top5
            )
        }),
    );
    for (i, name) in GRADED.iter().enumerate() {
        r.tensor(
            &format!("gradient decoder.{name}"),
            &got.grads[i],
            fx.get(&format!("grad.decoder.{name}"))?,
            c.map(|s| &s.grads[i]),
            PARITY_TOL,
        )?;
        r.tensor(
            &format!("Adam step decoder.{name}"),
            &got.after_adam[i],
            fx.get(&format!("adam1.decoder.{name}"))?,
            c.map(|s| &s.after_adam[i]),
            PARITY_TOL,
        )?;
    }
    Ok(())
}

fn fine_tune_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let (got, on_cpu) = both(dev, cpu, |d| {
        let model = fx.model(d)?;
        let out = model.encoder.forward_t(&fx.on("tf_images", d)?, true)?;
        let buffers: HashMap<String, Tensor> = model.encoder.buffers().into_iter().collect();
        let stat = |n: &str| {
            buffers
                .get(&format!("encoder.resnet.6.0.bn1.{n}"))
                .cloned()
                .with_context(|| format!("no buffer encoder.resnet.6.0.bn1.{n}"))
        };
        Ok((out, stat("running_mean")?, stat("running_var")?))
    })?;
    let c = on_cpu.as_ref();
    r.tensor(
        "fine-tuning: encoder output",
        &got.0,
        fx.get("finetune_encoder_out")?,
        c.map(|t| &t.0),
        PARITY_TOL,
    )?;
    r.tensor(
        "fine-tuning: running mean",
        &got.1,
        fx.get("finetune.running_mean")?,
        c.map(|t| &t.1),
        PARITY_TOL,
    )?;
    r.tensor(
        "fine-tuning: running variance",
        &got.2,
        fx.get("finetune.running_var")?,
        c.map(|t| &t.2),
        PARITY_TOL,
    )
}

/// Attention scores: on the CPU inference runs a fused kernel and training the generic ops;
/// other devices run the generic ops for both. Compares inference on the device with
/// inference on the CPU (off the CPU), or inference with the training path (on the CPU).
fn attention_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let attend = |d: &Device, tracked: bool| -> Result<(Tensor, Tensor)> {
        let model = fx.model(d)?;
        let att = &model.decoder.attention;
        let enc = fx.on("encoder_out", d)?;
        let (b, s, _, e) = enc.dims4()?;
        let enc = enc.reshape((b, s * s, e))?;
        let mut proj = att.project_encoder(&enc)?;
        if tracked {
            // A projection that autograd tracks selects the training path.
            let v = Var::from_tensor(&proj)?;
            proj = (v.as_tensor() * 1.0)?;
        }
        let dd = model.decoder.decode_step.weight_hh.dim(1)?;
        let h = Tensor::from_vec(
            (0..b * 3 * dd)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect::<Vec<_>>(),
            (b, 3, dd),
            d,
        )?;
        Ok(att.forward(&enc, &proj.contiguous()?, &h)?)
    };
    let (awe, alpha) = attend(dev, false)?;
    let (other, what) = match cpu {
        Some(c) => (attend(c, false)?, "device vs CPU fused kernel"),
        None => (attend(dev, true)?, "fused kernel vs generic ops"),
    };
    r.against(
        &format!("attention weights ({what})"),
        &alpha,
        &other.1,
        PARITY_TOL,
    )?;
    r.against(
        &format!("attention encoding ({what})"),
        &awe,
        &other.0,
        PARITY_TOL,
    )
}

fn bottleneck_section(
    root: &Path,
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let path = root.join("parity/bottleneck_encoder.safetensors");
    if !path.exists() {
        println!("({} not found: check skipped)", path.display());
        return Ok(());
    }
    let cfg = ModelConfig {
        encoder: EncoderConfig::Resnet {
            block: BlockKind::Bottleneck,
            layers: [1, 2, 1, 1],
            width: 4,
        },
        encoded_image_size: 3,
        attention_dim: 1,
        embed_dim: 1,
        decoder_dim: 1,
        vocab_size: 1,
        dropout: 0.0,
    };
    let (got, on_cpu) = both(dev, cpu, |d| {
        let tensors = candle_core::safetensors::load(&path, d)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let weights = Weights::new(tensors, d);
        let encoder = Encoder::load(&weights.pp("encoder"), &cfg);
        weights.check(&path)?;
        Ok(encoder.forward(&fx.on("images", d)?)?)
    })?;
    r.tensor(
        "bottleneck ResNet encoder output",
        &got,
        fx.get("bottleneck_encoder_out")?,
        on_cpu.as_ref(),
        PARITY_TOL,
    )
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(host(t)?.iter().fold(0f64, |m, &v| m.max((v as f64).abs())))
}

fn efficientnet_section(
    path: &Path,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let exp = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let get = |n: &str| {
        exp.get(n)
            .with_context(|| format!("{}: no tensor {n}", path.display()))
    };
    // The tests' bounds, relative to the largest expected value.
    let relative = |want: &Tensor, rel: f64| -> Result<Tol> {
        Ok(Tol {
            rtol: 0.0,
            atol: rel * max_abs(want)?.max(1.0),
        })
    };
    let (got, on_cpu) = both(dev, cpu, |d| {
        let weights = Weights::new(pretrained_tensors(d, true)?, d);
        let net = EfficientNetLite::load(&weights.pp("encoder").pp(PREFIX), true);
        weights.check(Path::new("built-in EfficientNet-Lite0"))?;
        let logits = net.classify(&get("chelsea.input")?.to_device(d)?)?;
        let features = net.forward_t(&get("features256.input")?.to_device(d)?, false)?;
        Ok((logits, features))
    })?;
    let c = on_cpu.as_ref();
    let want = get("chelsea.logits")?;
    r.tensor(
        "EfficientNet-Lite0 logits",
        &got.0,
        want,
        c.map(|t| &t.0),
        relative(want, 1e-4)?,
    )?;
    let want = get("features256.output")?;
    r.tensor(
        "EfficientNet-Lite0 features",
        &got.1,
        want,
        c.map(|t| &t.1),
        relative(want, 1e-4)?,
    )?;
    for (k, s, p) in [(3usize, 1usize, 1usize), (5, 2, 2), (3, 2, 0)] {
        let tag = format!("dw_k{k}_s{s}_p{p}");
        // On the CPU the direct kernel runs; elsewhere the tap-sum formulation. On the CPU
        // the tap sum is checked as well, so that the GPU's formulation is checked anywhere.
        let run = |d: &Device, taps: bool| -> Result<[Tensor; 3]> {
            let x = Var::from_tensor(&get(&format!("{tag}.x"))?.to_device(d)?)?;
            let w = Var::from_tensor(&get(&format!("{tag}.w"))?.to_device(d)?)?;
            let gy = get(&format!("{tag}.gy"))?.to_device(d)?;
            let y = if taps {
                depthwise_by_taps(x.as_tensor(), w.as_tensor(), s, p)?
            } else {
                depthwise_conv2d(x.as_tensor(), w.as_tensor(), s, p)?
            };
            let grads = (&y * &gy)?.sum_all()?.backward()?;
            let gx = grads.get(x.as_tensor()).context("no input gradient")?;
            let gw = grads.get(w.as_tensor()).context("no weight gradient")?;
            Ok([y.clone(), gx.clone(), gw.clone()])
        };
        let (got, on_cpu) = both(dev, cpu, |d| run(d, false))?;
        let taps = if dev.is_cpu() {
            Some(run(dev, true)?)
        } else {
            None
        };
        let parts = [
            ("output", "y", 1e-4),
            ("input gradient", "gx", 1e-4),
            ("weight gradient", "gw", 1e-3),
        ];
        for (i, (part, suffix, bound)) in parts.into_iter().enumerate() {
            let want = get(&format!("{tag}.{suffix}"))?;
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
    }
    Ok(())
}
