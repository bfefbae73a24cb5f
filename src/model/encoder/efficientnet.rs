//! EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
//! Neural Networks", 2019; the "Lite" variant for mobile accelerators): ReLU6 instead of swish,
//! no squeeze-and-excitation, stem and head not scaled, BatchNorm eps 1e-3, and TensorFlow's
//! "same" padding (asymmetric for stride 2). Tensor names are lukemelas' (`_conv_stem`,
//! `_bn0`, `_blocks.N._expand_conv` ...), under `encoder.efficientnet.` in gaze model files.
//!
//! Attention reads the head's output (1280 channels, stride 32: 8x8 at 256x256 input), the
//! last and most semantic map, as the tutorial reads ResNet's `layer4`; adaptive pooling then
//! gives the configured grid. ImageNet weights ship with gaze (`assets/weights/`, Apache-2.0).

use candle_core::{Module, Result, Tensor};

use super::layers::{BatchNorm, Linear};
use crate::kernels::depthwise::depthwise_conv2d;
use crate::kernels::layout::same_padding;
use crate::model::weights::WeightsView;

/// BatchNorm epsilon of the TensorFlow original.
pub const BN_EPS: f64 = 1e-3;
pub const OUT_CHANNELS: usize = 1280;
/// Prefix of the backbone's tensors inside the encoder.
pub const PREFIX: &str = "efficientnet";
/// Blocks before this index (the first two stages) stay frozen when fine-tuning.
pub const FIRST_FINE_TUNED_BLOCK: usize = 3;

/// (expand ratio, kernel, stride, output channels, repeats) per stage of Lite0.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];

/// The ImageNet weights of EfficientNet-Lite0 (lukemelas names, no prefix), built into gaze.
pub fn pretrained_weights() -> &'static [u8] {
    include_bytes!("../../../assets/weights/efficientnet-lite0.safetensors")
}

/// The built-in ImageNet weights as tensors named for a gaze model (`encoder.efficientnet.*`);
/// with `classifier`, the ImageNet head `_fc` too (under the same prefix).
pub fn pretrained_tensors(
    device: &candle_core::Device,
    classifier: bool,
) -> crate::model::error::Result<std::collections::HashMap<String, Tensor>> {
    let path = std::path::Path::new("<built-in EfficientNet-Lite0 weights>");
    let st = safetensors::SafeTensors::deserialize(pretrained_weights()).map_err(|e| {
        crate::model::ModelError::Safetensors {
            path: path.into(),
            reason: e.to_string(),
        }
    })?;
    let mut out = std::collections::HashMap::new();
    for (name, view) in st.tensors() {
        if !classifier && name.starts_with("_fc.") {
            continue;
        }
        use candle_core::safetensors::Load;
        out.insert(format!("encoder.{PREFIX}.{name}"), view.load(device)?);
    }
    Ok(out)
}

fn pad_same(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (top, bottom) = same_padding(h, kernel, stride);
    let (left, right) = same_padding(w, kernel, stride);
    if top + bottom + left + right == 0 {
        return Ok(x.clone());
    }
    x.pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

#[derive(Debug, Clone)]
pub(super) struct ConvBn {
    pub(super) weight: Tensor,
    pub(super) bn: BatchNorm,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) depthwise: bool,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        w: &WeightsView,
        conv: &str,
        bn: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        depthwise: bool,
    ) -> Self {
        let shape = if depthwise {
            [c_out, 1, kernel, kernel]
        } else {
            [c_out, c_in, kernel, kernel]
        };
        ConvBn {
            weight: w.pp(conv).get("weight", &shape),
            bn: BatchNorm::load_eps(&w.pp(bn), c_out, BN_EPS),
            kernel,
            stride,
            depthwise,
        }
    }

    fn forward(&self, x: &Tensor, train: bool, act: bool) -> Result<Tensor> {
        let x = pad_same(x, self.kernel, self.stride)?;
        let y = if self.depthwise {
            depthwise_conv2d(&x, &self.weight, self.stride, 0)?
        } else {
            x.conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        let y = self.bn.forward_t(&y, train)?;
        if act {
            relu6(&y)
        } else {
            Ok(y)
        }
    }
}

