//! The daemon's decode path: decode (pixel limit before allocation, EXIF orientation), resize
//! to 256x256 RGB, lay out CHW, normalise. No panic may escape the decoder here (the daemon
//! catches them, the fuzzer reports them). JPEG goes through libjpeg's C decoder, whose fatal
//! errors unwind to `decode_bytes` and come back as errors.
#![no_main]

use std::path::Path;

use gaze::data::image::{self as img, DecodeOptions, TUTORIAL_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small enough that a valid input cannot legitimately need gigabytes.
    let opts = DecodeOptions {
        max_pixels: 4_000_000,
        ..DecodeOptions::default()
    };
    if let Ok(image) = img::decode_bytes(data, Path::new("fuzz.img"), &opts) {
        let chw = img::rgb_to_chw(&img::to_rgb_resized(&image, TUTORIAL_SIZE));
        let mut pixels = vec![0f32; chw.len()];
        img::normalize_chw(&chw, &mut pixels);
    }
});
