//! ResNet backbones (He et al., "Deep Residual Learning for Image Recognition", 2015) in
//! torchvision's v1.5 form (stride in the 3x3 convolution), without the pooling and
//! classification head, as the tutorial's encoder uses them.
//!
//! Tensor names are the tutorial's: its encoder wraps the ResNet children in an
//! `nn.Sequential`, so `conv1` is `resnet.0`, `bn1` is `resnet.1` and `layer1..layer4` are
//! `resnet.4..resnet.7`. [`torchvision_to_tutorial`] maps torchvision's own names.

use candle_core::{Result, Tensor};

use super::layers::{BatchNorm, Conv};
use crate::model::config::BlockKind;
use crate::model::weights::WeightsView;

/// Index of `layer1` in the tutorial's `nn.Sequential` of ResNet children.
pub const FIRST_LAYER_INDEX: usize = 4;

/// Maps a torchvision ResNet name (`conv1.weight`, `layer2.0.bn1.bias`, `fc.weight`) to the
/// tutorial's (`resnet.0.weight`, `resnet.5.0.bn1.bias`); `None` for names the encoder drops.
pub fn torchvision_to_tutorial(name: &str) -> Option<String> {
    let (head, rest) = name.split_once('.')?;
    let index = match head {
        "conv1" => 0,
        "bn1" => 1,
        "layer1" => 4,
        "layer2" => 5,
        "layer3" => 6,
        "layer4" => 7,
        _ => return None,
    };
    Some(format!("resnet.{index}.{rest}"))
}

#[derive(Debug, Clone)]
pub struct Block {
    pub(super) convs: Vec<(Conv, BatchNorm)>,
    pub(super) downsample: Option<(Conv, BatchNorm)>,
}

impl Block {
    fn load(w: &WeightsView, kind: BlockKind, c_in: usize, planes: usize, stride: usize) -> Self {
        let c_out = planes * kind.expansion();
        let conv_bn = |i: usize, ci: usize, co: usize, k: usize, s: usize, p: usize| {
            (
                Conv::load(&w.pp(format!("conv{i}")), ci, co, k, s, p),
                BatchNorm::load(&w.pp(format!("bn{i}")), co),
            )
        };
        let convs = match kind {
            BlockKind::Basic => vec![
                conv_bn(1, c_in, planes, 3, stride, 1),
                conv_bn(2, planes, planes, 3, 1, 1),
            ],
            BlockKind::Bottleneck => vec![
                conv_bn(1, c_in, planes, 1, 1, 0),
                conv_bn(2, planes, planes, 3, stride, 1),
                conv_bn(3, planes, c_out, 1, 1, 0),
            ],
        };
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = w.pp("downsample");
            (
                Conv::load(&d.pp("0"), c_in, c_out, 1, stride, 0),
                BatchNorm::load(&d.pp("1"), c_out),
            )
        });
        Block { convs, downsample }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            y = bn.forward_t(&conv.forward(&y)?, train)?;
            if i < last {
                y = y.relu()?;
            }
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        (y + identity)?.relu()
    }
}

/// A ResNet trunk: stem (conv 7x7/2, BN, ReLU, max-pool 3x3/2) then four stages.
#[derive(Debug, Clone)]
pub struct ResNet {
    pub(super) conv1: Conv,
    pub(super) bn1: BatchNorm,
    pub(super) layers: [Vec<Block>; 4],
    out_channels: usize,
}

impl ResNet {
    /// Builds from `w` (positioned at the encoder, i.e. names `resnet.0.weight` ...).
    pub fn load(w: &WeightsView, kind: BlockKind, layers: [usize; 4], width: usize) -> Self {
        let r = w.pp("resnet");
        let conv1 = Conv::load(&r.pp("0"), 3, width, 7, 2, 3);
        let bn1 = BatchNorm::load(&r.pp("1"), width);
        let mut c_in = width;
        let stages: Vec<Vec<Block>> = (0..4)
            .map(|stage| {
                let planes = width << stage;
                let stage_w = r.pp(FIRST_LAYER_INDEX + stage);
                (0..layers[stage])
                    .map(|i| {
                        let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                        let block = Block::load(&stage_w.pp(i), kind, c_in, planes, stride);
                        c_in = planes * kind.expansion();
                        block
                    })
                    .collect()
            })
            .collect();
        let layers: [Vec<Block>; 4] = stages.try_into().expect("four stages");
        ResNet {
            conv1,
            bn1,
            layers,
            out_channels: c_in,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Every BatchNorm, stem first.
    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut out = vec![&self.bn1];
        for block in self.layers.iter().flatten() {
            out.extend(block.convs.iter().map(|(_, bn)| bn));
            out.extend(block.downsample.iter().map(|(_, bn)| bn));
        }
        out
    }

    /// Calls `f` on every tensor of the network (weights and BatchNorm statistics).
    pub fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        let mut visit = |conv: &Conv, bn: &BatchNorm| {
            f(&conv.weight);
            let (weight, bias) = bn.weight_and_bias();
            f(weight);
            f(bias);
            f(bn.running_mean());
            f(bn.running_var());
        };
        visit(&self.conv1, &self.bn1);
        for block in self.layers.iter().flatten() {
            for (conv, bn) in block.convs.iter().chain(&block.downsample) {
                visit(conv, bn);
            }
        }
    }

    /// NCHW images to the NCHW feature map of `layer4` (stride 32).
    ///
    /// With `train`, layer2..layer4 use batch statistics in BatchNorm (the tutorial fine-tunes
    /// only those); the stem and layer1 always run in inference mode and are detached.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.bn1.forward_t(&self.conv1.forward(x)?, false)?.relu()?;
        // After ReLU every value is >= 0, so zero padding equals PyTorch's -inf padding.
        let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut x = x.max_pool2d_with_stride((3, 3), (2, 2))?;
        for (stage, blocks) in self.layers.iter().enumerate() {
            if stage == 1 && train {
                x = x.detach();
            }
            for block in blocks {
                x = block.forward(&x, train && stage > 0)?;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_torchvision_names() {
        assert_eq!(
            torchvision_to_tutorial("conv1.weight").as_deref(),
            Some("resnet.0.weight")
        );
        assert_eq!(
            torchvision_to_tutorial("bn1.running_var").as_deref(),
            Some("resnet.1.running_var")
        );
        assert_eq!(
            torchvision_to_tutorial("layer3.22.downsample.1.bias").as_deref(),
            Some("resnet.6.22.downsample.1.bias")
        );
        assert_eq!(torchvision_to_tutorial("fc.weight"), None);
    }
}
