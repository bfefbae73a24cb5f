//! The image encoder: a CNN backbone with spatial output, then adaptive average pooling to an
//! `S x S` grid, laid out `(N, S, S, C)` as the tutorial's `Encoder.forward` returns it.
//!
//! Two implementations compute the same function. The reference path (candle ops) serves
//! training (autograd, BatchNorm batch statistics), CUDA and every dtype. Inference on the CPU
//! in f32 runs the [`cpu`] engine instead, several times faster, unless the reference path is
//! asked for ([`InferencePath`], or `GAZE_ENCODER_PATH=reference` in the environment).
//!
//! The engine is a snapshot of the weights (BatchNorm folded into the convolutions). It is
//! built on first use and cached with a fingerprint (BLAKE3) of every tensor that can change
//! in place: candle `Var`s, which is what training updates (trainable weights, BatchNorm running
//! statistics). Each inference forward recomputes the fingerprint and rebuilds the engine when
//! it differs, so an engine is never used after the weights it was built from have changed.
//! Plain tensors cannot change through candle's safe API short of `slice_set`; whoever mutates
//! weights that way must call [`Encoder::invalidate_inference_cache`]. The check costs little
//! for a frozen encoder (only the small BatchNorm statistics are hashed); while fine-tuning it
//! hashes the trainable weights on each inference call.

pub mod cpu;
pub mod efficientnet;
pub mod layers;
pub mod resnet;

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::config::{EncoderConfig, ModelConfig};
use super::weights::WeightsView;
use crate::kernels::eligible;
use crate::kernels::pool::adaptive_pool_matrix;

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
    /// An inference-only CPU engine built from the current tensors in `precision`, if the
    /// backbone has one.
    fn cpu_engine(
        &self,
        _precision: cpu::Precision,
    ) -> Option<std::result::Result<cpu::CpuEncoder, cpu::CpuEngineError>> {
        None
    }
    /// Calls `f` on every tensor the CPU engine is built from.
    fn for_each_tensor(&self, _f: &mut dyn FnMut(&Tensor)) {}
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
    fn cpu_engine(
        &self,
        precision: cpu::Precision,
    ) -> Option<std::result::Result<cpu::CpuEncoder, cpu::CpuEngineError>> {
        Some(cpu::CpuEncoder::from_efficientnet(self, precision))
    }
    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        efficientnet::EfficientNetLite::for_each_tensor(self, f)
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
    fn cpu_engine(
        &self,
        precision: cpu::Precision,
    ) -> Option<std::result::Result<cpu::CpuEncoder, cpu::CpuEngineError>> {
        Some(cpu::CpuEncoder::from_resnet(self, precision))
    }
    fn for_each_tensor(&self, f: &mut dyn FnMut(&Tensor)) {
        resnet::ResNet::for_each_tensor(self, f)
    }
}

/// Which implementation runs inference-mode forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferencePath {
    /// The CPU engine for f32 images when the encoder's weights are on the CPU and the backbone
    /// has an engine; the reference path otherwise.
    Auto,
    /// Always candle's ops, as in training.
    Reference,
}

/// Environment variable that picks the default [`InferencePath`]: `reference` or `auto`.
pub const INFERENCE_PATH_ENV: &str = "GAZE_ENCODER_PATH";

impl InferencePath {
    /// From [`INFERENCE_PATH_ENV`]; `Auto` when unset or unrecognised (with a warning).
    pub fn from_env() -> Self {
        match std::env::var(INFERENCE_PATH_ENV) {
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "reference" | "ref" => InferencePath::Reference,
                "auto" | "fast" | "" => InferencePath::Auto,
                other => {
                    tracing::warn!(
                        value = other,
                        "{INFERENCE_PATH_ENV} is neither \"reference\" nor \"auto\"; using auto"
                    );
                    InferencePath::Auto
                }
            },
            Err(_) => InferencePath::Auto,
        }
    }
}