/// Inverted residual block (MBConv) without squeeze-excitation.
#[derive(Debug, Clone)]
pub(super) struct MbConv {
    pub(super) expand: Option<ConvBn>,
    pub(super) depthwise: ConvBn,
    pub(super) project: ConvBn,
    /// Identity shortcut (stride 1, as many output channels as input channels).
    pub(super) skip: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(e) => e.forward(x, train, true)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y, train, true)?;
        y = self.project.forward(&y, train, false)?;
        if self.skip {
            y = (y + x)?;
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    pub(super) stem: ConvBn,
    pub(super) blocks: Vec<MbConv>,
    pub(super) head: ConvBn,
    classifier: Option<Linear>,
}

impl EfficientNetLite {
    /// Builds Lite0 from tensors relative to `w` (`_conv_stem.weight` ...); with
    /// `classifier`, also the ImageNet head `_fc` (1000 classes).
    pub fn load(w: &WeightsView, classifier: bool) -> Self {
        let stem = ConvBn::load(w, "_conv_stem", "_bn0", 3, 32, 3, 2, false);
        let mut blocks = Vec::new();
        let mut c_in = 32;
        for (expand, kernel, stride, c_out, repeats) in STAGES {
            for r in 0..repeats {
                let stride = if r == 0 { stride } else { 1 };
                let b = w.pp("_blocks").pp(blocks.len());
                let mid = c_in * expand;
                let expand_conv = (expand != 1)
                    .then(|| ConvBn::load(&b, "_expand_conv", "_bn0", c_in, mid, 1, 1, false));
                blocks.push(MbConv {
                    expand: expand_conv,
                    depthwise: ConvBn::load(
                        &b,
                        "_depthwise_conv",
                        "_bn1",
                        mid,
                        mid,
                        kernel,
                        stride,
                        true,
                    ),
                    project: ConvBn::load(&b, "_project_conv", "_bn2", mid, c_out, 1, 1, false),
                    skip: stride == 1 && c_in == c_out,
                });
                c_in = c_out;
            }
        }
        let head = ConvBn::load(w, "_conv_head", "_bn1", c_in, OUT_CHANNELS, 1, 1, false);
        let classifier = classifier.then(|| Linear::load(&w.pp("_fc"), OUT_CHANNELS, 1000));
        EfficientNetLite {
            stem,
            blocks,
            head,
            classifier,
        }
    }

    /// NCHW images to the head's NCHW map (stride 32). With `train`, blocks from
    /// [`FIRST_FINE_TUNED_BLOCK`] on and the head use batch statistics; the rest is detached.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem.forward(x, false, true)?;
        for (i, block) in self.blocks.iter().enumerate() {
            if i == FIRST_FINE_TUNED_BLOCK && train {
                x = x.detach();
            }
            x = block.forward(&x, train && i >= FIRST_FINE_TUNED_BLOCK)?;
        }
        self.head.forward(&x, train, true)
    }

    /// ImageNet logits (global average pooling, then `_fc`); needs the classifier.
    pub fn classify(&self, x: &Tensor) -> Result<Tensor> {
        let Some(fc) = &self.classifier else {
            candle_core::bail!("this EfficientNet was built without its classifier");
        };
        let features = self.forward_t(x, false)?.mean((2, 3))?;
        fc.forward(&features)
    }

    /// Calls `f` on every tensor of the trunk (convolution weights, BatchNorm parameters and
    /// running statistics; not the classifier): what the CPU engine is built from.
    pub fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        for conv in self.convs() {
            f(&conv.weight);
            let (weight, bias) = conv.bn.weight_and_bias();
            f(weight);
            f(bias);
            f(conv.bn.running_mean());
            f(conv.bn.running_var());
        }
    }

    fn convs(&self) -> Vec<&ConvBn> {
        let mut out = vec![&self.stem];
        for b in &self.blocks {
            out.extend(&b.expand);
            out.push(&b.depthwise);
            out.push(&b.project);
        }
        out.push(&self.head);
        out
    }

    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        self.convs().into_iter().map(|c| &c.bn).collect()
    }
}
