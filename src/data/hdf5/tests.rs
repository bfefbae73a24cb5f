use std::path::Path;

use super::*;

fn image(seed: u8) -> Vec<u8> {
    (0..IMAGE_BYTES)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8)
        .collect()
}

fn write(path: &Path, images: &[Vec<u8>], cpi: u32) {
    let mut w = ImagesWriter::create(path, cpi).unwrap();
    for img in images {
        w.push(img).unwrap();
    }
    assert_eq!(w.finish().unwrap(), images.len() as u64);
}

#[test]
fn roundtrip_reads_back_every_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("TRAIN_IMAGES_x.hdf5");
    let images: Vec<Vec<u8>> = (0..3).map(image).collect();
    write(&path, &images, 5);
    let f = ImagesFile::open(&path).unwrap();
    assert_eq!(f.len(), 3);
    assert_eq!(f.captions_per_image(), 5);
    for (i, img) in images.iter().enumerate() {
        assert_eq!(&f.read_image(i).unwrap(), img);
    }
    let mut two = vec![0u8; 2 * IMAGE_BYTES];
    f.read_images_into(1, &mut two).unwrap();
    assert_eq!(&two[..IMAGE_BYTES], &images[1][..]);
    assert_eq!(&two[IMAGE_BYTES..], &images[2][..]);
    let err = f.read_image(3).unwrap_err().to_string();
    assert!(
        err.contains("TRAIN_IMAGES_x.hdf5") && err.contains("out of range"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        2048 + 3 * IMAGE_BYTES as u64
    );
}

#[test]
fn empty_dataset_roundtrips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("VAL_IMAGES_x.hdf5");
    write(&path, &[], 3);
    let f = ImagesFile::open(&path).unwrap();
    assert!(f.is_empty());
    assert_eq!(f.captions_per_image(), 3);
}

#[test]
fn an_unfinished_file_is_not_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.hdf5");
    let mut w = ImagesWriter::create(&path, 5).unwrap();
    w.push(&image(1)).unwrap();
    drop(w);
    let err = ImagesFile::open(&path).unwrap_err();
    assert!(matches!(err, Hdf5Error::NotHdf5 { .. }), "{err}");
    assert!(err.to_string().contains("partial.hdf5"));
}

#[test]
fn truncated_files_are_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("TEST_IMAGES_t.hdf5");
    write(&path, &[image(1), image(2)], 5);
    let full = std::fs::read(&path).unwrap();
    for cut in [full.len() - 1, 2048 + IMAGE_BYTES, 2048, 1000, 300, 50, 5] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = ImagesFile::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("TEST_IMAGES_t.hdf5"), "cut {cut}: {msg}");
        assert!(
            matches!(err, Hdf5Error::Truncated { .. } | Hdf5Error::NotHdf5 { .. }),
            "cut {cut}: {msg}"
        );
    }
    std::fs::write(&path, b"").unwrap();
    let msg = ImagesFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn corrupt_metadata_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.hdf5");
    write(&path, &[image(1)], 5);
    let good = std::fs::read(&path).unwrap();
    // Flip every metadata byte in turn: each must give a result or an error, never a panic.
    let mut errors = 0;
    for i in 8..2048 {
        let mut bad = good.clone();
        bad[i] ^= 0x5a;
        std::fs::write(&path, &bad).unwrap();
        if let Err(e) = ImagesFile::open(&path) {
            assert!(e.to_string().contains("c.hdf5"), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 100, "only {errors} corruptions detected");

    // Specific corruptions give specific messages.
    let mut bad = good.clone();
    bad[1] = 0; // the signature
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        ImagesFile::open(&path).unwrap_err(),
        Hdf5Error::NotHdf5 { .. }
    ));
}

#[test]
fn wrong_shape_and_attribute_are_content_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.hdf5");
    let mut w = ImagesWriter::with_item_shape(&path, 5, [3, 8, 8]).unwrap();
    w.push(&[0u8; 192]).unwrap();
    w.finish().unwrap();
    let err = ImagesFile::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("shape.hdf5") && err.contains("(1, 3, 8, 8)"),
        "{err}"
    );

    let path = dir.path().join("cpi.hdf5");
    let w = ImagesWriter::with_item_shape(&path, 0, IMAGE_SHAPE).unwrap();
    w.finish().unwrap();
    let err = ImagesFile::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("cpi.hdf5") && err.contains("captions_per_image") && err.contains("positive"),
        "{err}"
    );
}

/// Found by the `hdf5` fuzz target: a uint dataset whose datatype claims 0xfffe0001 bytes per
/// element. Its bit count overflowed u32 while the error was being worded (a panic with
/// overflow checks, a wrong "uint4293918728" without).
#[test]
fn a_huge_element_size_is_reported_as_it_is() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/hdf5_dtype_size_overflow.hdf5");
    let err = ImagesFile::open(&path).unwrap_err();
    assert!(matches!(err, Hdf5Error::Content { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("hdf5_dtype_size_overflow.hdf5")
            && text.contains("has type uint34358689800, expected uint8"),
        "{text}"
    );
}

#[test]
fn dtype_names_do_not_overflow() {
    let dtype = |class, signed| read::Dtype {
        class,
        is_integer: class == 0,
        size: u32::MAX,
        signed,
        big_endian: false,
    };
    assert_eq!(dtype(0, true).to_string(), "int34359738360");
    assert_eq!(dtype(0, false).to_string(), "uint34359738360");
    assert_eq!(dtype(1, false).to_string(), "float34359738360");
    assert_eq!(dtype(3, false).to_string(), "a string of 4294967295 bytes");
}
