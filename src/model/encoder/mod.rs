//! The image encoder: a CNN backbone with spatial output, then adaptive average pooling to an
//! `S x S` grid, laid out `(N, S, S, C)` as the tutorial's `Encoder.forward` returns it.

pub mod depthwise;
pub mod efficientnet;
pub mod layers;
pub mod resnet;

use candle_core::{DType, Device, Result, Tensor};

use super::config::{EncoderConfig, ModelConfig};
use super::weights::WeightsView;

/// A CNN trunk with spatial output.
pub trait Backbone: Send + Sync {
    /// NCHW normalised images to an NCHW feature map. `train` selects batch statistics in the
    /// layers that fine-tuning trains.
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor>;
    /// Channels of the feature map.
    fn out_channels(&self) -> usize;
    /// Non-trainable state that training mode changes (BatchNorm running statistics), by
    /// full tensor name.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
}

impl Backbone for efficientnet::EfficientNetLite {
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        efficientnet::EfficientNetLite::forward_t(self, images, train)
    }
    fn out_channels(&self) -> usize {
        efficientnet::OUT_CHANNELS
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.batch_norms()
            .into_iter()
            .flat_map(|bn| bn.buffers())
            .collect()
    }
}

impl Backbone for resnet::ResNet {
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        resnet::ResNet::forward_t(self, images, train)
    }
    fn out_channels(&self) -> usize {
        resnet::ResNet::out_channels(self)
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.batch_norms()
            .into_iter()
            .flat_map(|bn| bn.buffers())
            .collect()
    }
}

/// Backbone plus adaptive average pooling.
pub struct Encoder {
    backbone: Box<dyn Backbone>,
    encoded_size: usize,
}

impl Encoder {
    /// Builds the encoder from tensors named as in the tutorial, relative to `w`.
    pub fn load(w: &WeightsView, cfg: &ModelConfig) -> Self {
        let backbone: Box<dyn Backbone> = match &cfg.encoder {
            EncoderConfig::Resnet {
                block,
                layers,
                width,
            } => Box::new(resnet::ResNet::load(w, *block, *layers, *width)),
            EncoderConfig::EfficientnetLite0 => Box::new(efficientnet::EfficientNetLite::load(
                &w.pp(efficientnet::PREFIX),
                false,
            )),
        };
        Encoder {
            backbone,
            encoded_size: cfg.encoded_image_size,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.backbone.out_channels()
    }

    /// BatchNorm running statistics by full tensor name (`encoder.resnet.1.running_mean`, ...).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.backbone.buffers()
    }

    pub fn encoded_size(&self) -> usize {
        self.encoded_size
    }

    /// `(N, 3, H, W)` normalised images to `(N, S, S, C)` features.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let map = self.backbone.forward_t(images, train)?;
        let pooled = adaptive_avg_pool_nhwc(&map, self.encoded_size)?;
        let (n, _, c) = pooled.dims3()?;
        pooled.reshape((n, self.encoded_size, self.encoded_size, c))
    }

    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_t(images, false)
    }
}

/// PyTorch's `AdaptiveAvgPool1d` bins as a `(out, in)` averaging matrix: bin `i` spans
/// `floor(i*in/out) .. ceil((i+1)*in/out)`, so bins overlap when `out > in`.
pub fn adaptive_pool_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    for i in 0..output {
        let start = i * input / output;
        let end = ((i + 1) * input).div_ceil(output);
        let weight = 1.0 / (end - start) as f32;
        for j in start..end {
            m[i * input + j] = weight;
        }
    }
    m
}

/// `AdaptiveAvgPool2d(s)` of an NCHW map, returned as `(N, s*s, C)` (pixels row-major), as one
/// matrix product with the Kronecker product of the row and column bin matrices.
pub fn adaptive_avg_pool_nhwc(map: &Tensor, s: usize) -> Result<Tensor> {
    let (n, c, h, w) = map.dims4()?;
    let ph = adaptive_pool_matrix(h, s);
    let pw = adaptive_pool_matrix(w, s);
    let mut k = vec![0f32; s * s * h * w];
    for i in 0..s {
        for j in 0..s {
            let row = &mut k[(i * s + j) * h * w..(i * s + j + 1) * h * w];
            for a in 0..h {
                let wa = ph[i * h + a];
                if wa == 0.0 {
                    continue;
                }
                for b in 0..w {
                    row[a * w + b] = wa * pw[j * w + b];
                }
            }
        }
    }
    let k = Tensor::from_vec(k, (s * s, h * w), map.device())?.to_dtype(map.dtype())?;
    let flat = map.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?;
    k.broadcast_left(n)?.matmul(&flat)
}

/// A float tensor of normalised images on `device` from CHW buffers of equal size.
pub fn images_to_tensor(images: &[Vec<f32>], size: usize, device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(images.len() * 3 * size * size);
    for img in images {
        data.extend_from_slice(img);
    }
    Tensor::from_vec(data, (images.len(), 3, size, size), device)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_bins_match_pytorch() {
        // 8 -> 14: bins overlap; bin 0 is [0, 1), bin 1 is [0, 2), bin 13 is [7, 8).
        let m = adaptive_pool_matrix(8, 14);
        assert_eq!(&m[0..8], &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&m[8..16], &[0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            &m[13 * 8..14 * 8],
            &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        );
        // 5 -> 3: [0,2), [1,4), [3,5)
        let m = adaptive_pool_matrix(5, 3);
        assert_eq!(
            m,
            vec![
                0.5,
                0.5,
                0.0,
                0.0,
                0.0,
                0.0,
                1.0 / 3.0,
                1.0 / 3.0,
                1.0 / 3.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.5,
                0.5
            ]
        );
    }

    #[test]
    fn pooling_averages_each_bin() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 4.0 * 4.0, &dev)?.reshape((1, 2, 4, 4))?;
        let y = adaptive_avg_pool_nhwc(&x, 2)?; // (1, 4, 2)
        let v: Vec<Vec<Vec<f32>>> = y.to_vec3()?;
        assert_eq!(v[0][0], vec![2.5, 18.5]); // mean of 0,1,4,5 and of 16,17,20,21
        assert_eq!(v[0][3], vec![12.5, 28.5]);
        Ok(())
    }
}
