//! EfficientNet-Lite0 with the built-in ImageNet weights, and the depthwise convolution,
//! against PyTorch (tests/fixtures/efficientnet/make_efficientnet.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use gaze::data::image::{decode_file, normalize_chw, rgb_to_chw, DecodeOptions};
use gaze::kernels::depthwise::{depthwise_by_taps, depthwise_conv2d};
use gaze::model::encoder::efficientnet::{pretrained_tensors, EfficientNetLite, PREFIX};
use gaze::model::weights::Weights;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/efficientnet")
        .join(name)
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu).unwrap()
}

fn network() -> EfficientNetLite {
    let weights = Weights::new(
        pretrained_tensors(&Device::Cpu, true).unwrap(),
        &Device::Cpu,
    );
    let net = EfficientNetLite::load(&weights.pp("encoder").pp(PREFIX), true);
    weights.check(Path::new("built-in")).unwrap();
    assert!(weights.unused().is_empty(), "{:?}", weights.unused());
    net
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn top(logits: &Tensor, k: usize) -> Vec<usize> {
    let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

/// Resize the shorter side to 256 (bilinear), centre-crop 224, normalise: ImageNet evaluation.
fn imagenet_input(path: &Path) -> Tensor {
    let img = decode_file(path, &DecodeOptions::default())
        .unwrap()
        .to_rgb8();
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = 256.0 / w.min(h);
    let (nw, nh) = ((w * scale).round() as u32, (h * scale).round() as u32);
    let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let crop =
        image::imageops::crop_imm(&resized, (nw - 224) / 2, (nh - 224) / 2, 224, 224).to_image();
    let chw = rgb_to_chw(&crop);
    let mut x = vec![0f32; chw.len()];
    normalize_chw(&chw, &mut x);
    Tensor::from_vec(x, (1, 3, 224, 224), &Device::Cpu).unwrap()
}

#[test]
fn classifies_like_pytorch() {
    let exp = expected();
    let net = network();
    let logits = net.classify(&exp["chelsea.input"]).unwrap();
    let want = &exp["chelsea.logits"];
    let diff = max_abs_diff(&logits, want);
    assert!(
        diff <= 1e-4 * max_abs(want).max(1.0),
        "logits differ by {diff}"
    );
    assert_eq!(top(&logits, 3), vec![285, 281, 282]);
}

#[test]
fn classifies_the_fixture_photographs() {
    let net = network();
    let chelsea = net
        .classify(&imagenet_input(&fixture("chelsea.png")))
        .unwrap();
    assert_eq!(top(&chelsea, 1), vec![285], "Egyptian cat");
    let coffee = net
        .classify(&imagenet_input(&fixture("coffee.png")))
        .unwrap();
    assert_eq!(top(&coffee, 1), vec![967], "espresso");
}

#[test]
fn spatial_features_match_pytorch() {
    let exp = expected();
    let net = network();
    for tag in ["features256", "features_odd"] {
        let got = net.forward_t(&exp[&format!("{tag}.input")], false).unwrap();
        let want = &exp[&format!("{tag}.output")];
        let diff = max_abs_diff(&got, want);
        assert!(
            diff <= 1e-4 * max_abs(want),
            "{tag}: differs by {diff} (max {})",
            max_abs(want)
        );
    }
}

#[test]
fn depthwise_convolution_forward_and_backward_match_pytorch() {
    let exp = expected();
    for (k, s, p) in [(3usize, 1usize, 1usize), (5, 2, 2), (3, 2, 0)] {
        let tag = format!("dw_k{k}_s{s}_p{p}");
        let x = Var::from_tensor(&exp[&format!("{tag}.x")]).unwrap();
        let w = Var::from_tensor(&exp[&format!("{tag}.w")]).unwrap();
        let gy = &exp[&format!("{tag}.gy")];
        for (name, y) in [
            (
                "kernel",
                depthwise_conv2d(x.as_tensor(), w.as_tensor(), s, p).unwrap(),
            ),
            (
                "taps",
                depthwise_by_taps(x.as_tensor(), w.as_tensor(), s, p).unwrap(),
            ),
        ] {
            assert!(
                max_abs_diff(&y, &exp[&format!("{tag}.y")]) < 1e-4,
                "{tag} {name} forward"
            );
            let grads = (y * gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(x.as_tensor()).unwrap();
            let gw = grads.get(w.as_tensor()).unwrap();
            assert!(
                max_abs_diff(gx, &exp[&format!("{tag}.gx")]) < 1e-4,
                "{tag} {name} input gradient"
            );
            assert!(
                max_abs_diff(gw, &exp[&format!("{tag}.gw")]) < 1e-3,
                "{tag} {name} weight gradient"
            );
        }
    }
}

/// The CPU inference engine (folded BatchNorm, NHWC) against PyTorch: spatial features, and
/// ImageNet logits from its globally pooled features.
#[test]
fn cpu_engine_matches_pytorch() {
    use gaze::model::encoder::adaptive_avg_pool_nhwc;
    use gaze::model::encoder::cpu::CpuEncoder;

    let exp = expected();
    let net = network();
    let engine =
        CpuEncoder::from_efficientnet(&net, gaze::model::encoder::cpu::Precision::F32).unwrap();
    for (tag, s) in [("features256", 8), ("features_odd", 4)] {
        let want = &exp[&format!("{tag}.output")];
        // Pooling to the map's own size is the identity (features256).
        let want = adaptive_avg_pool_nhwc(want, s).unwrap();
        let got = engine
            .forward(&exp[&format!("{tag}.input")], s)
            .unwrap()
            .reshape(want.dims())
            .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(
            diff <= 1e-4 * max_abs(&want),
            "{tag}: engine differs by {diff} (max {})",
            max_abs(&want)
        );
    }

    let tensors = pretrained_tensors(&Device::Cpu, true).unwrap();
    let fc_w = &tensors[&format!("encoder.{PREFIX}._fc.weight")];
    let fc_b = &tensors[&format!("encoder.{PREFIX}._fc.bias")];
    let features = engine
        .forward(&exp["chelsea.input"], 1)
        .unwrap()
        .reshape((1, 1280))
        .unwrap();
    let logits = features
        .matmul(&fc_w.t().unwrap())
        .unwrap()
        .broadcast_add(fc_b)
        .unwrap();
    let want = &exp["chelsea.logits"];
    let diff = max_abs_diff(&logits, want);
    assert!(
        diff <= 1e-4 * max_abs(want).max(1.0),
        "engine logits differ by {diff}"
    );
    assert_eq!(top(&logits, 3), vec![285, 281, 282]);
}
