//! Training on tiny in-memory data: the loss falls, resume follows the uninterrupted run,
//! fine-tuning runs, and bad data is refused before training starts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use gaze::data::{DataError, WordMap};
use gaze::train::data::{ImageStore, SplitData, TrainData};
use gaze::train::features::CacheMode;
use gaze::train::observer::BatchProgress;
use gaze::train::{
    encoder_start, train, EncoderStart, EpochRecord, StandardObserver, StopReason, TrainConfig,
    TrainError, TrainObserver, TrainOptions,
};

const SIDE: usize = 32;
const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [30, 40, 220]),
    ("yellow", [230, 220, 30]),
];

/// Images of one coloured square on grey, left or right.
struct Squares(Vec<Vec<u8>>);

impl ImageStore for Squares {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn side(&self) -> usize {
        SIDE
    }
    fn read_chw(&self, index: usize, out: &mut [u8]) -> Result<(), DataError> {
        out.copy_from_slice(&self.0[index]);
        Ok(())
    }
}

fn split(n: usize, word_map: &WordMap, offset: usize) -> SplitData {
    let mut images = Vec::new();
    let mut captions = Vec::new();
    let mut lengths = Vec::new();
    for i in 0..n {
        let k = i + offset;
        let (name, rgb) = COLOURS[k % 4];
        let side_word = if (k / 4).is_multiple_of(2) {
            "left"
        } else {
            "right"
        };
        let mut img = vec![120u8; 3 * SIDE * SIDE];
        let x0 = if side_word == "left" { 2 } else { SIDE / 2 + 2 };
        for c in 0..3 {
            for y in 8..24 {
                for x in x0..x0 + 12 {
                    img[c * SIDE * SIDE + y * SIDE + x] = rgb[c];
                }
            }
        }
        images.push(img);
        for words in [
            vec!["a", name, "square", "on", "the", side_word],
            vec![name, "square", side_word],
        ] {
            let mut cap = vec![word_map.start];
            cap.extend(words.iter().map(|w| word_map.id(w).unwrap()));
            cap.push(word_map.end);
            lengths.push(cap.len());
            cap.resize(10, word_map.pad);
            captions.push(cap);
        }
    }
    SplitData {
        images: Arc::new(Squares(images)),
        captions,
        lengths,
        captions_per_image: 2,
    }
}

fn data() -> TrainData {
    let words = [
        "a", "red", "green", "blue", "yellow", "square", "on", "the", "left", "right",
    ];
    let word_map = WordMap::from_counts(words.iter().map(|w| (*w, 10)), 5);
    TrainData {
        train: split(16, &word_map, 0),
        val: split(8, &word_map, 3),
        word_map,
        data_name: "squares".into(),
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        emb_dim: 16,
        attention_dim: 16,
        decoder_dim: 24,
        encoded_image_size: 2,
        encoder: "resnet18".into(),
        batch_size: 8,
        epochs: 3,
        seed: 7,
        decoder_lr: 4e-3,
        feature_cache: CacheMode::Memory,
        ..Default::default()
    }
}

fn options(dir: &Path) -> TrainOptions {
    TrainOptions {
        out_dir: dir.to_path_buf(),
        checkpoint: None,
        stop: Arc::new(AtomicBool::new(false)),
    }
}

/// What `gaze train --quiet` reports: the JSON-lines log only.
fn log_only() -> StandardObserver {
    StandardObserver::new(false)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let y = &tb[name];
        let diff = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-6, "{name} differs by {diff}");
    }
}

#[test]
fn loss_falls_and_the_best_model_captions() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let out = train(&config(), &data, &options(dir.path()), &mut log_only()).unwrap();
    assert_eq!(out.stop, StopReason::Epochs);
    assert_eq!(out.history.len(), 3);
    let first = out.history[0].train_loss;
    let last = out.history[2].train_loss;
    assert!(last < first * 0.9, "loss {first} -> {last}");
    let best = out.best.expect("a best model is written");
    let model = gaze::model::CaptionModel::load(&best, &Default::default(), &Device::Cpu).unwrap();
    let log = std::fs::read_to_string(dir.path().join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3);
    assert_eq!(model.word_map.len(), data.word_map.len());
}

