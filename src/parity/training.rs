//! One training step of the parity model's decoder: loss, gradients, one Adam update.

use candle_core::{DType, Device, Tensor, Var};

use super::error::{ParityError, Result};
use super::fixtures::{load_tensors, Fixtures};
use super::report::{both, Report, PARITY_TOL};
use crate::model::decoder::TeacherOptions;
use crate::model::weights::Weights;
use crate::model::CaptionModel;
use crate::train::{adam::Adam, loss::batch_loss};

/// The decoder parameters (under `decoder.`) whose gradients and Adam updates are compared.
pub const GRADED: [&str; 5] = [
    "fc.weight",
    "decode_step.weight_ih",
    "attention.full_att.weight",
    "embedding.weight",
    "init_h.bias",
];

/// Loss parts, gradients and the parameters after one Adam step, in [`GRADED`]'s order.
pub struct StepResult {
    pub loss: f32,
    pub cross_entropy: f32,
    pub attention_reg: f32,
    pub words: usize,
    pub top5: usize,
    pub grads: Vec<Tensor>,
    pub after_adam: Vec<Tensor>,
}

/// The tutorial's step: the decoder trainable, the encoder frozen, `alpha_c = 1`, Adam at
/// learning rate 4e-4 with gradients clipped to 5.
pub fn training_step(fx: &Fixtures, d: &Device) -> Result<StepResult> {
    let path = fx.path("weights.safetensors");
    let tensors = load_tensors(&path, d)?;
    let wm = crate::data::WordMap::load(&fx.path("WORDMAP_parity.json"))?;
    let cfg = crate::model::file::infer_config(&tensors, wm.len(), Some(5), &path)?;
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
            .ok_or_else(|| ParityError::Missing(format!("{full} is not trainable")))
    };
    let mut graded = Vec::new();
    for name in GRADED {
        let v = var(name)?;
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| ParityError::Missing(format!("no gradient for decoder.{name}")))?;
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

pub fn training_section(
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
