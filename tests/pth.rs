//! PyTorch checkpoint reading and `gaze import`, against fixtures made by
//! tests/fixtures/pth/make_fixtures.py (torch 2.x): the same small tutorial-architecture model
//! saved as a zip state dict, a legacy state dict, and the tutorial's whole-module checkpoint in
//! both formats; the values PyTorch holds (hashes in reference.json) and the captions its beam
//! search produced (expected_captions.json).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use gaze::pth::{self, Checkpoint, Format, PthError, TorchDType, Value};
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

fn json(name: &str) -> Json {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn f32_hash(t: &Tensor) -> String {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    fnv1a64(&bytes)
}

/// Checks tensors against reference.json: same names, shapes, and bit-identical values.
fn assert_matches_reference(tensors: &HashMap<String, Tensor>, only_prefix: &str, what: &str) {
    let reference = json("reference.json");
    let expected = reference["tensors"].as_object().unwrap();
    let mut expected_names: Vec<&String> = expected
        .keys()
        .filter(|k| k.starts_with(only_prefix))
        .collect();
    let mut got_names: Vec<&String> = tensors.keys().collect();
    expected_names.sort();
    got_names.sort();
    assert_eq!(got_names, expected_names, "{what}: tensor names");
    for (name, t) in tensors {
        let e = &expected[name.as_str()];
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims(), shape.as_slice(), "{what}: {name} shape");
        assert_eq!(
            f32_hash(t),
            e["fnv1a64"].as_str().unwrap(),
            "{what}: {name} values differ from PyTorch's"
        );
    }
}

#[test]
fn all_four_checkpoint_forms_load_the_same_tensors() {
    let forms = [
        ("state_dict_zip.pth", Format::Zip),
        ("state_dict_legacy.pth", Format::Legacy),
        ("checkpoint_legacy.pth.tar", Format::Legacy),
        ("checkpoint_zip.pth.tar", Format::Zip),
    ];
    for (name, format) in forms {
        let ckpt = Checkpoint::open(&fixture(name)).unwrap();
        assert_eq!(ckpt.format(), format, "{name}");
        let tensors = pth::tutorial_tensors(&ckpt, &Device::Cpu).unwrap();
        assert_matches_reference(&tensors, "", name);
    }
    // The same bytes read from memory.
    let bytes = std::fs::read(fixture("checkpoint_legacy.pth.tar")).unwrap();
    let ckpt = Checkpoint::from_bytes(bytes, Path::new("in-memory.pth.tar")).unwrap();
    assert_matches_reference(
        &pth::tutorial_tensors(&ckpt, &Device::Cpu).unwrap(),
        "",
        "in memory",
    );
}

#[test]
fn whole_module_checkpoint_keeps_its_layout_and_metadata() {
    for name in ["checkpoint_legacy.pth.tar", "checkpoint_zip.pth.tar"] {
        let ckpt = Checkpoint::open(&fixture(name)).unwrap();
        let info = ckpt.training_info();
        assert_eq!(info.epoch, Some(7), "{name}");
        assert_eq!(info.epochs_since_improvement, Some(2), "{name}");
        assert_eq!(info.bleu4, Some(0.2345), "{name}");
        assert_eq!(info.encoded_image_size, Some(6), "{name}");
        assert_eq!(info.dropout, Some(0.5), "{name}");
        assert_eq!(info.encoder_class.as_deref(), Some("models.Encoder"));
        assert_eq!(
            info.decoder_class.as_deref(),
            Some("models.DecoderWithAttention")
        );
        let root = ckpt.root();
        let decoder = root.get("decoder").unwrap().as_object().unwrap();
        assert!(decoder.is_module());
        // A torchvision block inside the encoder's Sequential, as the tutorial's file has.
        let block = root
            .get("encoder")
            .and_then(|e| e.get("_modules"))
            .and_then(|m| m.get("resnet"))
            .and_then(|r| r.get("_modules"))
            .and_then(|m| m.get("4"))
            .and_then(|l| l.get("_modules"))
            .and_then(|m| m.get("0"))
            .and_then(Value::as_object)
            .unwrap();
        assert_eq!(block.class.path(), "torchvision.models.resnet.BasicBlock");
        let optimizer = root.get("decoder_optimizer").unwrap().as_object().unwrap();
        assert_eq!(optimizer.class.path(), "torch.optim.adam.Adam");
        // Adam's state is keyed by the parameters themselves.
        let state = optimizer
            .attr("state")
            .and_then(Value::dict_entries)
            .unwrap();
        assert!(!state.is_empty());
        assert!(state.iter().all(|(k, _)| matches!(k, Value::Tensor(_))));
        let named = ckpt.named_tensors().unwrap();
        let fc = &named
            .iter()
            .find(|(n, _)| n == "decoder.fc.weight")
            .unwrap()
            .1;
        assert!(
            !fc.is_contiguous() && fc.parameter,
            "the fixture's fc.weight is a transposed Parameter"
        );
        let init_h = &named
            .iter()
            .find(|(n, _)| n == "decoder.init_h.weight")
            .unwrap()
            .1;
        let init_c = &named
            .iter()
            .find(|(n, _)| n == "decoder.init_c.weight")
            .unwrap()
            .1;
        assert_eq!(
            init_h.storage.key, init_c.storage.key,
            "init_h and init_c share one storage"
        );
        assert_eq!(
            init_c.offset as usize,
            init_c.shape.iter().product::<usize>()
        );
        // Integer buffers are found but not loaded unless asked.
        let nbt = named
            .iter()
            .find(|(n, _)| n.ends_with("num_batches_tracked"))
            .unwrap();
        assert_eq!(nbt.1.dtype, TorchDType::I64);
        let with_ints = ckpt
            .load_tensors(std::slice::from_ref(nbt), true, &Device::Cpu)
            .unwrap();
        assert_eq!(with_ints[&nbt.0].dtype(), candle_core::DType::I64);
        assert!(ckpt
            .load_tensors(std::slice::from_ref(nbt), false, &Device::Cpu)
            .unwrap()
            .is_empty());
    }
}

