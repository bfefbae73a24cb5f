//! Image decoding and the tutorial's preprocessing.
//!
//! Decoding covers every format the `image` crate reads (JPEG incl. progressive, PNG incl.
//! 16-bit/alpha/palette, WebP, BMP, GIF's first frame, TIFF, ...), applies EXIF orientation and
//! refuses images whose pixel count exceeds a limit before allocating them (decompression bombs).
//! JPEG pixels come from libjpeg-turbo's arithmetic (the `mozjpeg` crate's C decoder: integer
//! inverse DCT, "fancy" chroma upsampling), the same bytes Pillow's decoder gives, so captions
//! match those of a PyTorch pipeline that read the file with PIL; the `image` crate's own JPEG
//! decoder rounds differently (a level or so on about 1% of values), which flips near-tied
//! words of a weak model (BENCHMARKS.md). CMYK JPEGs still go through the `image` crate.
//!
//! Preprocessing is the tutorial's: RGB (grayscale copied to three channels, alpha dropped),
//! resize to 256x256, values / 255, normalised with ImageNet mean and std, laid out CHW.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::DataError;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The side length the tutorial resizes every image to.
pub const TUTORIAL_SIZE: u32 = 256;

#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Images with more pixels than this are refused before their pixels are allocated.
    pub max_pixels: u64,
    /// [`decode_file`] refuses files larger than this, reading at most this many bytes plus one.
    pub max_file_bytes: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        // 120 megapixels: larger than any camera image, smaller than a bomb.
        DecodeOptions {
            max_pixels: 120_000_000,
            max_file_bytes: crate::files::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Reads and decodes an image file. The file must be a regular file (links are followed: the
/// user named it) of at most `opts.max_file_bytes`; named pipes and devices are refused without
/// blocking ([`crate::files::read_limited`]).
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<DynamicImage, DataError> {
    let (bytes, _) = crate::files::read_limited(path, opts.max_file_bytes, true, None)?;
    decode_bytes(&bytes, path, opts)
}

/// Decodes an image held in memory; `path` is only used to name the image in errors.
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    opts: &DecodeOptions,
) -> Result<DynamicImage, DataError> {
    let fail = |reason: String| DataError::Image {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("the file is empty (0 bytes)".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    let reader_format = reader.format();
    match reader_format {
        None => return Err(fail("not a recognised image format".into())),
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            // The JPEG decoder pads missing data with grey instead of failing.
            return Err(fail(
                "the JPEG data is truncated (no end-of-image marker after the image data)".into(),
            ));
        }
        Some(_) => {}
    }
    let mut decoder = reader.into_decoder().map_err(|e| fail(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > opts.max_pixels {
        return Err(fail(format!(
            "{w}x{h} is {pixels} pixels, over the limit of {} (a possible decompression bomb)",
            opts.max_pixels
        )));
    }
    if pixels == 0 {
        return Err(fail(format!("the image is {w}x{h}")));
    }
    let orientation = decoder.orientation().ok();
    let libjpeg = match reader_format {
        Some(image::ImageFormat::Jpeg) => decode_jpeg_libjpeg(bytes).map_err(fail)?,
        _ => None,
    };
    let mut img = match libjpeg {
        Some(img) => img,
        None => DynamicImage::from_decoder(decoder).map_err(|e| fail(e.to_string()))?,
    };
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// A JPEG's pixels as libjpeg-turbo decodes them (RGB, or grey for greyscale files); `None`
/// for colour spaces it does not convert to RGB (CMYK, YCCK), which the caller decodes with the
/// `image` crate. libjpeg's fatal errors unwind out of the decoder and are caught here.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<Option<DynamicImage>, String> {
    use mozjpeg::ColorSpace;
    let decode = || -> std::io::Result<Option<DynamicImage>> {
        let jpeg = mozjpeg::Decompress::new_mem(bytes)?;
        let (w, h) = (jpeg.width() as u32, jpeg.height() as u32);
        let image = match jpeg.color_space() {
            ColorSpace::JCS_GRAYSCALE => {
                let mut jpeg = jpeg.grayscale()?;
                let pixels: Vec<u8> = jpeg.read_scanlines()?;
                jpeg.finish()?;
                image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
            }
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => return Ok(None),
            _ => {
                let mut jpeg = jpeg.rgb()?;
                let pixels: Vec<[u8; 3]> = jpeg.read_scanlines()?;
                jpeg.finish()?;
                RgbImage::from_raw(w, h, pixels.into_flattened()).map(DynamicImage::ImageRgb8)
            }
        };
        image.map(Some).ok_or_else(|| {
            std::io::Error::other(format!("the decoder gave too few rows for {w}x{h}"))
        })
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(e)) => Err(format!("the JPEG data is corrupt: {e}")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the decoder stopped");
            Err(format!("the JPEG data is corrupt: {message}"))
        }
    }
}

/// True when a JPEG stream has an end-of-image marker after the start of its image data.
/// Marker segments before the first scan (EXIF thumbnails among them) are skipped by length,
/// so an embedded thumbnail's end marker does not count; inside scan data 0xFF is always
/// followed by 0x00 or a restart marker, so 0xFF 0xD9 there is the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    let scan_start = loop {
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        match (bytes.get(i), bytes.get(i + 1)) {
            (Some(0xFF), Some(0xDA)) => break i,
            (Some(0xFF), Some(_)) => match bytes.get(i + 2..i + 4) {
                Some(len) => i += 2 + u16::from_be_bytes([len[0], len[1]]) as usize,
                None => return false,
            },
            // Not a marker where one should be: leave the judgement to the decoder.
            _ => return true,
        }
    };
    bytes[scan_start..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// RGB at `size`x`size` (bilinear with antialiasing, as PIL's resize).
pub fn to_rgb_resized(img: &DynamicImage, size: u32) -> RgbImage {
    let rgb = img.to_rgb8();
    if rgb.width() == size && rgb.height() == size {
        return rgb;
    }
    image::imageops::resize(&rgb, size, size, image::imageops::FilterType::Triangle)
}

/// Interleaved RGB to planar CHW bytes.
pub fn rgb_to_chw(img: &RgbImage) -> Vec<u8> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
    out
}

/// CHW bytes to normalised CHW floats: `(x / 255 - mean[c]) / std[c]`.
pub fn normalize_chw(chw: &[u8], out: &mut [f32]) {
    assert_eq!(chw.len(), out.len());
    assert_eq!(chw.len() % 3, 0);
    let plane = chw.len() / 3;
    for c in 0..3 {
        let (mean, std) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
        let src = &chw[c * plane..(c + 1) * plane];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s as f32 / 255.0 - mean) / std;
        }
    }
}

