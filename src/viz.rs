//! Attention pictures, in the manner of the tutorial's `visualize_att`: a grid of panels, five
//! per row, one per word of the caption (the first is `<start>`, drawn without overlay); each
//! panel is the image with that word's attention map upsampled, smoothed (Gaussian, as
//! `pyramid_expand(upscale=24, sigma=8)` at a 14x14 grid), min-max scaled, drawn in grey
//! and blended at 0.8 over the image, with the word written above it.
//!
//! Pictures come from a fresh caption ([`attention_picture`]) or from attention weights stored
//! with a caption ([`stored_picture`]), drawn over the image file as it is now: the file may
//! have changed, gone or become unreadable since, and [`Backdrop`] says which.
//!
//! The font (DejaVu Sans, Bitstream Vera license, `assets/fonts/`) is built into the binary.

use std::path::Path;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{imageops, DynamicImage, Rgb, RgbImage};

use crate::data::image::{decode_bytes, DecodeOptions};
use crate::data::WordMap;
use crate::files::{self, DEFAULT_MAX_FILE_BYTES};
use crate::model::Caption;

static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

#[derive(Debug, Clone)]
pub struct PictureOptions {
    /// Side of each image panel in pixels (the tutorial's 14 * 24 = 336).
    pub panel: u32,
    pub columns: u32,
    /// Gaussian smoothing of the upsampled map (off: plain bilinear upsampling).
    pub smooth: bool,
    /// Panels after the first `max_words` are left out (the tutorial stops at 50).
    pub max_words: usize,
}

impl Default for PictureOptions {
    fn default() -> Self {
        PictureOptions {
            panel: 336,
            columns: 5,
            smooth: true,
            max_words: 51,
        }
    }
}

const TEXT_BAND: u32 = 30;
const GAP: u32 = 6;
const OVERLAY_OPACITY: f32 = 0.8;

/// The attention picture of a caption produced by a model with `word_map`.
pub fn attention_picture(image: &DynamicImage, caption: &Caption, word_map: &WordMap) -> RgbImage {
    let words: Vec<String> = caption
        .tokens
        .iter()
        .map(|&t| word_map.word(t).unwrap_or("<unk>").to_string())
        .collect();
    render(
        &image.to_rgb8(),
        &words,
        &caption.alphas,
        caption.grid,
        &PictureOptions::default(),
    )
}

/// What a picture of stored attention was drawn over, when it is not the file as captioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackdropNote {
    /// The file is gone; the maps are drawn over a grey panel.
    Gone,
    /// The file cannot be read (the reason, without the path); a grey panel.
    Unreadable(String),
    /// The file's hash differs from the stored one; drawn over the file as it is now.
    Changed,
    /// The file does not decode (the error, naming the file); a grey panel.
    Undecodable(String),
}

impl BackdropNote {
    /// The note for people; `shown` is the file's name as the caller shows it.
    pub fn message(&self, shown: &str) -> String {
        const GREY: &str = "drawing the attention maps over a plain grey image";
        match self {
            BackdropNote::Gone => {
                format!("{shown} is gone (deleted or moved since it was captioned); {GREY}")
            }
            BackdropNote::Unreadable(why) => format!("{shown} cannot be read ({why}); {GREY}"),
            BackdropNote::Changed => format!(
                "{shown} has changed since it was captioned; drawing over the file as it is now"
            ),
            BackdropNote::Undecodable(error) => format!("{error}; {GREY}"),
        }
    }
}

/// The image under the maps of a stored caption, and what went wrong finding it.
#[derive(Debug, Clone)]
pub struct Backdrop {
    pub image: RgbImage,
    /// Empty when the file is drawn as it was captioned.
    pub notes: Vec<BackdropNote>,
}