#[test]
fn torchvision_resnet_file_gives_encoder_tensors() {
    let tensors =
        pth::torchvision_resnet_encoder(&fixture("resnet_torchvision.pth"), &Device::Cpu).unwrap();
    assert!(
        tensors.keys().all(|k| k.starts_with("encoder.resnet.")),
        "the classifier is dropped"
    );
    assert_matches_reference(&tensors, "encoder.", "resnet_torchvision.pth");
    let e = pth::torchvision_resnet_encoder(&fixture("dtypes_zip.pth"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dtypes_zip.pth") && e.contains("conv1.weight"),
        "{e}"
    );
}

#[test]
fn every_dtype_and_layout_converts_like_pytorch() {
    let expected = json("dtypes.json");
    for name in ["dtypes_legacy.pth", "dtypes_zip.pth"] {
        let ckpt = Checkpoint::open(&fixture(name)).unwrap();
        let root = ckpt.root();
        let tensors = root.get("tensors").and_then(Value::dict_entries).unwrap();
        assert_eq!(tensors.len(), expected.as_object().unwrap().len());
        for (key, value) in tensors {
            let key = key.as_str().unwrap();
            let t = value.as_tensor().unwrap();
            let e = &expected[key];
            assert_eq!(t.dtype.name(), e["dtype"].as_str().unwrap(), "{name} {key}");
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, shape, "{name} {key}");
            let want: Vec<f32> = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got: Vec<f32> = ckpt
                .tensor_f32(t, key, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "{name} {key}");
            if key == "i64" {
                let native: Vec<i64> = ckpt
                    .tensor_native(t, key, &Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(native, vec![-3, -2, -1, 0, 1, 2]);
            }
            if key == "f64" {
                let native = ckpt.tensor_native(t, key, &Device::Cpu).unwrap();
                let want: Vec<f64> = e["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                assert_eq!(
                    native.to_vec1::<f64>().unwrap(),
                    want,
                    "{name} f64 keeps full precision"
                );
            }
        }
        let nested = root
            .get("nested")
            .and_then(|n| n.get("inner"))
            .and_then(|i| i.get("w"))
            .and_then(Value::as_tensor)
            .unwrap();
        assert_eq!(nested.shape, vec![6]);
        assert_eq!(
            nested.offset, 6,
            "{name}: a row of a matrix is a view at offset 6"
        );
        let meta = root.get("meta").unwrap();
        assert_eq!(meta.get("name").and_then(Value::as_str), Some("dtypes"));
        assert_eq!(meta.get("big").and_then(Value::as_int), Some(1i128 << 70));
        assert_eq!(
            meta.get("neg").and_then(Value::as_int),
            Some(-(1i128 << 40))
        );
        assert_eq!(
            meta.get("pi").and_then(Value::as_f64),
            Some(std::f64::consts::PI)
        );
        assert_eq!(
            meta.get("raw"),
            Some(&Value::Bytes(vec![0u8, 1, 255].into()))
        );
        assert_eq!(
            meta.get("tuple").and_then(Value::as_seq).map(|t| t.len()),
            Some(3)
        );
        assert_eq!(
            meta.get("set").and_then(Value::as_seq).map(|t| t.len()),
            Some(2)
        );
        assert_eq!(meta.get("none"), Some(&Value::None));
        assert_eq!(meta.get("flag"), Some(&Value::Bool(true)));
    }
}

#[test]
fn pytorch_0_4_constructs_load() {
    // Parameters pickled as `Parameter(tensor, requires_grad)`, torch.cuda storage types, a
    // legacy storage view, a module `_backend`, a numpy float for BLEU-4.
    let ckpt = Checkpoint::open(&fixture("torch04_style.pth.tar")).unwrap();
    assert_eq!(ckpt.format(), Format::Legacy);
    let info = ckpt.training_info();
    assert_eq!(info.epoch, Some(3));
    assert_eq!(info.bleu4, Some(0.3125));
    let named = ckpt.named_tensors().unwrap();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["decoder.weight", "decoder.bias"]);
    let weight = &named[0].1;
    assert!(weight.parameter && weight.requires_grad);
    assert_eq!(weight.storage.view, Some((4, 6)));
    assert_eq!(weight.storage.location, "cuda:0");
    let tensors = ckpt.load_tensors(&named, false, &Device::Cpu).unwrap();
    let expected = json("torch04_style.json");
    for (name, t) in &tensors {
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = expected[name.as_str()]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, want, "{name}");
    }
    let backend = ckpt
        .root()
        .get("decoder")
        .and_then(|d| d.get("_backend"))
        .and_then(Value::as_object)
        .unwrap();
    assert_eq!(
        backend.class.path(),
        "torch.nn.backends.thnn._get_thnn_function_backend"
    );
}