/// Decode, resize and normalise one image file: the tutorial's preprocessing end to end.
/// Returns CHW floats of length `3 * size * size` and the original (oriented) width and height.
pub fn load_normalized(
    path: &Path,
    size: u32,
    opts: &DecodeOptions,
) -> Result<(Vec<f32>, u32, u32), DataError> {
    let img = decode_file(path, opts)?;
    let (w, h) = (img.width(), img.height());
    let chw = rgb_to_chw(&to_rgb_resized(&img, size));
    let mut out = vec![0f32; chw.len()];
    normalize_chw(&chw, &mut out);
    Ok((out, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG whose headers the `image` crate accepts but libjpeg refuses (a component names a
    /// quantisation table the file never defines): a clear error naming the file, no panic.
    #[test]
    fn libjpeg_errors_are_clear_errors() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/libjpeg_420.jpg");
        let mut bytes = std::fs::read(&path).unwrap();
        let sof = bytes
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline SOF");
        // FFC0, length (2), precision, height (2), width (2), components, then per component
        // its id, sampling factors and quantisation table.
        bytes[sof + 12] = 3;
        let err = decode_bytes(
            &bytes,
            Path::new("bad_table.jpg"),
            &DecodeOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("bad_table.jpg") && err.contains("Quantization table 0x03"),
            "{err}"
        );
    }

    /// JPEG pixels are exactly the ones Pillow (libjpeg-turbo) decodes, for 4:2:0, 4:4:4,
    /// progressive 4:2:2 and greyscale files of odd sizes (tests/fixtures/images/
    /// make_libjpeg_fixtures.py wrote the files and Pillow's bytes).
    #[test]
    fn jpeg_pixels_match_libjpeg_turbo() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
        for name in [
            "libjpeg_420",
            "libjpeg_444",
            "libjpeg_progressive_422",
            "libjpeg_gray",
        ] {
            let path = dir.join(format!("{name}.jpg"));
            let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
            let got = decode_file(&path, &DecodeOptions::default()).unwrap();
            assert_eq!((got.width(), got.height()), (37, 29), "{name}");
            let got = got.to_rgb8().into_raw();
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ,
                0,
                "{name}: {differ} of {} bytes differ from Pillow's",
                want.len()
            );
            // What the `image` crate's own decoder would have given, for the record.
            let bytes = std::fs::read(&path).unwrap();
            let other = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
                .unwrap()
                .to_rgb8()
                .into_raw();
            let other_differ = other.iter().zip(&want).filter(|(a, b)| a != b).count();
            eprintln!("{name}: the image crate's decoder differs in {other_differ} bytes");
        }
    }

    #[test]
    fn chw_and_normalisation() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 255, 0])
            }
        });
        let chw = rgb_to_chw(&img);
        assert_eq!(chw, vec![255, 0, 0, 255, 0, 0]);
        let mut out = vec![0.0; 6];
        normalize_chw(&chw, &mut out);
        assert!((out[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((out[2] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
    }

    #[test]
    fn bad_bytes_name_the_file() {
        let p = Path::new("broken.jpg");
        let e = decode_bytes(b"", p, &DecodeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken.jpg") && e.contains("empty"), "{e}");
        let e = decode_bytes(b"definitely not an image", p, &DecodeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken.jpg"), "{e}");
    }

    #[test]
    fn truncated_jpegs_are_refused() {
        // Noisy enough that most of the file is scan data.
        let img = RgbImage::from_fn(200, 150, |x, y| {
            let n = (x * 7919 + y * 104_729) % 251;
            image::Rgb([n as u8, (x + n) as u8, (y * 3) as u8])
        });
        let mut bytes = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        let opts = DecodeOptions::default();
        assert!(decode_bytes(&bytes, Path::new("whole.jpg"), &opts).is_ok());
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"trailing bytes some writers leave");
        assert!(decode_bytes(&trailing, Path::new("trailing.jpg"), &opts).is_ok());
        for cut in [bytes.len() - 2, bytes.len() * 3 / 4] {
            let e = decode_bytes(&bytes[..cut], Path::new("cut.jpg"), &opts)
                .unwrap_err()
                .to_string();
            assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
        }
    }

    #[test]
    fn pixel_limit_refuses_large_images() {
        let img = RgbImage::new(100, 100);
        let mut bytes = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        let e = decode_bytes(
            &bytes,
            Path::new("big.png"),
            &DecodeOptions {
                max_pixels: 5000,
                ..DecodeOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("decompression bomb"), "{e}");
        assert!(decode_bytes(&bytes, Path::new("ok.png"), &DecodeOptions::default()).is_ok());
    }
}
