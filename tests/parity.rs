//! Parity with PyTorch: a small model in the tutorial's architecture with random weights, and
//! what PyTorch computed with it (tests/fixtures/parity/make_parity.py). The computations are
//! the library's ([`gaze::parity`]), the ones `gaze bench parity` runs on any device; these
//! tests hold them to their bounds on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use gaze::model::{BeamOptions, CaptionModel, LoadOptions};
use gaze::parity::model::{
    beam_search, bottleneck_encoder, fine_tuning_forward, teacher_forcing, FINE_TUNE_BN,
};
use gaze::parity::training::{training_step, GRADED};
use gaze::parity::Fixtures;

fn fixtures() -> Fixtures {
    Fixtures::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn expected() -> HashMap<String, Tensor> {
    fixtures().expected().clone()
}

fn load_model() -> CaptionModel {
    fixtures().model(&Device::Cpu).unwrap()
}

/// Elementwise `|a - b| <= 1e-4 * |b| + 1e-5`.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g: Vec<f32> = got
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let w: Vec<f32> = want
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let tol = 1e-4 * b.abs() + 1e-5;
        assert!((a - b).abs() <= tol, "{what}[{i}]: got {a}, want {b}");
        worst = worst.max((a - b).abs());
    }
    eprintln!("{what}: max abs difference {worst:e}");
}

#[test]
fn encoder_output_matches_pytorch() {
    let mut model = load_model();
    model
        .encoder
        .set_inference_path(gaze::model::encoder::InferencePath::Auto);
    let exp = expected();
    // The default inference path on the CPU is the CPU engine; check it and the reference.
    assert!(model.encoder.prepare_inference().unwrap());
    let out = model.encoder.forward(&exp["tf_images"]).unwrap();
    assert_close("encoder_out (CPU engine)", &out, &exp["encoder_out"]);
    let out = model.encoder.forward_reference(&exp["tf_images"]).unwrap();
    assert_close("encoder_out (reference)", &out, &exp["encoder_out"]);
}

#[test]
fn bottleneck_encoder_matches_pytorch() {
    let exp = expected();
    // Every tensor of the file is checked against the architecture as it loads.
    let mut encoder =
        bottleneck_encoder(&fixture("bottleneck_encoder.safetensors"), &Device::Cpu).unwrap();
    encoder.set_inference_path(gaze::model::encoder::InferencePath::Auto);
    assert!(encoder.prepare_inference().unwrap());
    let out = encoder.forward(&exp["images"]).unwrap();
    assert_close(
        "bottleneck_encoder_out (CPU engine)",
        &out,
        &exp["bottleneck_encoder_out"],
    );
    let out = encoder.forward_reference(&exp["images"]).unwrap();
    assert_close(
        "bottleneck_encoder_out (reference)",
        &out,
        &exp["bottleneck_encoder_out"],
    );
}

#[test]
fn teacher_forced_pass_matches_pytorch() {
    let fx = fixtures();
    let exp = fx.expected();
    let meta = fx.meta();
    // The pass over tf_captions with the fixture's lengths, from encoder_out.
    let tf = teacher_forcing(&fx, &Device::Cpu).unwrap();
    let sort_ind: Vec<usize> = serde_json::from_value(meta["tf_sort_ind"].clone()).unwrap();
    let decode_lengths: Vec<usize> =
        serde_json::from_value(meta["tf_decode_lengths"].clone()).unwrap();
    assert_eq!(tf.sort_ind, sort_ind);
    assert_eq!(tf.decode_lengths, decode_lengths);
    assert_close("tf_predictions", &tf.predictions, &exp["tf_predictions"]);
    assert_close("tf_alphas", &tf.alphas, &exp["tf_alphas"]);
}

