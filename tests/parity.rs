//! Parity with PyTorch: a small model in the tutorial's architecture with random weights, and
//! what PyTorch computed with it (tests/fixtures/parity/make_parity.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use gaze::model::weights::Weights;
use gaze::model::{BeamOptions, BlockKind, CaptionModel, EncoderConfig, LoadOptions, ModelConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap()
}

fn load_model() -> CaptionModel {
    let opts = LoadOptions {
        word_map: Some(fixture("WORDMAP_parity.json")),
        encoded_image_size: Some(5),
    };
    CaptionModel::load(&fixture("weights.safetensors"), &opts, &Device::Cpu).unwrap()
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
    let tensors =
        candle_core::safetensors::load(fixture("bottleneck_encoder.safetensors"), &Device::Cpu)
            .unwrap();
    let cfg = ModelConfig {
        encoder: EncoderConfig::Resnet {
            block: BlockKind::Bottleneck,
            layers: [1, 2, 1, 1],
            width: 4,
        },
        encoded_image_size: 3,
        attention_dim: 1,
        embed_dim: 1,
        decoder_dim: 1,
        vocab_size: 1,
        dropout: 0.0,
    };
    let weights = Weights::new(tensors, &Device::Cpu);
    let mut encoder = gaze::model::Encoder::load(&weights.pp("encoder"), &cfg);
    encoder.set_inference_path(gaze::model::encoder::InferencePath::Auto);
    weights
        .check(Path::new("bottleneck_encoder.safetensors"))
        .unwrap();
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
    let model = load_model();
    let exp = expected();
    let meta = meta();
    let lengths: Vec<usize> = serde_json::from_value(meta["lengths"].clone()).unwrap();
    let captions = exp["tf_captions"].to_dtype(DType::U32).unwrap();
    let tf = model
        .decoder
        .forward_teacher(&exp["encoder_out"], &captions, &lengths)
        .unwrap();
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
    let model = load_model();
    let exp = expected();
    let meta = meta();
    let images = &exp["images"];
    for k in [1usize, 3, 5] {
        let opts = BeamOptions {
            beam_size: k,
            ..Default::default()
        };
        // All images in one batched search.
        let captions = model.caption_images(images, &opts).unwrap();
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
    use gaze::model::decoder::TeacherOptions;
    use gaze::train::{adam::Adam, loss::batch_loss};
    let exp = expected();
    let meta = meta();
    let tensors =
        candle_core::safetensors::load(fixture("weights.safetensors"), &Device::Cpu).unwrap();
    let wm = gaze::data::WordMap::load(&fixture("WORDMAP_parity.json")).unwrap();
    let cfg = gaze::model::file::infer_config(&tensors, wm.len(), Some(5), Path::new("x")).unwrap();
    let mut weights = Weights::new(tensors, &Device::Cpu);
    let vars = weights
        .make_trainable(|n| n.starts_with("decoder."))
        .unwrap();
    let model =
        CaptionModel::build(&weights, cfg, wm, serde_json::json!({}), Path::new("x")).unwrap();
    let lengths: Vec<usize> = serde_json::from_value(meta["lengths"].clone()).unwrap();
    let captions = exp["tf_captions"].to_dtype(DType::U32).unwrap();
    let features = model.encoder.forward(&exp["tf_images"]).unwrap();
    let loss = batch_loss(
        &model.decoder,
        &features,
        &captions,
        &lengths,
        1.0,
        &mut TeacherOptions::default(),
    )
    .unwrap();
    let want = &meta["train"];
    let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0);
    assert!(
        close(loss.value(), want["loss"].as_f64().unwrap()),
        "loss {}",
        loss.value()
    );
    assert!(close(
        loss.cross_entropy,
        want["cross_entropy"].as_f64().unwrap()
    ));
    assert!(close(
        loss.attention_reg,
        want["attention_reg"].as_f64().unwrap()
    ));
    assert_eq!(loss.words as u64, want["words"].as_u64().unwrap());
    assert_eq!(
        loss.top5_correct as u64,
        want["top5_correct"].as_u64().unwrap()
    );
    let grads = loss.loss.backward().unwrap();
    let graded = [
        "fc.weight",
        "decode_step.weight_ih",
        "attention.full_att.weight",
        "embedding.weight",
        "init_h.bias",
    ];
    for name in graded {
        let full = format!("decoder.{name}");
        let var = &vars.iter().find(|(n, _)| *n == full).unwrap().1;
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {full}"));
        assert_close(&format!("grad {full}"), g, &exp[&format!("grad.{full}")]);
    }
    let mut adam = Adam::new(vars.clone(), 4e-4).unwrap();
    adam.step(&grads, Some(5.0)).unwrap();
    for name in graded {
        let full = format!("decoder.{name}");
        let var = &vars.iter().find(|(n, _)| *n == full).unwrap().1;
        assert_close(
            &format!("adam {full}"),
            var.as_tensor(),
            &exp[&format!("adam1.{full}")],
        );
    }
}

#[test]
fn fine_tuning_forward_uses_batch_statistics_in_layer2_to_4() {
    let exp = expected();
    let model = load_model();
    let out = model.encoder.forward_t(&exp["tf_images"], true).unwrap();
    assert_close("finetune_encoder_out", &out, &exp["finetune_encoder_out"]);
    let buffers: HashMap<String, Tensor> = model.encoder.buffers().into_iter().collect();
    assert_close(
        "running_mean",
        &buffers["encoder.resnet.6.0.bn1.running_mean"],
        &exp["finetune.running_mean"],
    );
    assert_close(
        "running_var",
        &buffers["encoder.resnet.6.0.bn1.running_var"],
        &exp["finetune.running_var"],
    );
}