/// The precision new encoders' CPU engines start with ([`set_default_precision`]).
static DEFAULT_PRECISION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the precision every encoder built from now on starts with (f32 until set). The CLI sets
/// it once from `model.precision` / `--precision`, so that models loaded later (a daemon's model
/// swaps, retraining's candidates) run as the first one does. [`Encoder::set_precision`]
/// overrides it for one encoder.
pub fn set_default_precision(precision: cpu::Precision) {
    DEFAULT_PRECISION.store(
        precision == cpu::Precision::Bf16,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The precision new encoders start with.
pub fn default_precision() -> cpu::Precision {
    if DEFAULT_PRECISION.load(std::sync::atomic::Ordering::Relaxed) {
        cpu::Precision::Bf16
    } else {
        cpu::Precision::F32
    }
}

/// A built engine and the fingerprint of the tensors it was built from.
struct CachedEngine {
    fingerprint: blake3::Hash,
    engine: Arc<cpu::CpuEncoder>,
}

/// Backbone plus adaptive average pooling.
pub struct Encoder {
    backbone: Box<dyn Backbone>,
    encoded_size: usize,
    device: Device,
    path: InferencePath,
    precision: cpu::Precision,
    engine: Mutex<Option<CachedEngine>>,
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
            device: w.device().clone(),
            path: InferencePath::from_env(),
            precision: default_precision(),
            engine: Mutex::new(None),
        }
    }

    /// The implementation inference forwards use.
    pub fn inference_path(&self) -> InferencePath {
        self.path
    }

    pub fn set_inference_path(&mut self, path: InferencePath) {
        self.path = path;
    }

    /// What the CPU engine's convolutions compute in (f32 unless set). The reference path,
    /// training and CUDA are f32 whatever this says.
    pub fn precision(&self) -> cpu::Precision {
        self.precision
    }

    /// Sets the engine's precision; an engine built in another precision is dropped.
    pub fn set_precision(&mut self, precision: cpu::Precision) {
        if precision != self.precision {
            self.precision = precision;
            self.invalidate_inference_cache();
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

    /// `(N, 3, H, W)` normalised images to `(N, S, S, C)` features. Inference (`!train`) of
    /// f32 images on the CPU runs the CPU engine unless the path is `Reference`.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        if !train && self.uses_engine_for(images) {
            if let Some(engine) = self.current_engine()? {
                return engine
                    .forward(images, self.encoded_size)
                    .map_err(candle_core::Error::wrap);
            }
        }
        self.forward_reference_t(images, train)
    }

    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_t(images, false)
    }

    /// The reference path (candle ops) whatever the settings.
    pub fn forward_reference_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let map = self.backbone.forward_t(images, train)?;
        let pooled = adaptive_avg_pool_nhwc(&map, self.encoded_size)?;
        let (n, _, c) = pooled.dims3()?;
        pooled.reshape((n, self.encoded_size, self.encoded_size, c))
    }

    /// Inference through the reference path.
    pub fn forward_reference(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_reference_t(images, false)
    }

    /// Builds the CPU engine now (if inference would use one), so that the first forward does
    /// not pay for it. Returns whether an engine is ready.
    pub fn prepare_inference(&self) -> Result<bool> {
        if self.path == InferencePath::Reference || !self.device.is_cpu() {
            return Ok(false);
        }
        Ok(self.current_engine()?.is_some())
    }

    /// Drops the cached engine; the next inference forward builds a fresh one. Needed only after
    /// changing weights in place by means other than a `Var` (see the module docs).
    pub fn invalidate_inference_cache(&self) {
        *self.engine.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn uses_engine_for(&self, images: &Tensor) -> bool {
        self.path == InferencePath::Auto && self.device.is_cpu() && eligible(&[images])
    }

    /// The cached engine if its fingerprint still matches the tensors, else a fresh one;
    /// `None` when the backbone has no engine.
    fn current_engine(&self) -> Result<Option<Arc<cpu::CpuEncoder>>> {
        let mut cache = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let fingerprint = self.fingerprint()?;
        if let Some(cached) = cache.as_ref() {
            if cached.fingerprint == fingerprint {
                return Ok(Some(cached.engine.clone()));
            }
        }
        // Free the stale engine before building its replacement.
        *cache = None;
        let Some(built) = self.backbone.cpu_engine(self.precision) else {
            return Ok(None);
        };
        let engine = Arc::new(built.map_err(candle_core::Error::wrap)?);
        *cache = Some(CachedEngine {
            fingerprint,
            engine: engine.clone(),
        });
        Ok(Some(engine))
    }

    /// BLAKE3 over the contents of every backbone tensor that is a `Var` (see the module docs).
    fn fingerprint(&self) -> Result<blake3::Hash> {
        let mut vars = Vec::new();
        self.backbone.for_each_tensor(&mut |t| {
            if t.is_variable() {
                vars.push(t.clone());
            }
        });
        let hashes = vars
            .par_iter()
            .map(hash_tensor)
            .collect::<Result<Vec<_>>>()?;
        let mut all = blake3::Hasher::new();
        all.update(&(hashes.len() as u64).to_le_bytes());
        for h in &hashes {
            all.update(h.as_bytes());
        }
        Ok(all.finalize())
    }
}

/// BLAKE3 of a tensor's values (as f32) and shape.
fn hash_tensor(t: &Tensor) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    for d in t.dims() {
        hasher.update(&(*d as u64).to_le_bytes());
    }
    let mut feed = |values: &[f32]| {
        // Through a stack buffer: bytes without unsafe casts.
        let mut bytes = [0u8; 4096];
        for chunk in values.chunks(1024) {
            for (b, v) in bytes.chunks_exact_mut(4).zip(chunk) {
                b.copy_from_slice(&v.to_le_bytes());
            }
            hasher.update(&bytes[..chunk.len() * 4]);
        }
    };
    let direct = {
        let (storage, layout) = t.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => {
                feed(&v[start..end]);
                true
            }
            _ => false,
        }
    };
    if !direct {
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        feed(&values);
    }
    Ok(hasher.finalize())
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