#[test]
fn beam_search_matches_the_tutorial() {
    let fx = fixtures();
    let exp = fx.expected();
    let meta = fx.meta();
    for k in [1usize, 3, 5] {
        // All images in one batched search.
        let captions = beam_search(&fx, &Device::Cpu, k).unwrap();
        for (i, cap) in captions.iter().enumerate() {
            let want = &meta["beams"][k.to_string()][i];
            let tokens: Vec<u32> = serde_json::from_value(want["tokens"].clone()).unwrap();
            let score = want["score"].as_f64().unwrap() as f32;
            assert_eq!(cap.tokens, tokens, "beam {k}, image {i}: token sequence");
            assert!(
                (cap.score - score).abs() <= 1e-4 * score.abs().max(1.0),
                "beam {k}, image {i}: score {} vs {score}",
                cap.score
            );
            assert!(cap.finished);
            let alphas = Tensor::new(cap.alphas.clone(), &Device::Cpu).unwrap();
            assert_close(
                &format!("beam{k}_image{i}_alphas"),
                &alphas,
                &exp[&format!("beam{k}_image{i}_alphas")],
            );
        }
    }
}

#[test]
fn batched_search_equals_one_image_at_a_time() {
    let model = load_model();
    let images = &expected()["images"];
    for k in [1usize, 3, 5] {
        let opts = BeamOptions {
            beam_size: k,
            ..Default::default()
        };
        let batched = model.caption_images(images, &opts).unwrap();
        for (i, b) in batched.iter().enumerate() {
            let single = model
                .caption_images(&images.i(i..i + 1).unwrap(), &opts)
                .unwrap()
                .remove(0);
            assert_eq!(single.tokens, b.tokens, "beam {k}, image {i}");
            assert!((single.score - b.score).abs() <= 1e-5 * b.score.abs().max(1.0));
        }
    }
}

#[test]
fn unfinished_search_returns_the_best_sequence() {
    // With <end> made impossible no beam finishes: the tutorial crashes here; gaze returns the
    // best unfinished sequence after its 51 steps.
    let mut tensors =
        candle_core::safetensors::load(fixture("weights.safetensors"), &Device::Cpu).unwrap();
    let wm = gaze::data::WordMap::load(&fixture("WORDMAP_parity.json")).unwrap();
    let bias: Vec<f32> = tensors["decoder.fc.bias"].to_vec1().unwrap();
    let mut bias = bias;
    bias[wm.end as usize] = -1e4;
    tensors.insert(
        "decoder.fc.bias".into(),
        Tensor::new(bias, &Device::Cpu).unwrap(),
    );
    let cfg = gaze::model::file::infer_config(&tensors, wm.len(), Some(5), Path::new("x")).unwrap();
    let model = CaptionModel::from_parts(
        tensors,
        cfg,
        wm,
        serde_json::json!({}),
        &Device::Cpu,
        Path::new("x"),
    )
    .unwrap();
    let images = &expected()["images"];
    for k in [1usize, 3] {
        let caps = model
            .caption_images(
                images,
                &BeamOptions {
                    beam_size: k,
                    ..Default::default()
                },
            )
            .unwrap();
        for cap in caps {
            assert!(!cap.finished);
            assert_eq!(cap.tokens.len(), 52, "<start> plus 51 words");
            assert_eq!(cap.alphas.len(), 51);
            assert!(cap.score.is_finite());
        }
    }
}

