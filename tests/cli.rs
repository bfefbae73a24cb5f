//! Drives the real `gaze` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn gaze() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gaze"))
}

/// `gaze caption` with the committed parity model and its word map; add flags and images.
fn caption_with_parity_model() -> Command {
    let mut cmd = gaze();
    cmd.args(["caption", "--weights"])
        .arg(fixture("parity/weights.safetensors"))
        .arg("--word-map")
        .arg(fixture("parity/WORDMAP_parity.json"));
    cmd
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

#[test]
fn caption_reports_bad_files_and_captions_the_rest() {
    let att = tempfile::tempdir().unwrap();
    let out = caption_with_parity_model()
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
fn caption_refuses_pipes_and_endless_devices_at_once_and_captions_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("pipe.jpg");
    assert!(Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap()
        .success());
    let zero = dir.path().join("zero.png");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let start = std::time::Instant::now();
    let out = caption_with_parity_model()
        .args(["--beam-size", "1"])
        .arg(&pipe)
        .arg(fixture("images/red_circle.png"))
        .arg(&zero)
        .output()
        .unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(60));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("red_circle.png"), "{stdout}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("pipe.jpg") && l.contains("named pipe")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("zero.png") && l.contains("character device")),
        "{stderr}"
    );
}

#[test]
fn model_checkpoint_and_word_map_paths_that_are_pipes_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = |name: &str| {
        let p = dir.path().join(name);
        assert!(Command::new("mkfifo").arg(&p).status().unwrap().success());
        p
    };
    let (model, pth, word_map) = (pipe("m.safetensors"), pipe("c.pth"), pipe("WORDMAP.json"));
    let image = fixture("images/red_circle.png");
    let runs: [(&str, Vec<std::ffi::OsString>); 3] = [
        ("m.safetensors", vec!["--model".into(), model.into()]),
        (
            "c.pth",
            vec![
                "--weights".into(),
                pth.into(),
                "--word-map".into(),
                fixture("parity/WORDMAP_parity.json").into(),
            ],
        ),
        (
            "WORDMAP.json",
            vec![
                "--weights".into(),
                fixture("parity/weights.safetensors").into(),
                "--word-map".into(),
                word_map.into(),
            ],
        ),
    ];
    for (name, args) in runs {
        let start = std::time::Instant::now();
        let out = gaze()
            .arg("caption")
            .args(&args)
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{name}"
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains("named pipe"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn caption_plain_output_and_missing_word_map() {
    let out = caption_with_parity_model()
        .args(["--beam-size", "1"])
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

/// A tiny prepared synth set: (prepared folder, base name).
fn prepared_synth(root: &Path) -> (PathBuf, String) {
    let synth = root.join("synth");
    let out = gaze()
        .args([
            "synth", "--train", "12", "--val", "2", "--test", "6", "--out",
        ])
        .arg(&synth)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prepared = root.join("prepared");
    let out = gaze()
        .args(["prepare", "--dataset", "synth", "--min-word-freq", "2"])
        .arg("--karpathy-json")
        .arg(synth.join("dataset_synth.json"))
        .arg("--image-folder")
        .arg(synth.join("images"))
        .arg("--output-folder")
        .arg(&prepared)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (prepared, "synth_5_cap_per_img_2_min_word_freq".to_string())
}

/// Random weights for a tiny ResNet model over `word_map`, sorted by name.
fn tiny_model(
    word_map: &gaze::data::WordMap,
) -> (gaze::model::ModelConfig, Vec<(String, candle_core::Tensor)>) {
    use gaze::model::{BlockKind, EncoderConfig, ModelConfig};
    let cfg = ModelConfig {
        encoder: EncoderConfig::Resnet {
            block: BlockKind::Basic,
            layers: [1, 1, 1, 1],
            width: 4,
        },
        encoded_image_size: 2,
        attention_dim: 8,
        embed_dim: 8,
        decoder_dim: 12,
        vocab_size: word_map.len(),
        dropout: 0.5,
    };
    let tensors = gaze::model::init::random_tensors(&cfg, 3, &candle_core::Device::Cpu).unwrap();
    let mut tensors: Vec<_> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    (cfg, tensors)
}

fn split_word_map(prepared: &Path, base: &str) -> gaze::data::WordMap {
    gaze::data::WordMap::load(&prepared.join(format!("WORDMAP_{base}.json"))).unwrap()
}

/// A prepared synthetic dataset and a tiny random model file over its word map:
/// (prepared folder, base name, model file).
fn synth_and_tiny_model_file(root: &Path) -> (PathBuf, String, PathBuf) {
    let (prepared, base) = prepared_synth(root);
    let word_map = split_word_map(&prepared, &base);
    let (cfg, tensors) = tiny_model(&word_map);
    let model = root.join("tiny.safetensors");
    gaze::model::file::write_model_file(&model, &tensors, &cfg, &word_map, &serde_json::json!({}))
        .unwrap();
    (prepared, base, model)
}

#[test]
fn eval_prints_the_table_and_writes_report_and_results() {
    use gaze::data::karpathy::Split;
    use gaze::data::PreparedSplit;
    let tmp = tempfile::tempdir().unwrap();
    let (prepared, base, model) = synth_and_tiny_model_file(tmp.path());
    let word_map = split_word_map(&prepared, &base);
    let report = tmp.path().join("report.json");
    let results = tmp.path().join("results");
    let out = gaze()
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--data-folder")
        .arg(&prepared)
        .args([
            "--data-name",
            &base,
            "--beam-sizes",
            "1,2",
            "--batch-size",
            "4",
        ])
        .args(["--max-steps", "12", "--report"])
        .arg(&report)
        .arg("--results-dir")
        .arg(&results)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");

    // The table: a header and one row per beam size.
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines.iter().position(|l| l.contains("BLEU-4t")).unwrap();
    assert!(lines[0].contains("6 images, 5 references each"), "{stdout}");
    for (row, beam) in lines[header + 1..header + 3].iter().zip(["1", "2"]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), 11, "{row}");
        assert_eq!(cells[0], beam);
        for cell in &cells[1..] {
            let v: f64 = cell.parse().unwrap();
            assert!(v.is_finite() && v >= 0.0, "{row}");
        }
    }

    // The report: stable keys, full precision, what was evaluated.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["model"]["blake3"].as_str().unwrap().len(), 64);
    assert!(r["model"]["path"]
        .as_str()
        .unwrap()
        .ends_with("tiny.safetensors"));
    assert_eq!(r["data"]["name"], base);
    assert_eq!(r["data"]["split"], "test");
    assert_eq!(r["data"]["images"], 6);
    assert_eq!(r["data"]["word_maps_match"], true);
    assert_eq!(r["search"]["beam_sizes"], serde_json::json!([1, 2]));
    assert_eq!(r["search"]["max_steps"], 12);
    assert_eq!(r["not_computed"], serde_json::json!(["spice"]));
    let beams = r["beams"].as_array().unwrap();
    assert_eq!(beams.len(), 2);

    let split = PreparedSplit::open(&prepared, &base, Split::Test).unwrap();
    for (beam, size) in beams.iter().zip([1, 2]) {
        assert_eq!(beam["beam_size"], size);
        let metrics = beam["metrics"].as_object().unwrap();
        for key in [
            "bleu_1_nltk",
            "bleu_2_nltk",
            "bleu_3_nltk",
            "bleu_4_nltk",
            "bleu_1_coco",
            "bleu_2_coco",
            "bleu_3_coco",
            "bleu_4_coco",
            "meteor_exact_stem",
            "rouge_l",
            "cider_d",
            "bleu_4_tutorial",
        ] {
            assert!(metrics[key].is_f64(), "{key} in {metrics:?}");
        }
        assert!(beam["images_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(beam["per_image"].as_array().unwrap().len(), 6);

        // The results file: one caption per image, image_id = index in the split.
        let file = results.join(format!("{base}_test_beam{size}.json"));
        assert_eq!(
            beam["results_file"].as_str().unwrap(),
            file.to_str().unwrap()
        );
        let entries: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let ids: Vec<u64> = entries
            .iter()
            .map(|e| e["image_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (0..6).collect::<Vec<u64>>());
        let captions: Vec<String> = entries
            .iter()
            .map(|e| e["caption"].as_str().unwrap().to_string())
            .collect();

        // Recomputed from the results file: references from the prepared files, each `<unk>`
        // a word that matches nothing; the tutorial's BLEU-4 over ids with `<unk>` kept.
        let mut rare = 0;
        let references: Vec<Vec<String>> = (0..6)
            .map(|i| {
                split
                    .reference_captions(i)
                    .iter()
                    .map(|words| {
                        let words: Vec<String> = words
                            .iter()
                            .map(|w| {
                                if w == "<unk>" {
                                    rare += 1;
                                    format!("rare{rare}")
                                } else {
                                    w.clone()
                                }
                            })
                            .collect();
                        words.join(" ")
                    })
                    .collect()
            })
            .collect();
        let scores = gaze::metrics::score_tokenized(&references, &captions).unwrap();
        for (key, value) in [
            ("cider_d", scores.corpus.cider_d),
            ("bleu_4_nltk", scores.corpus.bleu_4_nltk),
            ("meteor_exact_stem", scores.corpus.meteor_exact_stem),
        ] {
            assert!(
                (metrics[key].as_f64().unwrap() - value).abs() < 1e-12,
                "{key}: report {} recomputed {value}",
                metrics[key]
            );
        }
        let ref_ids: Vec<Vec<Vec<u32>>> = (0..6).map(|i| split.reference_ids(i)).collect();
        let hyp_ids: Vec<Vec<u32>> = captions
            .iter()
            .map(|c| {
                c.split_whitespace()
                    .map(|w| word_map.id_or_unk(w).unwrap())
                    .collect()
            })
            .collect();
        let tutorial =
            gaze::metrics::bleu_nltk::corpus_bleu(&ref_ids, &hyp_ids, &[&[0.25; 4]]).unwrap();
        assert_eq!(
            metrics["bleu_4_tutorial"].as_f64().unwrap(),
            tutorial.scores[0]
        );
    }
}

#[test]
fn eval_refuses_a_word_map_that_does_not_fit_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (prepared, base) = prepared_synth(tmp.path());
    let word_map =
        gaze::data::WordMap::load(&prepared.join(format!("WORDMAP_{base}.json"))).unwrap();
    let (_, tensors) = tiny_model(&word_map);
    // Plain tutorial-named weights, no metadata: they need --word-map.
    let weights = tmp.path().join("weights.safetensors");
    gaze::model::file::write_safetensors(&weights, &tensors, None).unwrap();
    let wrong = fixture("parity/WORDMAP_parity.json");
    let out = gaze()
        .args(["eval", "--weights"])
        .arg(&weights)
        .arg("--word-map")
        .arg(&wrong)
        .arg("--data-folder")
        .arg(&prepared)
        .args(["--data-name", &base])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("weights.safetensors")
            && stderr.contains("WORDMAP_parity.json")
            && stderr.contains(&format!("vocabulary of {} words", word_map.len())),
        "{stderr}"
    );

    // Beam size 0 is refused before any work.
    let out = gaze()
        .args(["eval", "--weights"])
        .arg(&weights)
        .arg("--word-map")
        .arg(prepared.join(format!("WORDMAP_{base}.json")))
        .arg("--data-folder")
        .arg(&prepared)
        .args(["--data-name", &base, "--beam-sizes", "0,3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("beam size must be at least 1"), "{stderr}");
}

/// `gaze` without any GAZE_* variable of the environment the tests run in.
fn gaze_clean() -> Command {
    let mut cmd = gaze();
    for (k, _) in std::env::vars() {
        if k.starts_with("GAZE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs a command expected to be refused: exit 2, no panic; returns stderr.
fn refused(mut cmd: impl std::borrow::BorrowMut<Command>) -> String {
    let out = cmd.borrow_mut().output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
    stderr
}

#[test]
fn settings_that_cannot_be_met_are_refused_naming_key_and_source() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("gaze.db");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    let model = tmp.path().join("model.safetensors");

    // A log level that is not one fails every subcommand instead of silencing its log.
    let err = refused(
        gaze_clean()
            .args(["status", "--db"])
            .arg(&db)
            .env("GAZE_LOG", "loud"),
    );
    assert!(
        err.contains("\"loud\" (from environment variable GAZE_LOG)")
            && err.contains("is not a log level")
            && err.contains("error, warn, info, debug, trace or off"),
        "{err}"
    );
    let err = refused(
        gaze_clean()
            .args(["status", "--log-level", "loud", "--db"])
            .arg(&db),
    );
    assert!(
        err.contains("(from command-line flag --log-level)"),
        "{err}"
    );
    let out = gaze_clean()
        .args(["status", "--log-level", "WARN", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("log level"),
        "a level in capitals is a level"
    );

    // The daemon's settings: the file, the environment and the flags are each named.
    let watch = |extra: &[&str]| {
        let mut cmd = gaze_clean();
        cmd.args(["watch", "--exit-when-idle", "--db"])
            .arg(&db)
            .arg("--model")
            .arg(&model)
            .args(extra)
            .arg(&dir);
        cmd
    };
    let config = tmp.path().join("huge.toml");
    std::fs::write(&config, "[pipeline]\nbatch_size = 100000000000\n").unwrap();
    let err = refused(watch(&["--config", config.to_str().unwrap()]));
    assert!(
        err.contains(&format!(
            "pipeline.batch_size = 100000000000 (from config file {}) is outside 1..=4096",
            config.display()
        )),
        "{err}"
    );
    let err = refused(watch(&[]).env("GAZE_CONFIG", &config));
    assert!(err.contains("huge.toml"), "{err}");
    let err = refused(watch(&[]).env("GAZE_DECODE_THREADS", "100000"));
    assert!(
        err.contains(
            "pipeline.decode_threads = 100000 (from environment variable GAZE_DECODE_THREADS) \
             is outside 1..=1024"
        ),
        "{err}"
    );
    let err = refused(watch(&[]).env("GAZE_QUEUE_DEPTH", "100000000000"));
    assert!(err.contains("pipeline.queue_depth"), "{err}");
    let err = refused(watch(&["--batch-size", "100000000000"]));
    assert!(
        err.contains("pipeline.batch_size = 100000000000 (from command-line flag --batch-size)"),
        "{err}"
    );
    let loud = tmp.path().join("loud.toml");
    std::fs::write(&loud, "[log]\nlevel = \"loud\"\n").unwrap();
    let err = refused(watch(&["--config", loud.to_str().unwrap()]));
    assert!(
        err.contains(&format!(
            "log.level = \"loud\" (from config file {})",
            loud.display()
        )),
        "{err}"
    );
    let err = refused(watch(&["--log-level", "loud"]).env("GAZE_LOG", "info"));
    assert!(
        err.contains("(from command-line flag --log-level)"),
        "{err}"
    );
    // A later layer replaces a bad value of an earlier one: the flag wins over the file.
    let err = refused(watch(&[
        "--config",
        config.to_str().unwrap(),
        "--batch-size",
        "4",
    ]));
    assert!(!err.contains("batch_size"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");

    // `gaze retrain` checks its settings the same way.
    let err = refused(
        gaze_clean()
            .args(["retrain", "--now", "--threads", "100000", "--db"])
            .arg(&db),
    );
    assert!(
        err.contains("retrain.threads = 100000 (from command-line flag --threads)"),
        "{err}"
    );
}

/// A store with `n` captioned images ("a dog ...", done one second apart) and `failed`
/// failures.
fn store_with_captions(db: &Path, n: usize, failed: usize) {
    use gaze::store::captions::{self, NewCaption};
    use gaze::store::queue::{self, ReadImage};
    use gaze::store::registry::{self, NewModel};
    let store = gaze::store::Store::open(db).unwrap();
    let conn = store.conn();
    let model = registry::register(
        conn,
        &NewModel {
            content_hash: "m",
            path: "/models/m.safetensors",
            name: "m",
            config_json: "{}",
            provenance_json: "{}",
        },
        0.0,
    )
    .unwrap()
    .id;
    for i in 0..n {
        let (path, hash) = (format!("/photos/{i:04}.png"), format!("h{i}"));
        let now = 1.0 + i as f64;
        queue::mark_done(
            conn,
            &ReadImage {
                path: &path,
                size: 1,
                mtime_ns: 1,
                content_hash: &hash,
                width: 4,
                height: 4,
            },
            now,
        )
        .unwrap();
        let tokens = ["<start>", "a", "dog", "<end>"].map(String::from);
        captions::insert_caption(
            conn,
            &NewCaption {
                content_hash: &hash,
                model_id: model,
                text: &format!("a dog number {i}"),
                tokens: &tokens,
                token_ids: &[0, 1, 2, 3],
                score: -1.0,
                finished: true,
                beam_size: 1,
                alphas: &[vec![1.0], vec![1.0], vec![1.0]],
                grid: 1,
            },
            now,
        )
        .unwrap()
        .unwrap();
    }
    for i in 0..failed {
        let path = format!("/photos/bad-{i}.jpg");
        queue::mark_failed(conn, &path, 1, 1, None, "not an image", 1.0).unwrap();
    }
}

/// Runs `gaze query` on `db`: (exit code, stdout, stderr).
fn query(db: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = gaze_clean()
        .arg("query")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn query_results_cut_by_the_limit_say_so_and_recent_n_gives_n() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("gaze.db");
    store_with_captions(&db, 150, 3);

    // --recent N gives N rows whatever the default limit (100), most recent first, and a
    // complete result says nothing more.
    let (code, out, err) = query(&db, &["--recent", "120"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 121, "header and 120 rows:\n{out}");
    assert!(lines[1].contains("/photos/0149.png"), "{}", lines[1]);
    assert!(lines[120].contains("/photos/0030.png"), "{}", lines[120]);
    assert!(
        !out.contains("showing") && !err.contains("showing"),
        "{out}\n{err}"
    );
    let (code, out, err) = query(&db, &["--recent", "120", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 120);
    // More than there are: all of them, not cut.
    let (_, out, err) = query(&db, &["--recent", "100000"]);
    assert_eq!(out.lines().count(), 151, "{out}");
    assert!(
        !out.contains("showing") && !err.contains("showing"),
        "{err}"
    );

    // Cut by the default limit: the table says so in a footer, stderr in a note.
    let (code, out, err) = query(&db, &["--search", "dog"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 102, "header, 100 rows, footer:\n{out}");
    assert_eq!(
        lines[101],
        "(showing 100 of 150 results; use --limit N for more)"
    );
    assert!(
        err.contains("note: showing 100 of 150 results; use --limit N for more"),
        "{err}"
    );
    // JSON: an object that says so, in place of the array.
    let (code, out, err) = query(&db, &["--search", "dog", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["truncated"], true, "{out}");
    assert_eq!(v["limit"], 100);
    assert_eq!(v["total"], 150);
    assert_eq!(v["rows"].as_array().unwrap().len(), 100);
    assert!(err.contains("showing 100 of 150"), "{err}");
    // CSV keeps its rows clean; stderr says so.
    let (code, out, err) = query(
        &db,
        &["--search", "dog", "--format", "csv", "--limit", "10"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 11, "{out}");
    assert!(err.contains("showing 10 of 150"), "{err}");
    // An explicit smaller limit cuts --recent, and says so.
    let (_, out, err) = query(&db, &["--recent", "5", "--limit", "3"]);
    assert_eq!(out.lines().count(), 5, "header, 3 rows, footer:\n{out}");
    assert!(
        out.ends_with("(showing 3 of 5 results; use --limit N for more)\n"),
        "{out}"
    );
    assert!(err.contains("showing 3 of 5"), "{err}");
    // A limit exactly the size of the result cuts nothing.
    let (_, out, err) = query(&db, &["--search", "dog", "--limit", "150"]);
    assert_eq!(out.lines().count(), 151, "{out}");
    assert!(!err.contains("showing"), "{err}");

    // Uncut: the array and the table as they always were.
    let (code, out, err) = query(&db, &["--failed", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(err.is_empty(), "{err}");
    let (_, out, err) = query(&db, &["--failed"]);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(err.is_empty(), "{err}");

    // Limits that select nothing are refused.
    let (code, _, err) = query(&db, &["--failed", "--limit", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--limit must be at least 1"), "{err}");
    let (code, _, err) = query(&db, &["--recent", "0"]);
    assert_eq!(code, Some(2), "{err}");
}

/// `gaze score` on a Karpathy file whose tokens include punctuation tokens: the NLTK columns
/// equal NLTK's corpus_bleu on those tokens (tests/fixtures/metrics/make_nltk_punct.py), the
/// coco columns are those of the PTB-tokenised text.
#[test]
fn score_gives_nltk_the_karpathy_tokens_and_coco_the_ptb_tokens() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("metrics/nltk_punct.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let karpathy = dir.path().join("dataset_punct.json");
    let results = dir.path().join("results.json");
    std::fs::write(&karpathy, fixture["karpathy"].to_string()).unwrap();
    std::fs::write(&results, fixture["results"].to_string()).unwrap();
    let out = gaze()
        .args(["score", "--format", "json", "--results"])
        .arg(&results)
        .arg("--karpathy-json")
        .arg(&karpathy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gaze score failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images_scored"], 5);
    let corpus = &report["corpus"];
    for n in 1..=4 {
        let got = corpus[format!("bleu_{n}_nltk")].as_f64().unwrap();
        let want = fixture["nltk_bleu_1_to_4"][n - 1].as_f64().unwrap();
        assert!(
            ((got - want) / want).abs() <= 1e-12,
            "BLEU-{n} (NLTK): gaze {got}, NLTK {want}"
        );
    }
    // The coco columns: the captions and the joined tokens through the PTB subset.
    let mut references = Vec::new();
    for image in fixture["karpathy"]["images"].as_array().unwrap() {
        let refs: Vec<String> = image["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let tokens: Vec<&str> = s["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                gaze::metrics::ptb::tokenize(&tokens.join(" "))
            })
            .collect();
        references.push(refs);
    }
    let hypotheses: Vec<String> = fixture["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| gaze::metrics::ptb::tokenize(r["caption"].as_str().unwrap()))
        .collect();
    assert!(references[0][0].split(' ').all(|t| t != ":" && t != ","));
    let ptb = gaze::metrics::score_tokenized(&references, &hypotheses).unwrap();
    let ptb_json = serde_json::to_value(&ptb.corpus).unwrap();
    for key in [
        "bleu_1_coco",
        "bleu_2_coco",
        "bleu_3_coco",
        "bleu_4_coco",
        "meteor_exact_stem",
        "rouge_l",
        "cider_d",
    ] {
        // serde_json's float parsing may be one ulp off, hence a tolerance.
        let (got, want) = (
            corpus[key].as_f64().unwrap(),
            ptb_json[key].as_f64().unwrap(),
        );
        assert!(
            ((got - want) / want).abs() <= 1e-12,
            "{key}: {got} vs {want}"
        );
    }
    // On this corpus the PTB step matters: NLTK over the PTB tokens is another number.
    for n in 1..=4 {
        let want = fixture["nltk_bleu_1_to_4"][n - 1].as_f64().unwrap();
        let on_ptb = ptb_json[format!("bleu_{n}_nltk")].as_f64().unwrap();
        assert!(
            ((on_ptb - want) / want).abs() > 1e-3,
            "BLEU-{n}: {on_ptb} vs {want}"
        );
    }
}

#[test]
fn sampled_captions_follow_the_seed_not_the_batch() {
    let run = |extra: &[&str]| -> String {
        let out = caption_with_parity_model()
            .args(extra)
            .arg(fixture("images/red_circle.png"))
            .arg(fixture("images/blue_square.jpg"))
            .arg(fixture("images/grey_triangle.png"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let base = [
        "--sample",
        "top-k:5",
        "--samples",
        "3",
        "--temperature",
        "1.5",
    ];
    let one = run(&[&base[..], &["--seed", "4", "--batch-size", "1"]].concat());
    let three = run(&[&base[..], &["--seed", "4", "--batch-size", "3"]].concat());
    assert_eq!(one, three);
    assert_eq!(one.lines().count(), 3);
    let seeds: std::collections::BTreeSet<String> = (0..6)
        .map(|s| run(&[&base[..], &["--seed", &s.to_string()]].concat()))
        .collect();
    assert!(seeds.len() > 1, "different seeds draw different captions");
    let out = gaze()
        .args(["caption", "--sample", "top-p:1.5", "--weights"])
        .arg(fixture("parity/weights.safetensors"))
        .arg(fixture("images/red_circle.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(0, 1]"));
}

#[test]
fn eval_samples_a_row_that_follows_the_seed_not_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (prepared, base, model) = synth_and_tiny_model_file(tmp.path());
    let run = |batch: &str, extra: &[&str]| -> (String, PathBuf, PathBuf) {
        let dir = tmp.path().join(format!("out-{batch}-{}", extra.len()));
        let report = dir.join("report.json");
        let out = gaze()
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--data-folder")
            .arg(&prepared)
            .args(["--data-name", &base, "--batch-size", batch])
            .args(["--max-steps", "12", "--sample", "top-k:3", "--samples", "2"])
            .args(["--seed", "7", "--temperature", "1.3"])
            .args(extra)
            .arg("--report")
            .arg(&report)
            .arg("--results-dir")
            .arg(&dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (stdout, report, dir.join(format!("{base}_test_sample.json")))
    };
    // --sample alone: one sampled row and no beam rows.
    let (table, report, sampled) = run("4", &[]);
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.contains("BLEU-4t"))
        .skip(1)
        .take_while(|l| !l.starts_with("BLEU-1..4"))
        .collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(rows[0].split_whitespace().next(), Some("s"), "{table}");
    assert!(
        table.contains("sampled, top-k:3 x2, temperature 1.3, seed 7"),
        "{table}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["search"]["sample"]["method"], "top-k:3");
    assert_eq!(r["search"]["sample"]["seed"], 7);
    assert_eq!(r["beams"][0]["beam_size"], serde_json::Value::Null);
    assert_eq!(r["beams"][0]["decoding"], "top-k:3 x2");
    // Image i draws from its own stream: another batch size gives the same captions.
    let (_, _, again) = run("1", &[]);
    assert_eq!(
        std::fs::read(&sampled).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // With beam sizes, and diverse groups, the beam rows come first.
    let (table, report, _) = run("4", &["--beam-sizes", "2", "--diverse-groups", "2"]);
    assert!(table.lines().any(|l| l.starts_with("   2 ")), "{table}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["beams"][0]["beam_size"], 2);
    assert_eq!(r["search"]["diverse_groups"], 2);
    assert_eq!(r["beams"][1]["beam_size"], serde_json::Value::Null);
}

#[test]
fn caption_json_lists_every_diverse_group() {
    let out = caption_with_parity_model()
        .args([
            "--beam-size",
            "4",
            "--diverse-groups",
            "3",
            "--diversity",
            "2",
        ])
        .args(["--max-steps", "10", "--json"])
        .arg(fixture("images/red_circle.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = line["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert!(groups.iter().any(|g| g["caption"] == line["caption"]));
    let out = caption_with_parity_model()
        .args(["--diverse-groups", "0"])
        .arg(fixture("images/red_circle.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--diverse-groups"));
}
