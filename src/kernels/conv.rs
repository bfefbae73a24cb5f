//! A convolution with BatchNorm folded into its weights and bias, on [`Grid`] feature maps,
//! computed by the implicit GEMM of [`super::gemm`]: every full (not depthwise) convolution of
//! the CPU encoder engine, ResNet's and EfficientNet's.
//!
//! Inference-mode BatchNorm is `scale * x + shift` per output channel, so it folds into the
//! convolution once, when the engine is built: the weights scaled per output channel, the
//! shift as the bias the GEMM's epilogue adds. The output is written with its border
//! re-zeroed, ready for the next convolution to read its windows from it. Two paddings:
//! PyTorch's symmetric zero padding ([`FoldedConv::run`]) and TensorFlow's "same" padding,
//! asymmetric for stride 2 ([`FoldedConv::run_same`]); both are the input's border read from
//! an offset.
//!
//! Folded with [`WeightFormat::Bf16`], the weights are rounded to bfloat16 once, and each run
//! converts its input map to bf16 (into a scratch buffer the caller keeps) before the GEMM;
//! the output, bias, residual and activation stay f32.
//!
//! A 3x3, stride-1 convolution in f32 can also keep its weights in Winograd form
//! ([`Conv3x3::Winograd`], the default): then [`FoldedConv::run`] takes the Winograd path of
//! [`super::winograd`] (a quarter of the multiplications) whenever the output has enough tiles
//! to pay for reading its larger weights, and the implicit GEMM otherwise.

use super::activation::Activation;
use super::bf16::to_bf16;
use super::gemm::{ConvGemm, GemmInput, PackedWeights, WeightFormat};
use super::isa::KernelKind;
use super::layout::{same_padding, zero_border, Grid};
use super::winograd::WinogradConv;

/// How 3x3, stride-1, padding-1 f32 convolutions run: always as the implicit GEMM, or by
/// Winograd's F(4x4, 3x3) from `min_tiles` 4x4 output tiles on (the GEMM below that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv3x3 {
    Direct,
    Winograd { min_tiles: usize },
}

/// Environment variable that picks [`Conv3x3::from_env`]: `winograd` (the default) or
/// `direct`.
pub const CONV3X3_ENV: &str = "GAZE_CONV3X3";

impl Conv3x3 {
    /// Winograd where it pays ([`WinogradConv::MIN_TILES`]).
    pub const DEFAULT: Conv3x3 = Conv3x3::Winograd {
        min_tiles: WinogradConv::MIN_TILES,
    };

    /// From [`CONV3X3_ENV`]: `direct` for the implicit GEMM everywhere (and no Winograd weights
    /// held: they take four times the memory of the direct ones), else the default.
    pub fn from_env() -> Self {
        match std::env::var(CONV3X3_ENV) {
            Ok(v) if v.trim().eq_ignore_ascii_case("direct") => Conv3x3::Direct,
            Ok(v) if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("winograd") => {
                tracing::warn!(
                    value = v.as_str(),
                    "{CONV3X3_ENV} is neither \"winograd\" nor \"direct\"; using winograd"
                );
                Self::DEFAULT
            }
            _ => Self::DEFAULT,
        }
    }
}

/// A `k x k` convolution with its BatchNorm folded in, packed for the GEMM.
#[derive(Debug, Clone)]
pub struct FoldedConv {
    weights: PackedWeights,
    kernel: usize,
    stride: usize,
    padding: usize,
    c_in: usize,
    /// The Winograd form of a 3x3/1 convolution, and the tile count it starts at.
    winograd: Option<Box<(WinogradConv, usize)>>,
}

impl FoldedConv {
    /// From PyTorch's `(c_out, c_in, k, k)` weights (flattened), output channel `o` multiplied
    /// by `scale[o]`, with `shift` as the bias. `padding` is the symmetric padding
    /// [`FoldedConv::run`] applies. Panics when the sizes disagree.
    pub fn fold(
        weight: &[f32],
        shape: (usize, usize, usize),
        scale: &[f32],
        shift: &[f32],
        stride: usize,
        padding: usize,
    ) -> Self {
        Self::fold_as(
            WeightFormat::F32,
            weight,
            shape,
            scale,
            shift,
            stride,
            padding,
        )
    }

    /// As [`FoldedConv::fold`], the weights packed in `format`.
    pub fn fold_as(
        format: WeightFormat,
        weight: &[f32],
        (c_out, c_in, k): (usize, usize, usize),
        scale: &[f32],
        shift: &[f32],
        stride: usize,
        padding: usize,
    ) -> Self {
        assert_eq!(weight.len(), c_out * c_in * k * k, "weight size");
        assert_eq!(scale.len(), c_out, "scale size");
        // Row (ky, kx, ci) of the GEMM: kernel row ky is one tap of k * c_in floats. Blocks of
        // 16 output channels: 16 sequential read streams, and whole cache lines written.
        let mut m = vec![0f32; k * k * c_in * c_out];
        for o0 in (0..c_out).step_by(16) {
            let block = o0..(o0 + 16).min(c_out);
            for ci in 0..c_in {
                for ky in 0..k {
                    for kx in 0..k {
                        let row = ((ky * k + kx) * c_in + ci) * c_out;
                        for o in block.clone() {
                            m[row + o] = weight[((o * c_in + ci) * k + ky) * k + kx] * scale[o];
                        }
                    }
                }
            }
        }
        FoldedConv {
            weights: PackedWeights::pack_as(format, &m, k, k * c_in, c_out, shift),
            kernel: k,
            stride,
            padding,
            c_in,
            winograd: None,
        }
    }

