//! The tutorial's `{SPLIT}_IMAGES_*.hdf5` reader: the reader opens by path, so each input is
//! written to one reused tmpfs file, opened, and its first and last images are read.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gaze::data::hdf5::{ImagesFile, IMAGE_BYTES};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("gaze-fuzz-hdf5-{}.hdf5", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let Ok(file) = ImagesFile::open(path) else {
        return;
    };
    let n = file.len();
    let _ = file.captions_per_image();
    let _ = file.is_empty();
    let mut buf = vec![0u8; IMAGE_BYTES];
    for index in [0, n.saturating_sub(1), n] {
        let _ = file.read_image_into(index, &mut buf);
    }
    if n >= 2 {
        let mut two = vec![0u8; 2 * IMAGE_BYTES];
        let _ = file.read_images_into(n - 2, &mut two);
    }
});
