//! The tutorial's prepared files: reading what h5py wrote, `prepare` against the tutorial's
//! procedure, error reporting for damaged files, image formats, and the training loader.
//! Fixtures and the Python scripts that made them are under tests/fixtures/.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gaze::data::hdf5::{Hdf5Error, ImagesFile, IMAGE_BYTES};
use gaze::data::image::{decode_file, normalize_chw, to_rgb_resized, DecodeOptions};
use gaze::data::karpathy::Split;
use gaze::data::prepare::{prepare, NoProgress, PrepareConfig};
use gaze::data::{DataError, PreparedFiles, PreparedSplit};
use loader::{Loader, LoaderConfig, Sampling};
use serde_json::Value;

#[path = "data_files/loader.rs"]
mod loader;

const BASE: &str = "tiny_5_cap_per_img_1_min_word_freq";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn h5py_dir() -> PathBuf {
    fixtures().join("h5py")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(h5py_dir().join("expected.json")).unwrap()).unwrap()
}

fn check_images_match(file: &ImagesFile, want: &Value) {
    assert_eq!(file.len() as u64, want["count"].as_u64().unwrap());
    assert_eq!(
        file.captions_per_image() as u64,
        want["captions_per_image"].as_u64().unwrap()
    );
    for i in 0..file.len() {
        let img = file.read_image(i).unwrap();
        let sum: u64 = img.iter().map(|&b| b as u64).sum();
        assert_eq!(
            sum,
            want["sums"][i].as_u64().unwrap(),
            "image {i} of {}",
            file.path().display()
        );
        let px = |c: usize, y: usize, x: usize| img[c * 65536 + y * 256 + x] as u64;
        let got = [px(0, 0, 0), px(1, 100, 200), px(2, 255, 255)];
        let want_px: Vec<u64> = want["pixels"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got.to_vec(), want_px);
    }
}

fn tiny_config(output: &Path) -> PrepareConfig {
    let source = h5py_dir().join("source");
    let mut cfg = PrepareConfig::new(
        "tiny",
        &source.join("dataset_tiny.json"),
        &source.join("images"),
        output,
    );
    cfg.min_word_freq = 1;
    cfg.max_len = 8;
    cfg.threads = 2;
    cfg
}

#[test]
fn reads_files_written_by_h5py() {
    let want = expected();
    let dir = h5py_dir().join("prepared");
    for split in Split::ALL {
        let prepared = PreparedSplit::open(&dir, BASE, split).unwrap();
        check_images_match(prepared.images(), &want[split.file_tag()]);
        assert_eq!(prepared.caption_count(), prepared.image_count() * 5);
        assert_eq!(prepared.padded_len(), 10);
    }
    let test = PreparedSplit::open(&dir, BASE, Split::Test).unwrap();
    let refs = test.reference_captions(0);
    let want_refs: Vec<Vec<String>> =
        serde_json::from_value(want["test_references"].clone()).unwrap();
    assert_eq!(refs, want_refs);
    assert_eq!(test.reference_ids(0)[3].len(), 3);

    // libver="latest": superblock 3, version 2 object headers, link messages, int32 attribute.
    let latest = ImagesFile::open(&h5py_dir().join("variants/latest.hdf5")).unwrap();
    check_images_match(&latest, &want["latest"]);
}

