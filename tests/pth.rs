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

/// Crafted files: each must fail (or load) with a clear error in seconds and bounded memory,
/// never abort, overflow the stack, hang or run anything. The files are built here, opcode by
/// opcode, in both torch formats.
mod hostile {
    use std::io::{Cursor, Write};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use candle_core::Device;
    use gaze::pth::{Checkpoint, PthError, Value};

    const LIMIT: Duration = Duration::from_secs(10);

    fn binunicode(s: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
        out
    }

    fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }

    fn long_binget(i: u32) -> Vec<u8> {
        let mut out = vec![b'j'];
        out.extend(i.to_le_bytes());
        out
    }

    fn long_binput(i: u32) -> Vec<u8> {
        let mut out = vec![b'r'];
        out.extend(i.to_le_bytes());
        out
    }

    /// A small non-negative int (`BININT`).
    fn int(i: u32) -> Vec<u8> {
        let mut out = vec![b'J'];
        out.extend(i.to_le_bytes());
        out
    }

    /// Any u64 (`LONG1` with a zero top byte, so it is never negative).
    fn long(i: u64) -> Vec<u8> {
        let mut out = vec![0x8a, 9];
        out.extend(i.to_le_bytes());
        out.push(0);
        out
    }

    /// A tuple of ints, for sizes and strides.
    fn int_tuple(items: &[u64]) -> Vec<u8> {
        let mut out = vec![b'('];
        for &i in items {
            out.extend(long(i));
        }
        out.push(b't');
        out
    }

    /// `_rebuild_tensor_v2(storage('0', FloatStorage, numel), 0, shape, stride, False,
    /// OrderedDict())`, leaving the tensor on the stack. `legacy` adds the view field that the
    /// legacy format's persistent ids have.
    fn tensor(numel: u64, shape: &[u64], stride: &[u64], legacy: bool) -> Vec<u8> {
        let mut p = global("torch._utils", "_rebuild_tensor_v2");
        p.push(b'(');
        p.push(b'(');
        p.extend(binunicode("storage"));
        p.extend(global("torch", "FloatStorage"));
        p.extend(binunicode("0"));
        p.extend(binunicode("cpu"));
        p.extend(long(numel));
        if legacy {
            p.push(b'N');
        }
        p.extend(b"tQ");
        p.extend(int(0));
        p.extend(int_tuple(shape));
        p.extend(int_tuple(stride));
        p.push(0x89);
        p.extend(global("collections", "OrderedDict"));
        p.extend(b")R");
        p.extend(b"tR");
        p
    }

    /// A pickle of `{"fc.weight": tensor, <extra entries>}` (protocol 2).
    fn state_dict(tensor: Vec<u8>, extra: &[u8]) -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        p.extend(global("collections", "OrderedDict"));
        p.extend(b")R(");
        p.extend(binunicode("fc.weight"));
        p.extend(tensor);
        p.extend(extra);
        p.extend(b"u.");
        p
    }

    /// A zip checkpoint: `archive/data.pkl` and, if given, storage `0`.
    fn zip_file(pickle: &[u8], storage: Option<&[u8]>) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("archive/data.pkl", opts).unwrap();
        w.write_all(pickle).unwrap();
        w.start_file("archive/byteorder", opts).unwrap();
        w.write_all(b"little").unwrap();
        if let Some(bytes) = storage {
            w.start_file("archive/data/0", opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.start_file("archive/version", opts).unwrap();
        w.write_all(b"3\n").unwrap();
        w.finish().unwrap().into_inner()
    }

    /// A legacy checkpoint: magic number, protocol version, system info, the object, the key
    /// list, then each storage as an element count and its bytes.
    fn legacy_file(pickle: &[u8], storage: Option<(u64, &[u8])>) -> Vec<u8> {
        let mut f = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
        f.extend(b"\x80\x02M\xe9\x03.");
        f.extend(b"\x80\x02}q\x00.");
        f.extend(pickle);
        match storage {
            Some((count, bytes)) => {
                f.extend(b"\x80\x02]");
                f.extend(binunicode("0"));
                f.extend(b"a.");
                f.extend(count.to_le_bytes());
                f.extend(bytes);
            }
            None => f.extend(b"\x80\x02]."),
        }
        f
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Opens `bytes`, lists and reads every tensor (what a fuzz target does), timing it.
    fn open_and_read(bytes: Vec<u8>, name: &str) -> (Result<usize, PthError>, Duration) {
        let start = Instant::now();
        let result = (|| {
            let ckpt = Checkpoint::from_bytes(bytes, Path::new(name))?;
            let _ = ckpt.training_info();
            let named = ckpt.named_tensors()?;
            for (n, t) in &named {
                ckpt.tensor_bytes(t, n)?;
            }
            Ok(named.len())
        })();
        (result, start.elapsed())
    }

    fn expect_error(bytes: Vec<u8>, name: &str, wanted: &[&str]) {
        let (result, elapsed) = open_and_read(bytes, name);
        let e = result.expect_err(name).to_string();
        assert!(elapsed < LIMIT, "{name}: took {elapsed:?}");
        assert!(e.contains(name), "{name}: {e}");
        for w in wanted {
            assert!(e.contains(w), "{name}: expected {w:?} in: {e}");
        }
    }

    /// Both formats around one pickle without storages.
    fn both_formats(pickle: &[u8]) -> [(Vec<u8>, &'static str); 2] {
        [
            (zip_file(pickle, None), "hostile_zip.pth"),
            (legacy_file(pickle, None), "hostile_legacy.pth"),
        ]
    }

    #[test]
    fn a_million_levels_of_nesting_fail_quickly() {
        const N: usize = 1_000_000;
        // [[[[...]]]]: a million EMPTY_LISTs, then APPENDs.
        let mut lists = b"\x80\x02".to_vec();
        lists.extend(std::iter::repeat_n(b']', N));
        lists.extend(std::iter::repeat_n(b'a', N - 1));
        lists.push(b'.');
        // ((((...)))): a million MARKs, then TUPLEs.
        let mut marks = b"\x80\x02".to_vec();
        marks.extend(std::iter::repeat_n(b'(', N));
        marks.extend(std::iter::repeat_n(b't', N));
        marks.push(b'.');
        // (((None,),),): TUPLE1 a million times, the stack never more than one deep.
        let mut tuples = b"\x80\x02N".to_vec();
        tuples.extend(std::iter::repeat_n(0x85, N));
        tuples.push(b'.');
        // A chain of memoised tuples, each holding the previous, all kept in one outer tuple:
        // every container is shallow when first frozen, the last is 200,000 deep.
        let mut chain = b"\x80\x02(N".to_vec();
        chain.extend(long_binput(0));
        for k in 1..200_000u32 {
            chain.extend(long_binget(k - 1));
            chain.push(0x85);
            chain.extend(long_binput(k));
        }
        chain.extend(b"t.");
        for (what, pickle) in [
            ("lists", lists),
            ("marks", marks),
            ("tuples", tuples),
            ("chain", chain),
        ] {
            for (bytes, name) in both_formats(&pickle) {
                let name = format!("{what}_{name}");
                expect_error(bytes, &name, &["nested more than 1000 deep"]);
            }
        }
    }

    #[test]
    fn shared_dag_of_dicts_finishes_quickly() {
        // 60 levels, each {"a": previous, "b": previous}: 2^60 paths through 600 bytes.
        let mut dicts = b"\x80\x02}".to_vec();
        dicts.extend(long_binput(0));
        for k in 1..=60u32 {
            dicts.extend(b"}(");
            dicts.extend(binunicode("a"));
            dicts.extend(long_binget(k - 1));
            dicts.extend(binunicode("b"));
            dicts.extend(long_binget(k - 1));
            dicts.push(b'u');
            dicts.extend(long_binput(k));
        }
        dicts.push(b'.');
        // The same with tuples, and with objects whose state is (previous, previous).
        let mut tuples = b"\x80\x02N".to_vec();
        tuples.extend(long_binput(0));
        for k in 1..=60u32 {
            tuples.extend(long_binget(k - 1));
            tuples.extend(long_binget(k - 1));
            tuples.push(0x86);
            tuples.extend(long_binput(k));
        }
        tuples.push(b'.');
        let mut objects = b"\x80\x02}".to_vec();
        objects.extend(long_binput(0));
        for k in 1..=60u32 {
            objects.extend(global("models", "Encoder"));
            objects.extend(b")\x81");
            objects.extend(long_binget(k - 1));
            objects.extend(long_binget(k - 1));
            objects.extend(b"\x86b");
            objects.extend(long_binput(k));
        }
        objects.push(b'.');
        for (what, pickle) in [("dicts", dicts), ("tuples", tuples), ("objects", objects)] {
            for (bytes, name) in both_formats(&pickle) {
                let name = format!("{what}_{name}");
                let (result, elapsed) = open_and_read(bytes.clone(), &name);
                assert!(elapsed < LIMIT, "{name}: took {elapsed:?}");
                if let Err(e) = result {
                    let e = e.to_string();
                    assert!(e.contains(&name) && e.contains("shared"), "{name}: {e}");
                }
                // Printing and comparing the shared data is bounded too.
                let start = Instant::now();
                let a = Checkpoint::from_bytes(bytes.clone(), Path::new(&name)).unwrap();
                let b = Checkpoint::from_bytes(bytes, Path::new(&name)).unwrap();
                assert!(a.root() == b.root(), "{name}");
                let shown = format!("{:?}", a.root());
                assert!(shown.len() < 10_000_000, "{name}: {} bytes", shown.len());
                assert!(
                    start.elapsed() < LIMIT,
                    "{name}: took {:?}",
                    start.elapsed()
                );
            }
        }
    }

    #[test]
    fn the_dict_dag_is_refused_by_the_tensor_walk() {
        let mut p = b"\x80\x02}".to_vec();
        p.extend(long_binput(0));
        for k in 1..=60u32 {
            p.extend(b"}(");
            p.extend(binunicode("a"));
            p.extend(long_binget(k - 1));
            p.extend(binunicode("b"));
            p.extend(long_binget(k - 1));
            p.push(b'u');
            p.extend(long_binput(k));
        }
        p.push(b'.');
        expect_error(
            zip_file(&p, None),
            "dag.pth",
            &["shared along so many paths"],
        );
    }

    #[test]
    fn memoised_arguments_passed_over_and_over_are_refused() {
        // A 100,000-item tuple, memoised, then given to a constructor 100,000 times: 10^10
        // copies from a megabyte.
        let mut p = b"\x80\x02(".to_vec();
        p.extend(std::iter::repeat_n(b'N', 100_000));
        p.push(b't');
        p.extend(long_binput(0));
        p.extend(global("__main__", "C"));
        p.extend(long_binput(1));
        for _ in 0..100_000 {
            p.extend(long_binget(1));
            p.extend(long_binget(0));
            p.extend(b"R0");
        }
        p.push(b'.');
        for (bytes, name) in both_formats(&p) {
            expect_error(bytes, name, &["units of work"]);
        }
    }

    #[test]
    fn huge_shapes_storages_and_entries_are_refused() {
        let one = f32_bytes(&[1.5]);
        // Shape [10^6, 10^6, 10^6] with stride 0 over one element: 4 * 10^18 bytes.
        let huge = [1_000_000u64; 3];
        let zip = zip_file(
            &state_dict(tensor(1, &huge, &[0, 0, 0], false), b""),
            Some(&one),
        );
        expect_error(zip, "broadcast_zip.pth", &["fc.weight", "refused"]);
        let legacy = legacy_file(
            &state_dict(tensor(1, &huge, &[0, 0, 0], true), b""),
            Some((1, &one)),
        );
        expect_error(legacy, "broadcast_legacy.pth", &["fc.weight", "refused"]);

        // A storage claiming 2^40 elements, with a tensor using them all.
        let big = 1u64 << 40;
        let zip = zip_file(
            &state_dict(tensor(big, &[big], &[1], false), b""),
            Some(&one),
        );
        expect_error(zip, "claims_zip.pth", &["fc.weight", "storage 0"]);
        let legacy = legacy_file(
            &state_dict(tensor(big, &[big], &[1], true), b""),
            Some((big, &one)),
        );
        expect_error(legacy, "claims_legacy.pth", &["storage 0", "past the end"]);
        // A legacy element count so large that count * 4 + position wraps around.
        let wrap = (u64::MAX - 64) / 4;
        let legacy = legacy_file(
            &state_dict(tensor(1, &[1], &[1], true), b""),
            Some((wrap, &one)),
        );
        expect_error(legacy, "wrap_legacy.pth", &["storage 0", "past the end"]);

        // Zip entries whose headers claim 4 GB: data.pkl, and the storage.
        let good = zip_file(&state_dict(tensor(1, &[1], &[1], false), b""), Some(&one));
        for entry in ["archive/data.pkl", "archive/data/0"] {
            let mut bytes = good.clone();
            claim_size(&mut bytes, entry, 0xF000_0000);
            let name = format!("4gb_{}.pth", entry.replace('/', "_"));
            expect_error(bytes, &name, &["4026531840"]);
        }
    }

    /// Sets the sizes a zip's local and central headers give for `entry`.
    fn claim_size(zip: &mut [u8], entry: &str, size: u32) {
        let mut patched = 0;
        for i in 0..zip.len().saturating_sub(46) {
            let (sizes, name_len, name_at) = match &zip[i..i + 4] {
                b"PK\x03\x04" => (i + 18, i + 26, i + 30),
                b"PK\x01\x02" => (i + 20, i + 28, i + 46),
                _ => continue,
            };
            let n = u16::from_le_bytes([zip[name_len], zip[name_len + 1]]) as usize;
            if zip.get(name_at..name_at + n) == Some(entry.as_bytes()) {
                zip[sizes..sizes + 4].copy_from_slice(&size.to_le_bytes());
                zip[sizes + 4..sizes + 8].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
        assert_eq!(patched, 2, "{entry}: local and central header");
    }

    #[test]
    fn dangerous_globals_load_inert_and_are_reported() {
        let marker = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pth_hostile_marker");
        let _ = std::fs::remove_file(&marker);
        let command = format!("touch {}", marker.display());
        // "cmd": os.system itself; "run": os.system(command) via REDUCE; "ev": builtins.eval
        // via REDUCE; "imp": __import__ named by STACK_GLOBAL.
        let mut extra = binunicode("cmd");
        extra.extend(global("os", "system"));
        extra.extend(binunicode("run"));
        extra.extend(global("os", "system"));
        extra.extend(binunicode(&command));
        extra.extend(b"\x85R");
        extra.extend(binunicode("ev"));
        extra.extend(global("__builtin__", "eval"));
        extra.extend(binunicode("print(1)"));
        extra.extend(b"\x85R");
        extra.extend(binunicode("imp"));
        extra.extend(binunicode("builtins"));
        extra.extend(binunicode("__import__"));
        extra.push(0x93);
        let values = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.5];
        let data = f32_bytes(&values);
        let files = [
            (
                zip_file(
                    &state_dict(tensor(6, &[2, 3], &[3, 1], false), &extra),
                    Some(&data),
                ),
                "system_zip.pth",
            ),
            (
                legacy_file(
                    &state_dict(tensor(6, &[2, 3], &[3, 1], true), &extra),
                    Some((6, &data)),
                ),
                "system_legacy.pth",
            ),
        ];
        for (bytes, name) in files {
            let ckpt = Checkpoint::from_bytes(bytes, Path::new(name)).unwrap();
            assert_eq!(
                ckpt.unexpected_globals(),
                ["os.system", "builtins.eval", "builtins.__import__"],
                "{name}"
            );
            let named = ckpt.named_tensors().unwrap();
            assert_eq!(named.len(), 1, "{name}");
            assert_eq!(named[0].0, "fc.weight");
            let t = ckpt
                .tensor_f32(&named[0].1, &named[0].0, &Device::Cpu)
                .unwrap();
            assert_eq!(t.dims(), &[2, 3]);
            let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, values, "{name}");
            // The call became an inert object recording what it would have run.
            let run = ckpt.root().get("run").and_then(Value::as_object).unwrap();
            assert_eq!(run.class.path(), "os.system");
            assert_eq!(run.args, vec![Value::Str(Arc::from(command.as_str()))]);
            assert!(matches!(ckpt.root().get("cmd"), Some(Value::Global(_))));
        }
        assert!(!marker.exists(), "the command ran");
    }

    #[test]
    fn fixtures_name_only_expected_globals() {
        for name in [
            "state_dict_zip.pth",
            "state_dict_legacy.pth",
            "checkpoint_legacy.pth.tar",
            "checkpoint_zip.pth.tar",
            "dtypes_zip.pth",
            "dtypes_legacy.pth",
            "resnet_torchvision.pth",
            "torch04_style.pth.tar",
        ] {
            let ckpt = Checkpoint::open(&super::fixture(name)).unwrap();
            assert!(
                ckpt.unexpected_globals().is_empty(),
                "{name}: {:?}",
                ckpt.unexpected_globals()
            );
        }
    }

    #[test]
    fn deep_values_drop_compare_and_print_without_recursion() {
        // Values built directly (a pickle cannot make them this deep).
        let chain = |n: usize| {
            let mut v = Value::None;
            for i in 0..n {
                v = if i % 2 == 0 {
                    Value::Tuple(Arc::from(vec![v]))
                } else {
                    Value::Dict(Arc::from(vec![(Value::Int(i as i128), v)]))
                };
            }
            v
        };
        let start = Instant::now();
        let (a, b) = (chain(1_000_000), chain(1_000_000));
        assert!(a == b);
        assert!(a != chain(999_999));
        let shown = format!("{a:?}");
        assert!(shown.contains("..."), "{}", &shown[..200]);
        drop(a);
        drop(b);
        assert!(start.elapsed() < LIMIT, "took {:?}", start.elapsed());
    }
}
