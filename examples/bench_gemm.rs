//! Throughput of the encoder's GEMM in each weight format (f32 16-column panels for AVX2, f32
//! 32-column panels for AVX-512, bf16 pairs for AVX-512 BF16) on one dense product, the shape
//! of a 1x1 convolution: `M` pixels, `K` input channels, `N` output channels.
//!
//!   cargo run --release --example bench_gemm -- 3136 256 256
//!   RAYON_NUM_THREADS=1 REPS=200 cargo run --release --example bench_gemm -- 784 1152 128

use std::time::Instant;

use gaze::kernels::activation::Activation;
use gaze::kernels::bf16::to_bf16;
use gaze::kernels::gemm::{ConvGemm, GemmInput, PackedWeights, WeightFormat};
use gaze::kernels::isa::KernelKind;
use gaze::kernels::layout::PixelMap;

fn main() {
    let dims: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("M K N as whole numbers"))
        .collect();
    let [m, k, n] = dims[..] else {
        eprintln!("usage: bench_gemm M K N");
        std::process::exit(2);
    };
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // One value past the matrix: bf16 reads whole pairs.
    let x: Vec<f32> = (0..m * k + 1)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let mut xb = vec![0u16; x.len()];
    to_bf16(&x, &mut xb);
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let bias = vec![0f32; n];
    let rows = |cols: usize| PixelMap {
        images: 1,
        height: 1,
        width: m,
        base: 0,
        image_step: m * cols,
        row_step: m * cols,
        col_step: cols,
    };
    let mut out = vec![0f32; m * n];
    let kernel = KernelKind::detect();
    println!(
        "{m}x{k} by {k}x{n}, kernel {kernel:?}, {} threads, {reps} repeats",
        rayon::current_num_threads()
    );
    for format in [WeightFormat::F32, WeightFormat::F32Wide, WeightFormat::Bf16] {
        let weights = PackedWeights::pack_as(format, &w, 1, k, n, &bias);
        let input = match format {
            WeightFormat::Bf16 => GemmInput::Bf16(&xb),
            _ => GemmInput::F32(&x),
        };
        let gemm = ConvGemm {
            input,
            input_map: rows(k),
            tap_offsets: &[0],
            weights: &weights,
            residual: None,
            activation: Activation::Identity,
            output_map: rows(n),
        };
        gemm.run(&mut out, kernel); // warm-up
        let t = Instant::now();
        for _ in 0..reps {
            gemm.run(&mut out, kernel);
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{:>10}: {:7.1} GFLOP/s",
            format!("{format:?}"),
            2.0 * (m * k * n) as f64 / secs / 1e9
        );
    }
}