#[test]
fn files_h5py_wrote_in_other_layouts_are_refused_by_name() {
    let variants = h5py_dir().join("variants");
    let cases = [
        ("wrong_dtype.hdf5", "int16"),
        ("wrong_shape.hdf5", "(2, 3, 8, 8)"),
        ("missing_attr.hdf5", "captions_per_image"),
        ("chunked.hdf5", "chunked"),
        ("no_images.hdf5", "no dataset named \"images\""),
    ];
    for (name, needle) in cases {
        let err = ImagesFile::open(&variants.join(name))
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    let err = ImagesFile::open(&variants.join("absent.hdf5"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.hdf5"), "{err}");
}

#[test]
fn damaged_h5py_files_give_truncated_or_corrupt_errors() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(h5py_dir().join("variants/latest.hdf5")).unwrap();
    let path = dir.path().join("latest.hdf5");
    for cut in [original.len() - 10, 4096, 700, 100, 20] {
        std::fs::write(&path, &original[..cut]).unwrap();
        let err = ImagesFile::open(&path).unwrap_err();
        assert!(
            matches!(err, Hdf5Error::Truncated { .. } | Hdf5Error::NotHdf5 { .. }),
            "cut {cut}: {err}"
        );
        assert!(err.to_string().contains("latest.hdf5"));
    }
    // A flipped byte inside a checksummed object header is caught by its checksum.
    let mut bad = original.clone();
    bad[60] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let err = ImagesFile::open(&path).unwrap_err();
    assert!(matches!(err, Hdf5Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn prepare_writes_what_the_tutorial_writes() {
    let out = tempfile::tempdir().unwrap();
    let cfg = tiny_config(out.path());
    let report = prepare(&cfg, &NoProgress).unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(report.images_without_captions, 1);
    assert_eq!(report.images_written(), 6);
    let reference = PreparedFiles::new(h5py_dir().join("prepared"), BASE);
    let ours = PreparedFiles::new(out.path(), BASE);
    // Word map, captions and lengths: byte-identical to the tutorial's (same seed, same draws).
    let mut json = vec![(ours.word_map(), reference.word_map())];
    for split in Split::ALL {
        json.push((ours.captions(split), reference.captions(split)));
        json.push((ours.caplens(split), reference.caplens(split)));
    }
    for (a, b) in json {
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{} differs",
            a.display()
        );
    }
    // Images: same shape and attribute; pixels within resampling differences of PIL's.
    for split in Split::ALL {
        let a = ImagesFile::open(&ours.images(split)).unwrap();
        let b = ImagesFile::open(&reference.images(split)).unwrap();
        assert_eq!(
            (a.len(), a.captions_per_image()),
            (b.len(), b.captions_per_image())
        );
        for i in 0..a.len() {
            let (x, y) = (a.read_image(i).unwrap(), b.read_image(i).unwrap());
            let mean = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (*p as i32 - *q as i32).abs() as f64)
                .sum::<f64>()
                / x.len() as f64;
            assert!(mean < 1.5, "{split} image {i}: mean difference {mean}");
        }
        PreparedSplit::open(out.path(), BASE, split).unwrap();
    }
    let names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 10, "{names:?}");

    // Existing outputs are kept unless overwriting is asked for.
    let err = prepare(&cfg, &NoProgress).unwrap_err();
    assert!(matches!(err, DataError::Exists { .. }), "{err}");
    let mut again = cfg.clone();
    again.overwrite = true;
    again.threads = 1;
    prepare(&again, &NoProgress).unwrap();
    assert_eq!(
        std::fs::read(ours.captions(Split::Train)).unwrap(),
        std::fs::read(reference.captions(Split::Train)).unwrap()
    );
}

#[test]
fn prepare_skips_unreadable_images_and_keeps_the_others_captions() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for entry in std::fs::read_dir(h5py_dir().join("source/images")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), images.join(entry.file_name())).unwrap();
    }
    // b.jpg (the second TRAIN image) is damaged, g.png (the TEST image) is missing.
    let b = std::fs::read(images.join("b.jpg")).unwrap();
    std::fs::write(images.join("b.jpg"), &b[..b.len() / 3]).unwrap();
    std::fs::remove_file(images.join("g.png")).unwrap();
    let out = work.path().join("out");
    let mut cfg = tiny_config(&out);
    cfg.image_folder = images.clone();
    let report = prepare(&cfg, &NoProgress).unwrap();
    let skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|s| (s.split, s.path.file_name().unwrap().to_owned()))
        .collect();
    assert_eq!(
        skipped,
        [
            (Split::Train, "b.jpg".into()),
            (Split::Test, "g.png".into())
        ]
    );
    assert!(report
        .skipped
        .iter()
        .all(|s| s.reason.contains(s.path.to_str().unwrap())));

    // The other images keep the captions the tutorial would give them.
    let reference = PreparedSplit::open(&h5py_dir().join("prepared"), BASE, Split::Train).unwrap();
    let ours = PreparedSplit::open(&out, BASE, Split::Train).unwrap();
    assert_eq!(ours.image_count(), 3);
    for (our_image, ref_image) in [(0, 0), (1, 2), (2, 3)] {
        for (a, b) in ours
            .captions_of_image(our_image)
            .zip(reference.captions_of_image(ref_image))
        {
            assert_eq!(ours.caption(a), reference.caption(b));
            assert_eq!(ours.caption_len(a), reference.caption_len(b));
        }
    }
    let test = PreparedSplit::open(&out, BASE, Split::Test).unwrap();
    assert_eq!((test.image_count(), test.caption_count()), (0, 0));
    assert!(!std::fs::read_dir(&out).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
}

