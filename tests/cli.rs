//! Drives the real `gaze` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn gaze() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gaze"))
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

#[test]
fn caption_reports_bad_files_and_captions_the_rest() {
    let att = tempfile::tempdir().unwrap();
    let out = gaze()
        .args(["caption", "--weights"])
        .arg(fixture("parity/weights.safetensors"))
        .arg("--word-map")
        .arg(fixture("parity/WORDMAP_parity.json"))
        .args(["--beam-size", "3", "--json", "--attention-dir"])
        .arg(att.path())
        .arg(fixture("images/red_circle.png"))
        .arg(fixture("images/truncated.jpg"))
        .arg(fixture("images/blue_square.jpg"))
        .arg(fixture("images/grey_triangle.png"))
        .arg(fixture("images/not_an_image.jpg"))
        .arg(fixture("images/missing.png"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, name) in lines
        .iter()
        .zip(["red_circle.png", "blue_square.jpg", "grey_triangle.png"])
    {
        assert!(line["path"].as_str().unwrap().ends_with(name));
        assert!(!line["caption"].as_str().unwrap().is_empty());
        assert_eq!(line["token_ids"][0], 28, "starts with <start>");
        assert!(line["score"].as_f64().unwrap() < 0.0);
        let stem = name.split('.').next().unwrap();
        assert!(att.path().join(format!("{stem}.attention.png")).exists());
    }
    for bad in ["truncated.jpg", "not_an_image.jpg", "missing.png"] {
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with("error:") && l.contains(bad))
                .count(),
            1,
            "{stderr}"
        );
    }
}

#[test]
fn caption_plain_output_and_missing_word_map() {
    let out = gaze()
        .args(["caption", "--beam-size", "1", "--weights"])
        .arg(fixture("parity/weights.safetensors"))
        .arg("--word-map")
        .arg(fixture("parity/WORDMAP_parity.json"))
        .arg(fixture("images/red_circle.png"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (path, caption) = stdout.trim_end().split_once('\t').unwrap();
    assert!(path.ends_with("red_circle.png") && !caption.is_empty());

    // A plain state dict without a word map: a clear error, exit 2.
    let out = gaze()
        .args(["model", "info"])
        .arg(fixture("parity/weights.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("weights.safetensors") && stderr.contains("--word-map"),
        "{stderr}"
    );
}

#[test]
fn model_info_prints_config_and_vocabulary() {
    let out = gaze()
        .args(["model", "info", "--json", "--word-map"])
        .arg(fixture("parity/WORDMAP_parity.json"))
        .arg(fixture("parity/weights.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vocab_size"], 30);
    assert_eq!(v["encoder_dim"], 64);
    assert_eq!(v["config"]["decoder_dim"], 20);
    assert_eq!(
        v["config"]["encoder"]["layers"],
        serde_json::json!([1, 1, 1, 1])
    );
}

#[test]
fn parity_check_passes_on_the_cpu_and_fails_on_a_wrong_fixture() {
    let out = gaze()
        .args(["bench", "parity", "--device", "cpu", "--fixtures"])
        .arg(fixture(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    for check in [
        "encoder output",
        "beam 5, image 1: tokens",
        "gradient decoder.fc.weight",
        "fine-tuning: running variance",
        "attention weights (fused kernel vs generic ops)",
        "depthwise k5 s2 p2: weight gradient",
        "depthwise k5 s2 p2: weight gradient (taps)",
        "encoder output (candle ops, the GPU path)",
        "EfficientNet-Lite0 logits",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(check) && l.ends_with("ok")),
            "{check}: {stdout}"
        );
    }
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    // Expected values that are off by more than the tolerance must fail the check.
    let dir = tempfile::tempdir().unwrap();
    let parity = dir.path().join("parity");
    std::fs::create_dir(&parity).unwrap();
    for f in [
        "weights.safetensors",
        "WORDMAP_parity.json",
        "expected.json",
    ] {
        std::fs::copy(fixture(&format!("parity/{f}")), parity.join(f)).unwrap();
    }
    let dev = candle_core::Device::Cpu;
    let mut expected =
        candle_core::safetensors::load(fixture("parity/expected.safetensors"), &dev).unwrap();
    let enc = expected["encoder_out"].clone();
    expected.insert("encoder_out".into(), (enc * 1.01).unwrap());
    candle_core::safetensors::save(&expected, parity.join("expected.safetensors")).unwrap();
    let out = gaze()
        .args(["bench", "parity", "--device", "cpu", "--fixtures"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("encoder output") && l.ends_with("FAIL")),
        "{stdout}"
    );
    assert!(stdout.contains("bottleneck_encoder.safetensors not found"));
}

#[test]
fn train_bench_reports_both_stages() {
    for stage in [&[][..], &["--fine-tune"][..]] {
        let out = gaze()
            .args(["bench", "train", "--device", "cpu", "--encoder", "resnet18"])
            .args(["--image-size", "32", "--batch-size", "4", "--captions", "8"])
            .args(["--vocab", "40"])
            .args(stage)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let timed = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("timed"))
            .unwrap_or_else(|| panic!("{stdout}"));
        let cps: f64 = timed.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(cps > 0.0, "{timed}");
    }
}

#[test]
fn cuda_device_without_cuda_is_a_clear_error() {
    let out = gaze()
        .args(["bench", "parity", "--device", "cuda", "--fixtures"])
        .arg(fixture(""))
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    if !cfg!(feature = "cuda") {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("without CUDA"), "{stderr}");
    } else if !out.status.success() {
        // A CUDA build on a machine without a usable GPU names the device it could not open.
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("cannot open CUDA device 0"), "{stderr}");
    }
}