#[test]
fn missing_and_misshaped_tensors_are_all_reported() {
    let mut tensors =
        candle_core::safetensors::load(fixture("weights.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("decoder.f_beta.weight");
    tensors.insert(
        "decoder.init_h.bias".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.remove("encoder.resnet.5.0.bn2.running_var");
    let wm = gaze::data::WordMap::load(&fixture("WORDMAP_parity.json")).unwrap();
    let cfg = gaze::model::file::infer_config(&tensors, wm.len(), Some(5), Path::new("x")).unwrap();
    let err = CaptionModel::from_parts(
        tensors,
        cfg,
        wm,
        serde_json::json!({}),
        &Device::Cpu,
        Path::new("broken.safetensors"),
    )
    .err()
    .expect("a broken model must not load")
    .to_string();
    assert!(err.contains("broken.safetensors"), "{err}");
    assert!(
        err.contains("decoder.f_beta.weight: missing (expected shape [64, 20])"),
        "{err}"
    );
    assert!(
        err.contains("decoder.init_h.bias: expected shape [20], found [7]"),
        "{err}"
    );
    assert!(
        err.contains("encoder.resnet.5.0.bn2.running_var: missing"),
        "{err}"
    );
}

#[test]
fn model_file_round_trip_keeps_captions() {
    let model = load_model();
    let tensors =
        candle_core::safetensors::load(fixture("weights.safetensors"), &Device::Cpu).unwrap();
    let mut named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let prov = serde_json::json!({"data_name": "parity", "epoch": 3});
    gaze::model::file::write_model_file(&path, &named, &model.config, &model.word_map, &prov)
        .unwrap();
    let again = CaptionModel::load(&path, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(again.config, model.config);
    assert_eq!(again.word_map, model.word_map);
    assert_eq!(again.provenance, prov);
    let images = &expected()["images"];
    let opts = BeamOptions {
        beam_size: 3,
        ..Default::default()
    };
    assert_eq!(
        model.caption_images(images, &opts).unwrap(),
        again.caption_images(images, &opts).unwrap()
    );
}

#[test]
fn training_loss_gradients_and_adam_step_match_the_tutorial() {
    let fx = fixtures();
    let exp = fx.expected();
    let meta = fx.meta();
    // The decoder trainable, alpha_c = 1, one Adam step at 4e-4 with gradients clipped to 5.
    let step = training_step(&fx, &Device::Cpu).unwrap();
    let want = &meta["train"];
    let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0);
    assert!(
        close(step.loss, want["loss"].as_f64().unwrap()),
        "loss {}",
        step.loss
    );
    assert!(close(
        step.cross_entropy,
        want["cross_entropy"].as_f64().unwrap()
    ));
    assert!(close(
        step.attention_reg,
        want["attention_reg"].as_f64().unwrap()
    ));
    assert_eq!(step.words as u64, want["words"].as_u64().unwrap());
    assert_eq!(step.top5 as u64, want["top5_correct"].as_u64().unwrap());
    let graded = [
        "fc.weight",
        "decode_step.weight_ih",
        "attention.full_att.weight",
        "embedding.weight",
        "init_h.bias",
    ];
    // The step's results come in GRADED's order: it must name these, in this order.
    assert_eq!(GRADED, graded);
    for (i, name) in graded.iter().enumerate() {
        let full = format!("decoder.{name}");
        assert_close(
            &format!("grad {full}"),
            &step.grads[i],
            &exp[&format!("grad.{full}")],
        );
    }
    for (i, name) in graded.iter().enumerate() {
        let full = format!("decoder.{name}");
        assert_close(
            &format!("adam {full}"),
            &step.after_adam[i],
            &exp[&format!("adam1.{full}")],
        );
    }
}

#[test]
fn fine_tuning_forward_uses_batch_statistics_in_layer2_to_4() {
    let fx = fixtures();
    let exp = fx.expected();
    // The training-mode forward of tf_images, and the statistics of this BatchNorm after it.
    assert_eq!(FINE_TUNE_BN, "encoder.resnet.6.0.bn1");
    let ft = fine_tuning_forward(&fx, &Device::Cpu).unwrap();
    assert_close(
        "finetune_encoder_out",
        &ft.output,
        &exp["finetune_encoder_out"],
    );
    assert_close(
        "running_mean",
        &ft.running_mean,
        &exp["finetune.running_mean"],
    );
    assert_close("running_var", &ft.running_var, &exp["finetune.running_var"]);
}

#[test]
fn every_check_of_the_report_passes_on_the_cpu() {
    let report = gaze::parity::run(&fixtures(), &Device::Cpu, 1.0).unwrap();
    let failed: Vec<_> = report.rows.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // Every fixture is here: nothing skipped, and every check ran (a dropped check would
    // change the count).
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.rows.len(), 72);
    assert_eq!((report.passed(), report.failed()), (72, 0));
    for name in [
        "encoder output (candle ops, the GPU path)",
        "bottleneck ResNet encoder output",
        "attention weights (fused kernel vs generic ops)",
        "training: words and top-5 hits",
    ] {
        let row = report.row(name).unwrap_or_else(|| panic!("no row {name}"));
        assert!(row.ok, "{row:?}");
    }
    // Rows compared with PyTorch carry the error and its ratio to the bound.
    let enc = report.row("encoder output").unwrap();
    let d = enc.vs_reference.unwrap();
    assert!(d.ratio <= 1.0 && d.max_abs < 1e-4, "{d:?}");
    assert!(enc.vs_cpu.is_none(), "no CPU comparison on the CPU");
}

#[test]
fn a_tighter_bound_fails_the_report_and_a_bad_scale_is_refused() {
    // The errors are small but not zero: a millionth of each bound must fail some checks.
    let fx = fixtures();
    let report = gaze::parity::run(&fx, &Device::Cpu, 1e-6).unwrap();
    assert!(report.failed() > 0);
    assert!(!report.row("encoder output").unwrap().ok);
    let err = gaze::parity::run(&fx, &Device::Cpu, 0.0).unwrap_err();
    assert!(matches!(err, gaze::parity::ParityError::Scale(_)), "{err}");
}

#[test]
fn missing_fixtures_are_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Fixtures::load(dir.path()).err().unwrap().to_string();
    let want = dir.path().join("parity/expected.safetensors");
    assert!(err.contains(&want.display().to_string()), "{err}");
}

/// The self-critical loss (mean-of-others baseline, entropy bonus, words after `<end>` masked)
/// and its gradients against PyTorch (`tests/fixtures/scst/make_scst.py`).
#[test]
fn self_critical_loss_and_gradients_match_pytorch() {
    use gaze::model::weights::Weights;
    use gaze::train::scst::{baselines, scst_loss, ScstBaseline};
    let d = Device::Cpu;
    let weights_path = fixture("weights.safetensors");
    let bytes = std::fs::read(&weights_path).unwrap();
    let (tensors, _) =
        gaze::model::file::tensors_from_safetensors(&bytes, &weights_path, &d).unwrap();
    let cfg = gaze::model::file::infer_config(&tensors, 30, Some(5), &weights_path).unwrap();
    let mut weights = Weights::new(tensors, &d);
    let vars = weights
        .make_trainable(|n| n.starts_with("decoder."))
        .unwrap();
    let model = CaptionModel::build(
        &weights,
        cfg,
        gaze::data::WordMap::load(&fixture("WORDMAP_parity.json")).unwrap(),
        serde_json::json!({}),
        &weights_path,
    )
    .unwrap();
    let fx_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scst/expected.safetensors");
    let fx = candle_core::safetensors::load(&fx_path, &d).unwrap();
    let samples: Vec<Vec<i64>> = fx["samples"].to_vec2().unwrap();
    let samples: Vec<Vec<u32>> = samples
        .iter()
        .map(|s| s.iter().map(|&t| t as u32).collect())
        .collect();
    let rewards: Vec<f32> = fx["rewards"].to_vec1().unwrap();
    let rewards: Vec<f64> = rewards.iter().map(|&r| r as f64).collect();
    let base = baselines(&rewards, 3, ScstBaseline::Mean, None).unwrap();
    let advantages: Vec<f32> = rewards
        .iter()
        .zip(&base)
        .map(|(r, b)| (r - b) as f32)
        .collect();
    assert_close(
        "advantages",
        &Tensor::new(advantages.clone(), &d).unwrap(),
        &fx["advantages"],
    );
    let entropy: Vec<f32> = fx["entropy_weight"].to_vec1().unwrap();
    let end = model.word_map.end;
    let loss = scst_loss(
        &model.decoder,
        &fx["features"],
        &samples,
        end,
        &advantages,
        entropy[0] as f64,
    )
    .unwrap();
    let words: Vec<f32> = fx["words"].to_vec1().unwrap();
    assert_eq!(loss.words, words[0] as usize);
    assert_close(
        "loss",
        &Tensor::new(&[loss.value], &d).unwrap(),
        &fx["loss"],
    );
    let grads = loss.loss.backward().unwrap();
    for name in GRADED {
        let full = format!("decoder.{name}");
        let var = &vars.iter().find(|(n, _)| *n == full).unwrap().1;
        let g = grads.get(var.as_tensor()).unwrap();
        assert_close(&format!("grad {name}"), g, &fx[&format!("grad.{name}")]);
    }
}
