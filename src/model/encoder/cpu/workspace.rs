//! The buffers one forward call of the CPU encoder engine writes its feature maps into; the
//! engine keeps them from call to call, so a forward allocates nothing once warm.

/// Reusable buffers for one forward call: `input` holds the packed images, `x` a block's input
/// and output; `t1`, `t2` and `d` the maps in between (which holds what is each network's
/// choice).
#[derive(Default)]
pub struct Workspace {
    pub input: Vec<f32>,
    pub x: Vec<f32>,
    pub t1: Vec<f32>,
    pub t2: Vec<f32>,
    pub d: Vec<f32>,
    /// The bf16 copy of a convolution's input, when the engine runs in bf16.
    pub bf16: Vec<u16>,
}
