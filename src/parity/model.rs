//! Checks of the parity model: encoder, teacher forcing, beam search, fine-tuning statistics,
//! the attention paths, and the bottleneck ResNet encoder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::error::{ParityError, Result};
use super::fixtures::{load_tensors, Fixtures};
use super::report::{both, Report, Skipped, PARITY_TOL};
use crate::model::decoder::TeacherForced;
use crate::model::weights::Weights;
use crate::model::{BeamOptions, BlockKind, Caption, Encoder, EncoderConfig, ModelConfig};

pub fn encoder_section(
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

/// The parity model's teacher-forced pass over `tf_captions`.
pub fn teacher_forcing(fx: &Fixtures, d: &Device) -> Result<TeacherForced> {
    let lengths: Vec<usize> = fx.json("/lengths")?;
    let model = fx.model(d)?;
    let captions = fx.on("tf_captions", d)?.to_dtype(DType::U32)?;
    Ok(model
        .decoder
        .forward_teacher(&fx.on("encoder_out", d)?, &captions, &lengths)?)
}

pub fn teacher_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let sort_ind: Vec<usize> = fx.json("/tf_sort_ind")?;
    let decode_lengths: Vec<usize> = fx.json("/tf_decode_lengths")?;
    let (got, on_cpu) = both(dev, cpu, |d| teacher_forcing(fx, d))?;
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

/// Beam search of width `k` over the fixture's `images`, all in one batch.
pub fn beam_search(fx: &Fixtures, d: &Device, k: usize) -> Result<Vec<Caption>> {
    let opts = BeamOptions {
        beam_size: k,
        ..Default::default()
    };
    let model = fx.model(d)?;
    Ok(model.caption_images(&fx.on("images", d)?, &opts)?)
}

/// What differs between a caption's tokens and PyTorch's (and the CPU's), if anything.
fn token_mismatch(cap: &Caption, tokens: &[u32], cpu: Option<&Caption>) -> Option<String> {
    if cap.tokens != tokens {
        Some(format!("tokens {:?}, PyTorch {tokens:?}", cap.tokens))
    } else if cpu.is_some_and(|c| c.tokens != cap.tokens) {
        Some(format!(
            "tokens {:?}, CPU {:?}",
            cap.tokens,
            cpu.map(|c| &c.tokens)
        ))
    } else if !cap.finished {
        Some("no beam reached <end>".into())
    } else {
        None
    }
}

pub fn beam_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    for k in [1usize, 3, 5] {
        let (got, on_cpu) = both(dev, cpu, |d| beam_search(fx, d, k))?;
        for (i, cap) in got.iter().enumerate() {
            let tokens: Vec<u32> = fx.json(&format!("/beams/{k}/{i}/tokens"))?;
            let score: f64 = fx.json(&format!("/beams/{k}/{i}/score"))?;
            let name = format!("beam {k}, image {i}");
            let cpu_cap = on_cpu.as_ref().map(|c| &c[i]);
            r.exact(
                &format!("{name}: tokens"),
                token_mismatch(cap, &tokens, cpu_cap),
            );
            r.scalar(
                &format!("{name}: score"),
                cap.score,
                score,
                cpu_cap.map(|c| c.score),
            )?;
            let alphas = |c: &Caption| Tensor::new(c.alphas.clone(), &Device::Cpu);
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

/// The encoder's output in training mode (batch statistics) and one BatchNorm's running
/// statistics after it.
pub struct FineTune {
    pub output: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

/// The BatchNorm whose running statistics the fine-tuning check compares.
pub const FINE_TUNE_BN: &str = "encoder.resnet.6.0.bn1";

pub fn fine_tuning_forward(fx: &Fixtures, d: &Device) -> Result<FineTune> {
    let model = fx.model(d)?;
    let output = model.encoder.forward_t(&fx.on("tf_images", d)?, true)?;
    let buffers: HashMap<String, Tensor> = model.encoder.buffers().into_iter().collect();
    let stat = |n: &str| {
        let name = format!("{FINE_TUNE_BN}.{n}");
        buffers
            .get(&name)
            .cloned()
            .ok_or_else(|| ParityError::Missing(format!("no buffer {name}")))
    };
    Ok(FineTune {
        output,
        running_mean: stat("running_mean")?,
        running_var: stat("running_var")?,
    })
}

pub fn fine_tune_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let (got, on_cpu) = both(dev, cpu, |d| fine_tuning_forward(fx, d))?;
    let c = on_cpu.as_ref();
    r.tensor(
        "fine-tuning: encoder output",
        &got.output,
        fx.get("finetune_encoder_out")?,
        c.map(|t| &t.output),
        PARITY_TOL,
    )?;
    r.tensor(
        "fine-tuning: running mean",
        &got.running_mean,
        fx.get("finetune.running_mean")?,
        c.map(|t| &t.running_mean),
        PARITY_TOL,
    )?;
    r.tensor(
        "fine-tuning: running variance",
        &got.running_var,
        fx.get("finetune.running_var")?,
        c.map(|t| &t.running_var),
        PARITY_TOL,
    )
}

/// Attention over the fixture's `encoder_out` for three made-up hidden states per image:
/// (attention-weighted encoding, weights). `tracked` selects the training path.
fn attend(fx: &Fixtures, d: &Device, tracked: bool) -> Result<(Tensor, Tensor)> {
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
}

/// Attention scores: on the CPU inference runs a fused kernel and training the generic ops;
/// other devices run the generic ops for both. Compares inference on the device with
/// inference on the CPU (off the CPU), or inference with the training path (on the CPU).
pub fn attention_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let (awe, alpha) = attend(fx, dev, false)?;
    let (other, what) = match cpu {
        Some(c) => (attend(fx, c, false)?, "device vs CPU fused kernel"),
        None => (attend(fx, dev, true)?, "fused kernel vs generic ops"),
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

/// The architecture of `bottleneck_encoder.safetensors`: a narrow ResNet of bottleneck blocks.
pub fn bottleneck_config() -> ModelConfig {
    ModelConfig {
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
    }
}

/// The bottleneck ResNet encoder of `path`, every tensor checked against its architecture.
pub fn bottleneck_encoder(path: &Path, d: &Device) -> Result<Encoder> {
    let weights = Weights::new(load_tensors(path, d)?, d);
    let encoder = Encoder::load(&weights.pp("encoder"), &bottleneck_config());
    weights.check(path)?;
    Ok(encoder)
}

/// Skipped (and noted in the report) when the fixture is not there.
pub fn bottleneck_section(
    fx: &Fixtures,
    dev: &Device,
    cpu: Option<&Device>,
    r: &mut Report,
) -> Result<()> {
    let path = fx.path("bottleneck_encoder.safetensors");
    if !path.exists() {
        r.skipped.push(Skipped {
            path,
            what: "check skipped",
        });
        return Ok(());
    }
    let (got, on_cpu) = both(dev, cpu, |d| {
        Ok(bottleneck_encoder(&path, d)?.forward(&fx.on("images", d)?)?)
    })?;
    r.tensor(
        "bottleneck ResNet encoder output",
        &got,
        fx.get("bottleneck_encoder_out")?,
        on_cpu.as_ref(),
        PARITY_TOL,
    )
}
