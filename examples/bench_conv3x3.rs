//! A 3x3, stride-1 convolution of one ResNet layer's shape, as the implicit GEMM and by
//! Winograd's F(4x4, 3x3), in f32 with the fastest kernel this CPU runs: milliseconds per call
//! and the direct convolution's GFLOP/s equivalent (2 * 9 * c_in * c_out per output pixel).
//!
//!   cargo run --release --example bench_conv3x3 -- 8 16 16 256 256
//!   REPS=50 cargo run --release --example bench_conv3x3 -- 1 64 64 64 64

use std::time::Instant;

use gaze::kernels::activation::Activation;
use gaze::kernels::conv::{Conv3x3, FoldedConv};
use gaze::kernels::gemm::WeightFormat;
use gaze::kernels::isa::KernelKind;
use gaze::kernels::layout::Grid;

fn main() {
    let dims: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N H W C_IN C_OUT as whole numbers"))
        .collect();
    let [n, h, w, c_in, c_out] = dims[..] else {
        eprintln!("usage: bench_conv3x3 N H W C_IN C_OUT");
        std::process::exit(2);
    };
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let kernel = KernelKind::detect();
    let format = match kernel {
        KernelKind::Avx512 => WeightFormat::F32Wide,
        _ => WeightFormat::F32,
    };
    let weight: Vec<f32> = (0..c_out * c_in * 9)
        .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let scale = vec![1f32; c_out];
    let shift = vec![0f32; c_out];
    let direct = FoldedConv::fold_as(format, &weight, (c_out, c_in, 3), &scale, &shift, 1, 1);
    let winograd =
        direct
            .clone()
            .with_winograd(Conv3x3::Winograd { min_tiles: 0 }, &weight, &scale);
    let in_grid = Grid {
        n,
        h,
        w,
        c: c_in,
        pad: 1,
    };
    let input: Vec<f32> = (0..in_grid.floats())
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let out = direct.output_grid(in_grid);
    let mut output = vec![0f32; out.floats()];
    let flops = 2.0 * 9.0 * (c_in * c_out * n * h * w) as f64;
    println!("{n}x{h}x{w}, {c_in} -> {c_out} channels, {kernel:?}, {reps} calls each");
    for (name, conv) in [("direct", &direct), ("winograd", &winograd)] {
        let mut scratch = Vec::new();
        let mut call = || {
            conv.run(
                &input,
                in_grid,
                &mut output,
                out,
                false,
                Activation::Relu,
                kernel,
                &mut scratch,
            )
        };
        call();
        let start = Instant::now();
        for _ in 0..reps {
            call();
        }
        let seconds = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:>9}: {:8.3} ms  {:7.1} GFLOP/s (direct equivalent)",
            seconds * 1e3,
            flops / seconds / 1e9
        );
    }
}
