//! What the CPU kernels take, tested in one place: tensors on the CPU, in f32 ([`eligible`]);
//! anything else goes to candle's ops, which run on every device and dtype. Inside a candle
//! custom op, [`contiguous_f32`] is the operand's data as a slice.

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

/// Whether every tensor is on the CPU and f32: the condition for running a kernel of this
/// module instead of candle's ops. Layout does not matter (the kernels make their operands
/// contiguous); an empty list is eligible.
pub fn eligible(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The f32 data of a contiguous operand of the custom op `op`.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op} needs contiguous inputs"),
    }
}