#[test]
fn inconsistent_prepared_sets_are_reported_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = PreparedFiles::new(h5py_dir().join("prepared"), BASE);
    let copy = PreparedFiles::new(dir.path(), BASE);
    for (from, to) in source.all().iter().zip(copy.all()) {
        std::fs::copy(from, to).unwrap();
    }
    let open = || PreparedSplit::open(dir.path(), BASE, Split::Val).map(|_| ());
    open().unwrap();
    let captions = std::fs::read_to_string(source.captions(Split::Val)).unwrap();
    let caplens = std::fs::read_to_string(source.caplens(Split::Val)).unwrap();
    let cases: Vec<(PathBuf, String, &str)> = vec![
        (
            copy.caplens(Split::Val),
            caplens.replacen('[', "[11, ", 1),
            "has 6 lengths",
        ),
        (
            copy.caplens(Split::Val),
            caplens.replacen(|c: char| c.is_ascii_digit(), "9", 1),
            "<end>",
        ),
        (
            copy.caplens(Split::Val),
            caplens.replacen(|c: char| c.is_ascii_digit(), "1", 1),
            "outside 2..=10",
        ),
        (
            copy.captions(Split::Val),
            captions.replacen("[24, ", "[99, ", 1),
            "outside the word map",
        ),
        (
            copy.captions(Split::Val),
            captions.replacen("[24, ", "[25, ", 1),
            "not <start>",
        ),
        (
            copy.captions(Split::Val),
            captions.replacen(", 0]", ", 3]", 1),
            "not all <pad>",
        ),
        (
            copy.captions(Split::Val),
            captions.replacen("[[", "[[24, 25, 0, 0, 0, 0, 0, 0, 0, 0], [", 1),
            "has 6 captions",
        ),
        (
            copy.captions(Split::Val),
            captions[..captions.len() - 9].to_string(),
            "invalid JSON",
        ),
    ];
    for (path, content, needle) in cases {
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, content).unwrap();
        let err = open().unwrap_err().to_string();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(name) && err.contains(needle),
            "want {needle:?} about {name}: {err}"
        );
        std::fs::write(&path, original).unwrap();
    }
    std::fs::write(copy.images(Split::Val), b"not hdf5 at all").unwrap();
    let err = open().unwrap_err().to_string();
    assert!(
        err.contains("VAL_IMAGES_") && err.contains("not an HDF5 file"),
        "{err}"
    );
}