impl Backdrop {
    /// The file as it is now (read as a user-named file is), checked against the BLAKE3 hash
    /// stored with the caption ([`files::content_hash`]); a grey panel when it is gone,
    /// unreadable or undecodable.
    pub fn load(image_file: &Path, stored_hash: Option<&str>) -> Backdrop {
        let grey = |note| Backdrop {
            image: RgbImage::from_pixel(256, 256, Rgb([128, 128, 128])),
            notes: vec![note],
        };
        let bytes = match files::read_limited(image_file, DEFAULT_MAX_FILE_BYTES, true, None) {
            Ok((bytes, _)) => bytes,
            Err(e) if e.is_not_found() => return grey(BackdropNote::Gone),
            Err(e) => return grey(BackdropNote::Unreadable(e.reason())),
        };
        let mut notes = Vec::new();
        if let Some(stored) = stored_hash {
            // A file that cannot be hashed now cannot be shown to be the one captioned.
            if files::content_hash(image_file).ok().as_deref() != Some(stored) {
                notes.push(BackdropNote::Changed);
            }
        }
        match decode_bytes(&bytes, image_file, &DecodeOptions::default()) {
            Ok(img) => Backdrop {
                image: img.to_rgb8(),
                notes,
            },
            Err(e) => {
                let mut backdrop = grey(BackdropNote::Undecodable(e.to_string()));
                notes.append(&mut backdrop.notes);
                backdrop.notes = notes;
                backdrop
            }
        }
    }
}

/// The picture of stored attention (`words` with `<start>` first, one `grid * grid` map per
/// later word) over the image file as it is now; see [`Backdrop::load`].
pub fn stored_picture(
    image_file: &Path,
    stored_hash: Option<&str>,
    words: &[String],
    alphas: &[Vec<f32>],
    grid: usize,
) -> (RgbImage, Vec<BackdropNote>) {
    let backdrop = Backdrop::load(image_file, stored_hash);
    let picture = render(
        &backdrop.image,
        words,
        alphas,
        grid,
        &PictureOptions::default(),
    );
    (picture, backdrop.notes)
}

/// Draws the picture from words (`<start>` first) and one `grid * grid` attention map per word
/// after the first. Missing maps leave their panels without overlay.
pub fn render(
    image: &RgbImage,
    words: &[String],
    alphas: &[Vec<f32>],
    grid: usize,
    opts: &PictureOptions,
) -> RgbImage {
    let map = |t: usize| match t {
        0 => None,
        _ => alphas.get(t - 1).map(Vec::as_slice),
    };
    panels(image, words, map, grid, opts)
}

/// One word's panel: the word above the image with that word's `grid * grid` map over it.
pub fn word_panel(
    image: &RgbImage,
    word: &str,
    alpha: &[f32],
    grid: usize,
    opts: &PictureOptions,
) -> RgbImage {
    panels(image, &[word.to_string()], |_| Some(alpha), grid, opts)
}

/// A grid of panels, each a word over the image with `map(t)` (the t-th panel's map, if any)
/// over it.
fn panels<'a>(
    image: &RgbImage,
    words: &[String],
    map: impl Fn(usize) -> Option<&'a [f32]>,
    grid: usize,
    opts: &PictureOptions,
) -> RgbImage {
    let n = words.len().clamp(1, opts.max_words.max(1));
    let cols = opts.columns.max(1).min(n as u32);
    let rows = (n as u32).div_ceil(cols);
    let cell_w = opts.panel + GAP;
    let cell_h = opts.panel + TEXT_BAND + GAP;
    let mut out = RgbImage::from_pixel(
        cols * cell_w + GAP,
        rows * cell_h + GAP,
        Rgb([255, 255, 255]),
    );
    let base = imageops::resize(
        image,
        opts.panel,
        opts.panel,
        imageops::FilterType::Lanczos3,
    );
    let font = FontRef::try_from_slice(FONT_BYTES).expect("the built-in font parses");
    for (t, word) in words.iter().take(n).enumerate() {
        let x0 = GAP + (t as u32 % cols) * cell_w;
        let y0 = GAP + (t as u32 / cols) * cell_h;
        draw_text(&mut out, &font, word, x0 + 2, y0 + 4, 20.0);
        let panel = match map(t) {
            None => base.clone(),
            Some(alpha) => overlay(&base, &upsample(alpha, grid, opts.panel, opts.smooth)),
        };
        imageops::replace(&mut out, &panel, x0 as i64, (y0 + TEXT_BAND) as i64);
    }
    out
}