fn open_bytes(bytes: Vec<u8>, name: &str) -> Result<Checkpoint, PthError> {
    Checkpoint::from_bytes(bytes, Path::new(name))
}

#[test]
fn corrupt_truncated_and_foreign_files_give_clear_errors() {
    let legacy = std::fs::read(fixture("checkpoint_legacy.pth.tar")).unwrap();
    let zip = std::fs::read(fixture("checkpoint_zip.pth.tar")).unwrap();

    let e = open_bytes(Vec::new(), "empty.pth").unwrap_err().to_string();
    assert!(e.contains("empty.pth") && e.contains("empty"), "{e}");
    let e = open_bytes(
        b"hello, this is not a checkpoint at all".to_vec(),
        "text.pth",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("text.pth") && e.contains("not a PyTorch checkpoint"),
        "{e}"
    );
    // A pickle that is not torch's.
    let e = open_bytes(b"\x80\x02}q\x00.".to_vec(), "plain.pkl")
        .unwrap_err()
        .to_string();
    assert!(e.contains("plain.pkl") && e.contains("magic number"), "{e}");

    // Cut inside the main pickle.
    let e = open_bytes(legacy[..legacy.len() / 3].to_vec(), "cut.pth.tar")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.pth.tar") && e.contains("truncated"), "{e}");
    // Cut inside the storage data.
    let e = open_bytes(legacy[..legacy.len() - 100].to_vec(), "short.pth.tar")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("short.pth.tar") && e.contains("storage") && e.contains("truncated"),
        "{e}"
    );
    // A zip without its central directory.
    let e = open_bytes(zip[..zip.len() - 300].to_vec(), "cut.zip.pth")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.zip.pth") && e.contains("zip"), "{e}");

    // An unknown opcode in the middle of the saved object: the error says which and where.
    let main_start = find(&legacy, b"models").expect("the pickle names models.Encoder");
    let mut bad = legacy.clone();
    let at = main_start + 40;
    bad[at] = 0xfe;
    let e = open_bytes(bad, "flipped.pth.tar").unwrap_err().to_string();
    assert!(
        e.contains("flipped.pth.tar") && e.contains("saved object") && e.contains("byte"),
        "{e}"
    );

    // A tensor whose storage is missing from the zip archive.
    let renamed = replace_all(
        &zip,
        b"checkpoint_zip.pth/data/3",
        b"checkpoint_zip.pth/data/X",
    );
    let e = open_bytes(renamed, "missing.pth").unwrap_err().to_string();
    assert!(e.contains("missing.pth") && e.contains("storage 3"), "{e}");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = data.to_vec();
    let mut i = 0;
    while let Some(p) = find(&out[i..], from) {
        out[i + p..i + p + to.len()].copy_from_slice(to);
        i += p + to.len();
    }
    out
}

fn gaze(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(args)
        .env("GAZE_LOG", "warn")
        .output()
        .unwrap()
}

fn caption_json(model: &Path) -> Vec<Json> {
    caption_json_with(&["--model", model.to_str().unwrap()])
}