    /// Also keeps the Winograd form when `policy` asks for it and this is a 3x3, stride-1,
    /// padding-1 convolution in f32 (`weight` and `scale` as given to [`FoldedConv::fold_as`]).
    pub fn with_winograd(mut self, policy: Conv3x3, weight: &[f32], scale: &[f32]) -> Self {
        let Conv3x3::Winograd { min_tiles } = policy else {
            return self;
        };
        // Below 128 input channels the transforms cost as much as the products save.
        let eligible = (self.kernel, self.stride, self.padding) == (3, 1, 1)
            && self.format() != WeightFormat::Bf16
            && self.c_in >= WinogradConv::MIN_CHANNELS;
        if eligible {
            let (c_out, c_in) = (self.c_out(), self.c_in);
            let scaled: Vec<f32> = weight
                .chunks_exact(c_in * 9)
                .zip(scale)
                .flat_map(|(filters, &s)| filters.iter().map(move |&v| v * s))
                .collect();
            let bias = self.weights.bias().to_vec();
            let form = WinogradConv::fold(self.format(), &scaled, (c_out, c_in), &bias);
            self.winograd = Some(Box::new((form, min_tiles)));
        }
        self
    }

    pub fn kernel(&self) -> usize {
        self.kernel
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn padding(&self) -> usize {
        self.padding
    }

    pub fn c_in(&self) -> usize {
        self.c_in
    }

    pub fn c_out(&self) -> usize {
        self.weights.out_channels()
    }

    pub fn format(&self) -> WeightFormat {
        self.weights.format()
    }

    /// The GEMM's view of `input` (laid out as `in_grid`): the map itself for f32 weights, its
    /// bf16 copy in `scratch` for bf16 weights (one value longer than the grid, zero, which an
    /// odd run's last pair reads against a zero weight).
    fn gemm_input<'a>(
        &self,
        input: &'a [f32],
        in_grid: Grid,
        scratch: &'a mut Vec<u16>,
    ) -> GemmInput<'a> {
        match self.format() {
            WeightFormat::F32 | WeightFormat::F32Wide => GemmInput::F32(input),
            WeightFormat::Bf16 => {
                let len = in_grid.floats();
                if scratch.len() < len + 1 {
                    scratch.resize(len + 1, 0);
                }
                to_bf16(&input[..len], scratch);
                scratch[len] = 0;
                GemmInput::Bf16(&scratch[..len + 1])
            }
        }
    }

    /// Floats held (weights and bias, the Winograd form's included).
    pub fn len(&self) -> usize {
        self.weights.len() + self.winograd.as_ref().map_or(0, |form| form.0.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The output grid (border 1) for an input grid, with the symmetric padding.
    pub fn output_grid(&self, input: Grid) -> Grid {
        let size = |x: usize| (x + 2 * self.padding - self.kernel) / self.stride + 1;
        Grid {
            n: input.n,
            h: size(input.h),
            w: size(input.w),
            c: self.c_out(),
            pad: 1,
        }
    }

    /// Runs with the symmetric padding into `output` (laid out as `out`, border re-zeroed).
    /// With `residual`, the output buffer's current interior is added before the activation.
    /// `scratch` holds the bf16 copy of the input when the weights are bf16.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        input: &[f32],
        in_grid: Grid,
        output: &mut [f32],
        out: Grid,
        residual: bool,
        activation: Activation,
        kernel: KernelKind,
        scratch: &mut Vec<u16>,
    ) {
        debug_assert_eq!(in_grid.c, self.c_in);
        debug_assert_eq!(out, self.output_grid(in_grid));
        if let Some(form) = &self.winograd {
            let (winograd, min_tiles) = &**form;
            if WinogradConv::tiles(out) >= *min_tiles {
                winograd.run(input, in_grid, output, out, residual, activation, kernel);
                zero_border(output, out);
                return;
            }
        }
        let taps = in_grid.kernel_rows(self.kernel);
        ConvGemm {
            input: self.gemm_input(input, in_grid, scratch),
            input_map: in_grid.windows(out.h, out.w, self.stride, self.padding),
            tap_offsets: &taps,
            weights: &self.weights,
            residual: residual.then(|| out.interior()),
            activation,
            output_map: out.interior(),
        }
        .run(output, kernel);
        zero_border(output, out);
    }

    /// Runs with TensorFlow "same" padding from `input` (laid out as `in_grid`, border at
    /// least `k / 2`) into `output` (laid out as `out`, border re-zeroed). With `residual`, the
    /// output's current interior is added before the activation. `scratch` as for
    /// [`FoldedConv::run`].
    #[allow(clippy::too_many_arguments)]
    pub fn run_same(
        &self,
        input: &[f32],
        in_grid: Grid,
        output: &mut [f32],
        out: Grid,
        residual: bool,
        activation: Activation,
        kernel: KernelKind,
        scratch: &mut Vec<u16>,
    ) {
        let (k, stride) = (self.kernel, self.stride);
        let (top, bottom) = same_padding(in_grid.h, k, stride);
        let (left, right) = same_padding(in_grid.w, k, stride);
        assert!(
            bottom <= in_grid.pad && right <= in_grid.pad,
            "border narrower than the padding"
        );
        assert_eq!(
            (out.n, out.h, out.w, out.c),
            (
                in_grid.n,
                in_grid.h.div_ceil(stride),
                in_grid.w.div_ceil(stride),
                self.c_out()
            ),
            "output grid"
        );
        let taps = in_grid.kernel_rows(k);
        ConvGemm {
            input: self.gemm_input(input, in_grid, scratch),
            input_map: in_grid.windows_at(out.h, out.w, stride, top, left),
            tap_offsets: &taps,
            weights: &self.weights,
            residual: residual.then(|| out.interior()),
            activation,
            output_map: out.interior(),
        }
        .run(output, kernel);
        zero_border(output, out);
    }
}