/// Blends a grey map (values in [0, 1] after min-max scaling) over the image.
fn overlay(base: &RgbImage, map: &[f32]) -> RgbImage {
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let range = if hi > lo { hi - lo } else { 1.0 };
    let mut out = base.clone();
    for (px, &v) in out.pixels_mut().zip(map) {
        let grey = ((v - lo) / range * 255.0).clamp(0.0, 255.0);
        for c in px.0.iter_mut() {
            *c = ((1.0 - OVERLAY_OPACITY) * *c as f32 + OVERLAY_OPACITY * grey).round() as u8;
        }
    }
    out
}

/// A `grid x grid` map to `size x size`: bilinear (pixel-centre aligned), then optionally a
/// Gaussian blur with sigma = size / (3 * grid) (8 pixels for the tutorial's 14 -> 336).
fn upsample(alpha: &[f32], grid: usize, size: u32, smooth: bool) -> Vec<f32> {
    let size = size as usize;
    let mut out = vec![0f32; size * size];
    if grid == 0 || alpha.len() < grid * grid {
        return out;
    }
    let scale = grid as f32 / size as f32;
    let coord = |i: usize| -> (usize, usize, f32) {
        let p = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (grid - 1) as f32);
        let a = p.floor() as usize;
        let b = (a + 1).min(grid - 1);
        (a, b, p - a as f32)
    };
    for y in 0..size {
        let (y0, y1, fy) = coord(y);
        for x in 0..size {
            let (x0, x1, fx) = coord(x);
            let top = alpha[y0 * grid + x0] * (1.0 - fx) + alpha[y0 * grid + x1] * fx;
            let bottom = alpha[y1 * grid + x0] * (1.0 - fx) + alpha[y1 * grid + x1] * fx;
            out[y * size + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    if smooth {
        gaussian_blur(&mut out, size, size as f32 / (3.0 * grid as f32));
    }
    out
}

/// Separable Gaussian blur with edge clamping.
fn gaussian_blur(data: &mut [f32], size: usize, sigma: f32) {
    if sigma < 0.5 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    let clamp = |i: isize| i.clamp(0, size as isize - 1) as usize;
    let mut tmp = vec![0f32; data.len()];
    for y in 0..size {
        for x in 0..size {
            tmp[y * size + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * data[y * size + clamp(x as isize + k as isize - radius)])
                .sum();
        }
    }
    for y in 0..size {
        for x in 0..size {
            data[y * size + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * tmp[clamp(y as isize + k as isize - radius) * size + x])
                .sum();
        }
    }
}

/// Black text on a white box at (x, y) (top-left of the line).
fn draw_text(img: &mut RgbImage, font: &FontRef, text: &str, x: u32, y: u32, px: f32) {
    let scaled = font.as_scaled(PxScale::from(px));
    let mut caret = x as f32 + 3.0;
    let baseline = y as f32 + scaled.ascent();
    let mut glyphs = Vec::new();
    let mut last = None;
    for ch in text.chars() {
        let id = font.glyph_id(ch);
        if let Some(prev) = last {
            caret += scaled.kern(prev, id);
        }
        glyphs
            .push(id.with_scale_and_position(PxScale::from(px), ab_glyph::point(caret, baseline)));
        caret += scaled.h_advance(id);
        last = Some(id);
    }
    let box_w = (caret - x as f32 + 3.0).ceil() as u32;
    let box_h = (scaled.ascent() - scaled.descent()).ceil() as u32 + 2;
    for by in y..(y + box_h).min(img.height()) {
        for bx in x..(x + box_w).min(img.width()) {
            img.put_pixel(bx, by, Rgb([255, 255, 255]));
        }
    }
    for g in glyphs {
        if let Some(outline) = font.outline_glyph(g) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let px = bounds.min.x as i64 + gx as i64;
                let py = bounds.min.y as i64 + gy as i64;
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    let p = img.get_pixel_mut(px as u32, py as u32);
                    for c in p.0.iter_mut() {
                        *c = (*c as f32 * (1.0 - coverage)).round() as u8;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_layout_and_overlay() {
        let img = RgbImage::from_pixel(40, 30, Rgb([0, 0, 200]));
        let words: Vec<String> = ["<start>", "a", "red", "ball", "on", "grass", "<end>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let grid = 2;
        // Each map puts all weight on one cell.
        let alphas: Vec<Vec<f32>> = (0..6)
            .map(|t| {
                let mut a = vec![0.0; 4];
                a[t % 4] = 1.0;
                a
            })
            .collect();
        let opts = PictureOptions {
            panel: 60,
            columns: 5,
            smooth: true,
            max_words: 51,
        };
        let pic = render(&img, &words, &alphas, grid, &opts);
        assert_eq!(pic.width(), 5 * (60 + GAP) + GAP);
        assert_eq!(pic.height(), 2 * (60 + TEXT_BAND + GAP) + GAP);
        // Panel 0 (<start>) is the plain image; panel 1 is bright where its map peaks (top-left).
        let p0 = pic.get_pixel(GAP + 30, GAP + TEXT_BAND + 30);
        assert_eq!(p0.0, [0, 0, 200]);
        let x1 = GAP + (60 + GAP);
        let bright = pic.get_pixel(x1 + 5, GAP + TEXT_BAND + 5).0[0];
        let dark = pic.get_pixel(x1 + 55, GAP + TEXT_BAND + 55).0[0];
        assert!(bright > 150 && dark < 60, "bright {bright}, dark {dark}");
        // Some text pixels are dark in the first text band.
        let dark_text =
            (GAP..GAP + 60).any(|x| (GAP..GAP + TEXT_BAND).any(|y| pic.get_pixel(x, y).0[0] < 100));
        assert!(dark_text);
    }

    #[test]
    fn stored_pictures_say_what_they_are_drawn_over() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        RgbImage::from_pixel(20, 10, Rgb([0, 200, 0]))
            .save(&file)
            .unwrap();
        let hash = files::content_hash(&file).unwrap();
        let words: Vec<String> = ["<start>", "a", "<end>"].map(String::from).to_vec();
        let alphas = vec![vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0, 1.0]];

        let (picture, notes) = stored_picture(&file, Some(&hash), &words, &alphas, 2);
        assert!(notes.is_empty(), "{notes:?}");
        let panel = PictureOptions::default().panel;
        assert_eq!(picture.width(), 3 * (panel + GAP) + GAP);
        // The <start> panel is the image itself.
        assert_eq!(
            picture.get_pixel(GAP + 10, GAP + TEXT_BAND + 10).0,
            [0, 200, 0]
        );

        let backdrop = Backdrop::load(&file, Some("0000"));
        assert_eq!(backdrop.notes, vec![BackdropNote::Changed]);
        assert_eq!(backdrop.image.dimensions(), (20, 10));
        assert!(Backdrop::load(&file, None).notes.is_empty());

        let gone = Backdrop::load(&dir.path().join("gone.png"), Some(&hash));
        assert_eq!(gone.notes, vec![BackdropNote::Gone]);
        assert_eq!(gone.image.get_pixel(5, 5).0, [128, 128, 128]);
        assert!(gone.notes[0].message("x.png").starts_with("x.png is gone"));

        let garbage = dir.path().join("b.png");
        std::fs::write(&garbage, b"not an image").unwrap();
        let bad = Backdrop::load(&garbage, Some(&hash));
        assert!(
            matches!(
                bad.notes[..],
                [BackdropNote::Changed, BackdropNote::Undecodable(_)]
            ),
            "{:?}",
            bad.notes
        );
        assert_eq!(bad.image.dimensions(), (256, 256));
        let unreadable = Backdrop::load(dir.path(), None);
        assert!(
            matches!(unreadable.notes[..], [BackdropNote::Unreadable(_)]),
            "{:?}",
            unreadable.notes
        );
    }

    #[test]
    fn upsampling_keeps_a_uniform_map_uniform() {
        let up = upsample(&[0.25; 4], 2, 16, true);
        assert!(up.iter().all(|v| (v - 0.25).abs() < 1e-5));
    }
}