/// `gaze caption --beam-size 3 --json` of the three fixture images, with the model given by
/// `model_args`.
fn caption_json_with(model_args: &[&str]) -> Vec<Json> {
    let images: Vec<String> = (0..3)
        .map(|i| fixture(&format!("image_{i}.png")).display().to_string())
        .collect();
    let mut args = vec!["caption"];
    args.extend_from_slice(model_args);
    args.extend(["--beam-size", "3", "--json"]);
    args.extend(images.iter().map(String::as_str));
    let out = gaze(&args);
    assert!(
        out.status.success(),
        "gaze caption failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn imported_tutorial_checkpoint_captions_like_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    let wm = fixture("WORDMAP_fixture.json");
    let ckpt = fixture("checkpoint_legacy.pth.tar");
    let out = gaze(&[
        "import",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--word-map",
        wm.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "gaze import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expected = json("expected_captions.json");
    let got = caption_json(&model);
    let want = expected["captions"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(g["path"]
            .as_str()
            .unwrap()
            .ends_with(w["image"].as_str().unwrap()));
        assert_eq!(
            g["token_ids"], w["token_ids"],
            "{}: token ids differ from PyTorch's",
            w["image"]
        );
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!(
            (gs - ws).abs() < 1e-4,
            "{}: score {gs} vs PyTorch {ws}",
            w["image"]
        );
        assert_eq!(g["finished"], Json::Bool(true));
    }

    // The model file records the architecture found and where it came from.
    let opts = gaze::model::LoadOptions::default();
    let file = gaze::model::file::read_model_file(&model, &opts, &Device::Cpu).unwrap();
    assert_eq!(file.config.encoded_image_size, 6);
    assert_eq!(file.config.encoder_dim(), 32);
    assert_eq!(
        (
            file.config.attention_dim,
            file.config.embed_dim,
            file.config.decoder_dim
        ),
        (16, 16, 16)
    );
    let source = &file.provenance["imported_from"];
    assert_eq!(source["file"], "checkpoint_legacy.pth.tar");
    assert_eq!(source["format"], "pytorch-legacy");
    assert_eq!(source["epoch"], 7);
    assert_eq!(source["epochs_since_improvement"], 2);
    assert_eq!(source["bleu-4"], 0.2345);
    assert_matches_reference(&file.tensors, "", "imported model file");

    // A plain state dict records no grid size: it is given on the command line.
    let model2 = dir.path().join("from_state_dict.safetensors");
    let out = gaze(&[
        "import",
        "--checkpoint",
        fixture("state_dict_zip.pth").to_str().unwrap(),
        "--word-map",
        wm.to_str().unwrap(),
        "--encoded-image-size",
        "6",
        "--out",
        model2.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got2 = caption_json(&model2);
    for (a, b) in got.iter().zip(&got2) {
        assert_eq!(a["token_ids"], b["token_ids"]);
        assert_eq!(a["score"], b["score"]);
    }

    // The same PyTorch files straight to `caption --weights`, with no import step.
    for (file, grid) in [
        ("checkpoint_legacy.pth.tar", None),
        ("state_dict_zip.pth", Some("6")),
    ] {
        let weights = fixture(file);
        let mut args = vec![
            "--weights",
            weights.to_str().unwrap(),
            "--word-map",
            wm.to_str().unwrap(),
        ];
        if let Some(g) = grid {
            args.extend(["--encoded-image-size", g]);
        }
        let direct = caption_json_with(&args);
        for (a, b) in got.iter().zip(&direct) {
            assert_eq!(a["token_ids"], b["token_ids"], "{file}");
            assert_eq!(a["score"], b["score"], "{file}");
        }
    }
}

#[test]
fn import_reports_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("m.safetensors");
    let out_str = out_path.to_str().unwrap();
    let ckpt = fixture("checkpoint_legacy.pth.tar");
    let wm = fixture("WORDMAP_fixture.json");

    let out = gaze(&[
        "import",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        out_str,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("word map")
            && stderr.contains("--word-map")
            && stderr.contains("checkpoint_legacy.pth.tar"),
        "{stderr}"
    );
    assert!(!out_path.exists());

    // Two tensors renamed inside the pickle: both are reported by name.
    let legacy = std::fs::read(fixture("state_dict_legacy.pth")).unwrap();
    let broken = replace_all(
        &replace_all(&legacy, b"init_h.bias", b"init_x.bias"),
        b"f_beta.weight",
        b"f_beta.weighx",
    );
    let broken_path = dir.path().join("broken.pth");
    std::fs::write(&broken_path, broken).unwrap();
    let out = gaze(&[
        "import",
        "--checkpoint",
        broken_path.to_str().unwrap(),
        "--word-map",
        wm.to_str().unwrap(),
        "--encoded-image-size",
        "6",
        "--out",
        out_str,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("decoder.init_h.bias: missing")
            && stderr.contains("decoder.f_beta.weight: missing"),
        "{stderr}"
    );
    assert!(!out_path.exists());

    // A file with tensors but no model.
    let out = gaze(&[
        "import",
        "--checkpoint",
        fixture("dtypes_zip.pth").to_str().unwrap(),
        "--word-map",
        wm.to_str().unwrap(),
        "--out",
        out_str,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("dtypes_zip.pth") && stderr.contains("encoder.resnet.0.weight"),
        "{stderr}"
    );
}