/// Writes down what a run reports, in order.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    last_batch: Option<BatchProgress>,
    records: Vec<EpochRecord>,
}

impl TrainObserver for Recorder {
    fn encoding_started(&mut self, what: &str, images: usize) {
        self.events.push(format!("{what}: {images}"));
    }
    fn encoding_finished(&mut self) {
        self.events.push("encoded".into());
    }
    fn run_started(&mut self, _: &Path) -> Result<(), TrainError> {
        self.events.push("run".into());
        Ok(())
    }
    fn epoch_started(&mut self, epoch: usize, batches: usize, first_batch: usize) {
        self.events.push(format!(
            "epoch {epoch}: {batches} batches from {first_batch}"
        ));
    }
    fn batch_done(&mut self, progress: &BatchProgress) {
        self.events.push(format!("batch {}", progress.batches_done));
        self.last_batch = Some(*progress);
    }
    fn batches_finished(&mut self) {
        self.events.push("trained".into());
    }
    fn validation_started(&mut self, images: usize) {
        self.events.push(format!("validate {images}"));
    }
    fn validation_finished(&mut self) {
        self.events.push("validated".into());
    }
    fn checkpoint_saved(&mut self, path: &Path, best: bool) {
        let name = path.file_name().unwrap().to_string_lossy();
        self.events.push(format!("saved {name} best={best}"));
    }
    fn epoch_finished(&mut self, record: &EpochRecord) -> Result<(), TrainError> {
        self.events.push(format!("record {}", record.epoch));
        self.records.push(record.clone());
        Ok(())
    }
}

#[test]
fn an_observer_sees_each_step_and_the_library_writes_no_log_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let cfg = TrainConfig {
        epochs: 1,
        ..config()
    };
    let mut recorder = Recorder::default();
    let out = train(&cfg, &data, &options(dir.path()), &mut recorder).unwrap();
    let batches = data.train.captions.len().div_ceil(cfg.batch_size);
    let val = data.val.num_images();
    let mut expected = vec![
        format!("encoding training images: {}", data.train.num_images()),
        "encoded".into(),
        format!("encoding validation images: {val}"),
        "encoded".into(),
        "run".into(),
        format!("epoch 0: {batches} batches from 0"),
    ];
    expected.extend((1..=batches).map(|b| format!("batch {b}")));
    expected.extend([
        "trained".into(),
        format!("validate {val}"),
        "validated".into(),
        "saved checkpoint_squares.safetensors best=false".into(),
        "saved BEST_checkpoint_squares.safetensors best=true".into(),
        "record 0".into(),
    ]);
    assert_eq!(recorder.events, expected);
    assert_eq!(recorder.records.len(), out.history.len());
    // The last batch's running loss is the epoch's.
    let last = recorder.last_batch.unwrap();
    assert!((last.loss - out.history[0].train_loss).abs() < 1e-12);
    assert!(!dir.path().join("train_log.jsonl").exists());
}

#[test]
fn resume_follows_the_uninterrupted_run() {
    let data = data();
    let straight = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        ..config()
    };
    train(&cfg, &data, &options(straight.path()), &mut log_only()).unwrap();

    // Stop after the first batch (as Ctrl-C does), then resume twice: mid-epoch and at an epoch boundary.
    let split_run = tempfile::tempdir().unwrap();
    let opts = options(split_run.path());
    opts.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = train(&cfg, &data, &opts, &mut log_only()).unwrap();
    assert_eq!(out.stop, StopReason::Interrupted);
    assert_eq!((out.state.epoch, out.state.batch), (0, 1));
    let first = TrainConfig {
        epochs: 1,
        ..cfg.clone()
    };
    let mut opts = options(split_run.path());
    opts.checkpoint = Some(out.checkpoint.clone());
    let out = train(&first, &data, &opts, &mut log_only()).unwrap();
    assert_eq!((out.state.epoch, out.state.batch), (1, 0));
    opts.checkpoint = Some(out.checkpoint.clone());
    train(&cfg, &data, &opts, &mut log_only()).unwrap();
    assert_same_tensors(
        &straight.path().join("checkpoint_squares.safetensors"),
        &split_run.path().join("checkpoint_squares.safetensors"),
    );
}