#[test]
fn decodes_every_supported_image_kind() {
    let dir = fixtures().join("images");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let (w, h) = (
        expected["width"].as_u64().unwrap() as u32,
        expected["height"].as_u64().unwrap() as u32,
    );
    let images = expected["images"].as_object().unwrap();
    assert!(images.len() >= 20);
    for (name, colours) in images {
        let img = decode_file(&dir.join(name), &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (img.width(), img.height()),
            (w, h),
            "{name}: orientation or size"
        );
        let rgb = img.to_rgb8();
        for (half, x) in [(0, w / 4), (1, 3 * w / 4)] {
            let got = rgb.get_pixel(x, h / 2).0;
            let want: Vec<i32> = colours[half]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let off = got
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as i32 - w).abs())
                .max()
                .unwrap();
            assert!(
                off <= 40,
                "{name}: pixel ({x}, {}) is {got:?}, expected about {want:?}",
                h / 2
            );
        }
        let resized = to_rgb_resized(&img, 256);
        assert_eq!(resized.dimensions(), (256, 256));
    }
}

fn train_split() -> Arc<PreparedSplit> {
    Arc::new(PreparedSplit::open(&h5py_dir().join("prepared"), BASE, Split::Train).unwrap())
}

#[test]
fn loader_batches_are_deterministic_and_complete() {
    let split = train_split();
    let run = |workers: usize, epoch: u64| {
        let mut config = LoaderConfig::training(6, 42);
        config.workers = workers;
        config.prefetch = 2;
        let loader = Loader::new(Arc::clone(&split), config);
        assert_eq!(loader.batch_count(), 4);
        loader.epoch(epoch).map(|b| b.unwrap()).collect::<Vec<_>>()
    };
    let one = run(1, 0);
    let three = run(3, 0);
    let ids = |batches: &[loader::Batch]| {
        batches
            .iter()
            .flat_map(|b| b.caption_indices.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&one), ids(&three), "order must not depend on threads");
    assert_ne!(
        ids(&one),
        ids(&run(2, 1)),
        "epochs are shuffled differently"
    );
    let mut all = ids(&one);
    assert_ne!(all, (0..20).collect::<Vec<_>>());
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
    assert_eq!(
        one.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [6, 6, 6, 2]
    );

    let batch = &three[1];
    assert_eq!(batch.images.dims(), [6, 3, 256, 256]);
    assert_eq!(batch.captions.dims(), [6, 10]);
    assert!(batch.all_captions.is_none());
    let pixels = batch
        .images
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let captions = batch.captions.to_vec2::<u32>().unwrap();
    for (slot, &c) in batch.caption_indices.iter().enumerate() {
        assert_eq!(batch.image_indices[slot], c / 5);
        assert_eq!(captions[slot], split.caption(c));
        assert_eq!(batch.lengths[slot], split.caption_len(c));
        let mut want = vec![0f32; IMAGE_BYTES];
        normalize_chw(&split.read_image(c / 5).unwrap(), &mut want);
        assert_eq!(
            &pixels[slot * IMAGE_BYTES..(slot + 1) * IMAGE_BYTES],
            &want[..]
        );
    }
}

#[test]
fn loader_iterates_images_in_order_with_all_captions() {
    let split = train_split();
    let mut config = LoaderConfig::per_image(3);
    config.workers = 2;
    let loader = Loader::new(Arc::clone(&split), config);
    assert_eq!(loader.config().sampling, Sampling::PerImage);
    let batches: Vec<_> = loader.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 2);
    let images: Vec<usize> = batches
        .iter()
        .flat_map(|b| b.image_indices.clone())
        .collect();
    assert_eq!(images, [0, 1, 2, 3]);
    let all = batches[1].all_captions.as_ref().unwrap();
    assert_eq!(all.dims(), [1, 5, 10]);
    let rows = all.squeeze(0).unwrap().to_vec2::<u32>().unwrap();
    for (row, c) in rows.iter().zip(split.captions_of_image(3)) {
        assert_eq!(row, split.caption(c));
    }
    // Dropping an epoch part-way stops its workers.
    let mut epoch = loader.epoch(1);
    assert!(epoch.next().unwrap().is_ok());
    drop(epoch);
}
