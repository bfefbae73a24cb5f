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

#[test]
fn eval_prints_the_table_and_writes_report_and_results() {
    use gaze::data::karpathy::Split;
    use gaze::data::{PreparedSplit, WordMap};
    let tmp = tempfile::tempdir().unwrap();
    let (prepared, base) = prepared_synth(tmp.path());
    let word_map = WordMap::load(&prepared.join(format!("WORDMAP_{base}.json"))).unwrap();
    let (cfg, tensors) = tiny_model(&word_map);
    let model = tmp.path().join("tiny.safetensors");
    gaze::model::file::write_model_file(&model, &tensors, &cfg, &word_map, &serde_json::json!({}))
        .unwrap();
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