#[test]
fn fine_tuning_trains_layer2_to_4_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let cfg = TrainConfig {
        epochs: 1,
        fine_tune_encoder: true,
        ..config()
    };
    let before = gaze::model::init::random_tensors(
        &gaze::model::ModelConfig {
            encoder: gaze::model::EncoderConfig::named("resnet18").unwrap(),
            encoded_image_size: 2,
            attention_dim: 16,
            embed_dim: 16,
            decoder_dim: 24,
            vocab_size: data.word_map.len(),
            dropout: 0.5,
        },
        7,
        &Device::Cpu,
    )
    .unwrap();
    let out = train(&cfg, &data, &options(dir.path()), &mut log_only()).unwrap();
    let after = tensors(&out.checkpoint);
    let changed = |name: &str| {
        let d = (&before[name] - &after[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        d.to_scalar::<f32>().unwrap() > 0.0
    };
    assert!(!changed("encoder.resnet.0.weight"), "the stem is frozen");
    assert!(
        !changed("encoder.resnet.4.0.conv1.weight"),
        "layer1 is frozen"
    );
    assert!(changed("encoder.resnet.5.0.conv1.weight"), "layer2 trains");
    assert!(
        changed("encoder.resnet.7.1.bn2.running_mean"),
        "layer4 BatchNorm statistics update"
    );
    assert!(after.contains_key("optim.encoder.exp_avg.encoder.resnet.7.1.conv2.weight"));
}

#[test]
fn mismatched_data_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = data();
    data.train.captions.pop();
    let e = train(&config(), &data, &options(dir.path()), &mut log_only())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("training split") && e.contains("31 captions for 16 images"),
        "{e}"
    );
    let mut data = self::data();
    data.val.captions[0][1] = 99;
    let e = train(&config(), &data, &options(dir.path()), &mut log_only())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("word id 99"), "{e}");
}

/// `gaze train` end to end on the files h5py wrote (tests/fixtures/h5py): the tutorial's file
/// set, read by the binary, trained, checkpointed, logged.
#[test]
fn the_binary_trains_on_files_written_by_h5py() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h5py/prepared");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["train", "--quiet", "--data-folder"])
        .arg(&fixture)
        .args(["--data-name", "tiny_5_cap_per_img_1_min_word_freq", "--out"])
        .arg(dir.path())
        .args([
            "--random-encoder",
            "--encoder",
            "resnet18",
            "--encoded-image-size",
            "2",
            "--emb-dim",
            "16",
        ])
        .args([
            "--attention-dim",
            "16",
            "--decoder-dim",
            "24",
            "--batch-size",
            "8",
        ])
        .args(["--epochs", "2", "--decoder-lr", "4e-3", "--seed", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gaze train failed: {stderr}");
    let name = "tiny_5_cap_per_img_1_min_word_freq";
    assert!(dir
        .path()
        .join(format!("checkpoint_{name}.safetensors"))
        .is_file());
    assert!(dir
        .path()
        .join(format!("BEST_checkpoint_{name}.safetensors"))
        .is_file());
    let log = std::fs::read_to_string(dir.path().join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    for line in log.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(record["train_loss"].as_f64().unwrap().is_finite(), "{line}");
    }
    // A missing split is a clear error naming the file, before any training.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["train", "--quiet", "--data-folder"])
        .arg(&fixture)
        .args(["--data-name", "nothing_here", "--out"])
        .arg(dir.path())
        .arg("--random-encoder")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("nothing_here"), "{stderr}");
}

fn h5py_fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h5py/prepared")
}

/// `gaze train` with only the data (a random ResNet-101 by default) stops at once, before it
/// reads or caches anything, and names the ways out.
#[test]
fn the_binary_refuses_an_encoder_nobody_chose_to_make_random() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["train", "--quiet", "--data-folder"])
        .arg(h5py_fixture())
        .args(["--data-name", "tiny_5_cap_per_img_1_min_word_freq", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for option in [
        "resnet101 would start from random weights",
        "--encoder-weights resnet101.pth",
        "torchvision.models.resnet101(weights='IMAGENET1K_V1')",
        "--encoder efficientnet-lite0",
        "--random-encoder",
        "random_encoder = true",
    ] {
        assert!(stderr.contains(option), "no {option:?} in: {stderr}");
    }
    assert!(!stderr.contains("float16's range"), "{stderr}");
    // Nothing was started: training creates the output folder first thing.
    assert!(!out_dir.exists(), "gaze train wrote {}", out_dir.display());
    assert!(seconds < 10.0, "took {seconds:.1} s to refuse");
    // The data are not even read: a missing data set gives the same refusal.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["train", "--quiet", "--data-folder"])
        .arg(dir.path().join("no_such_folder"))
        .args(["--data-name", "x", "--encoder", "resnet18", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("resnet18 would start from random weights"),
        "{stderr}"
    );
}

/// `--random-encoder`: the random ResNet-101 starts with zeroed residual branches, so its
/// features fit the float16 cache and training runs (without it the cache refuses them).
#[test]
fn the_binary_trains_a_random_resnet101_when_asked_to() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["train", "--quiet", "--random-encoder", "--data-folder"])
        .arg(h5py_fixture())
        .args(["--data-name", "tiny_5_cap_per_img_1_min_word_freq", "--out"])
        .arg(dir.path())
        .args(["--encoder", "resnet101", "--feature-cache", "memory"])
        .args(["--encoded-image-size", "2", "--emb-dim", "16"])
        .args(["--attention-dim", "16", "--decoder-dim", "24"])
        .args(["--batch-size", "8", "--epochs", "1", "--seed", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gaze train failed: {stderr}");
    assert!(!stderr.contains("float16"), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    let record: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(record["train_loss"].as_f64().unwrap().is_finite(), "{log}");
}

/// The same random ResNet-101 through the library without `random_encoder`: plain random
/// weights, whose features the float16 cache refuses (why `gaze train` asks first).
#[test]
fn a_plain_random_resnet101_overflows_the_float16_cache() {
    let data = gaze::train::TrainData::from_prepared(
        &h5py_fixture(),
        "tiny_5_cap_per_img_1_min_word_freq",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        encoder: "resnet101".into(),
        epochs: 1,
        ..config()
    };
    let e = train(&cfg, &data, &options(dir.path()), &mut log_only())
        .err()
        .unwrap();
    assert!(e.to_string().contains("outside float16's range"), "{e}");
}

#[test]
fn encoder_start_follows_the_settings_and_refuses_unchosen_random_weights() {
    let base = TrainConfig::default();
    let start = |cfg: &TrainConfig, checkpoint: Option<&Path>| encoder_start(cfg, checkpoint);
    match start(&base, None) {
        Err(TrainError::RandomEncoder { encoder }) => assert_eq!(encoder, "resnet101"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let random = TrainConfig {
        random_encoder: true,
        ..base.clone()
    };
    assert_eq!(start(&random, None).unwrap(), EncoderStart::Random);
    let weights = TrainConfig {
        encoder_weights: Some("resnet101.pth".into()),
        ..base.clone()
    };
    assert_eq!(
        start(&weights, None).unwrap(),
        EncoderStart::File("resnet101.pth".into())
    );
    let lite = TrainConfig {
        encoder: "efficientnet-lite0".into(),
        ..base.clone()
    };
    assert_eq!(start(&lite, None).unwrap(), EncoderStart::BuiltIn);
    // A checkpoint carries its encoder, whatever else is set.
    let ckpt = Path::new("runs/checkpoint_x.safetensors");
    assert_eq!(
        start(&base, Some(ckpt)).unwrap(),
        EncoderStart::Checkpoint(ckpt.into())
    );
    assert_eq!(
        start(&random, Some(ckpt)).unwrap(),
        EncoderStart::Checkpoint(ckpt.into())
    );
    // Contradictions and unknown names are errors naming the settings.
    let both = TrainConfig {
        random_encoder: true,
        ..weights.clone()
    };
    let e = start(&both, None).unwrap_err().to_string();
    assert!(
        e.contains("random_encoder") && e.contains("resnet101.pth"),
        "{e}"
    );
    let lite_random = TrainConfig {
        random_encoder: true,
        ..lite
    };
    let e = start(&lite_random, None).unwrap_err().to_string();
    assert!(e.contains("built-in ImageNet weights"), "{e}");
    let unknown = TrainConfig {
        encoder: "resnet7".into(),
        ..random
    };
    let e = start(&unknown, None).unwrap_err().to_string();
    assert!(e.contains("unknown encoder \"resnet7\""), "{e}");
    // The config file key.
    let from_file =
        TrainConfig::from_toml("random_encoder = true\nencoder = \"resnet18\"\n").unwrap();
    assert_eq!(start(&from_file, None).unwrap(), EncoderStart::Random);
}

/// Self-critical training continues a cross-entropy run as a new stage: it starts afresh
/// (epoch 0, its own best score), logs its rewards, keeps the best model by CIDEr-D, raises
/// the training reward, and resumes exactly.
#[test]
fn self_critical_training_continues_a_cross_entropy_run_and_resumes_exactly() {
    let data = data();
    let ce_dir = tempfile::tempdir().unwrap();
    let ce = train(&config(), &data, &options(ce_dir.path()), &mut log_only()).unwrap();
    let scst = TrainConfig {
        scst: true,
        scst_samples: 4,
        epochs: 4,
        decoder_lr: 2e-3,
        ..config()
    };
    let straight = tempfile::tempdir().unwrap();
    let mut opts = options(straight.path());
    opts.checkpoint = Some(ce.checkpoint.clone());
    let out = train(&scst, &data, &opts, &mut log_only()).unwrap();
    assert_eq!(out.stop, StopReason::Epochs);
    assert_eq!(out.history.len(), 4);
    assert_eq!(out.history[0].epoch, 0, "a new stage starts at epoch 0");
    // Batches of 8 images over 16 training images: 2 per epoch.
    assert_eq!(out.state.decoder_steps.values().max(), Some(&8));
    let stats: Vec<_> = out
        .history
        .iter()
        .map(|r| r.scst.clone().unwrap())
        .collect();
    for (r, s) in out.history.iter().zip(&stats) {
        assert_eq!(s.samples, 16 * 4);
        assert!(s.mean_reward >= 0.0 && s.beat_baseline > 0.0 && s.beat_baseline < 1.0);
        assert!(s.mean_entropy > 0.0);
        assert!(r.best_bleu4.is_none() && r.best_cider_d.is_some());
    }
    assert!(
        stats[3].mean_reward > stats[0].mean_reward,
        "reward {} -> {}",
        stats[0].mean_reward,
        stats[3].mean_reward
    );
    let best = out
        .history
        .iter()
        .map(|r| r.val.cider_d)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(
        out.state.best_score, best,
        "the best model is chosen by CIDEr-D"
    );
    let log = std::fs::read_to_string(straight.path().join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first["scst"]["mean_reward"].is_f64(), "{first}");
    assert!(first["best_cider_d"].is_f64() && first.get("best_bleu4").is_none());

    // Interrupted after one batch and resumed: the same weights as the straight run.
    let split_run = tempfile::tempdir().unwrap();
    let mut opts = options(split_run.path());
    opts.checkpoint = Some(ce.checkpoint.clone());
    opts.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let cut = train(&scst, &data, &opts, &mut log_only()).unwrap();
    assert_eq!(cut.stop, StopReason::Interrupted);
    assert_eq!((cut.state.epoch, cut.state.batch), (0, 1));
    let mut opts = options(split_run.path());
    opts.checkpoint = Some(cut.checkpoint.clone());
    train(&scst, &data, &opts, &mut log_only()).unwrap();
    assert_same_tensors(
        &straight.path().join("checkpoint_squares.safetensors"),
        &split_run.path().join("checkpoint_squares.safetensors"),
    );
}

#[test]
fn self_critical_settings_that_cannot_work_are_refused() {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let one_sample = TrainConfig {
        scst: true,
        scst_samples: 1,
        ..config()
    };
    let e = train(&one_sample, &data, &options(dir.path()), &mut log_only())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("--scst-samples"), "{e}");
    // The greedy baseline works with one sample.
    let greedy = TrainConfig {
        scst_baseline: gaze::train::scst::ScstBaseline::Greedy,
        epochs: 1,
        ..one_sample
    };
    let out = train(&greedy, &data, &options(dir.path()), &mut log_only()).unwrap();
    let s = out.history[0].scst.clone().unwrap();
    assert_eq!(s.samples, 16);
}
