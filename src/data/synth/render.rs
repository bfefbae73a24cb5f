//! Rendering: a scene's background texture and anti-aliased shapes, in IEEE-exact arithmetic
//! so that the pixels are the same on every platform.

use image::{Rgb, RgbImage};

use super::scene::{Scene, SceneObject, Shape, Texture, SQUARE_HALF_SIDE};
use crate::rng::mix64;

/// Sine and cosine from a Taylor series: plain arithmetic, so the same bits on every platform
/// (the platform's `sin` may differ in the last place, which would change pixels).
pub(super) fn sin_cos(angle: f64) -> (f64, f64) {
    let two_pi = 2.0 * std::f64::consts::PI;
    let a = angle - two_pi * (angle / two_pi).round();
    let (mut sin, mut cos) = (0.0, 0.0);
    let mut term = 1.0; // a^n / n!
    for n in 0..30 {
        match n % 4 {
            0 => cos += term,
            1 => sin += term,
            2 => cos -= term,
            _ => sin -= term,
        }
        term *= a / (n + 1) as f64;
    }
    (sin, cos)
}

/// A pseudo-random value in [0, 1) for integer coordinates.
fn hash_unit(seed: u64, x: i64, y: i64) -> f64 {
    let h = mix64(seed ^ mix64((x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (y as u64)));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn smoothstep(t: f64) -> f64 {
    t * t * (3.0 - 2.0 * t)
}

/// Bilinearly interpolated lattice noise, smooth, in [0, 1).
fn value_noise(seed: u64, x: f64, y: f64) -> f64 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (smoothstep(x - x0), smoothstep(y - y0));
    let (ix, iy) = (x0 as i64, y0 as i64);
    let v00 = hash_unit(seed, ix, iy);
    let v10 = hash_unit(seed, ix + 1, iy);
    let v01 = hash_unit(seed, ix, iy + 1);
    let v11 = hash_unit(seed, ix + 1, iy + 1);
    let top = v00 + (v10 - v00) * fx;
    let bottom = v01 + (v11 - v01) * fx;
    top + (bottom - top) * fy
}

/// The texture's blend factor in [0, 1] at (x, y), fractions of the side.
fn texture_at(texture: &Texture, seed: u64, x: f64, y: f64, dir: (f64, f64)) -> f64 {
    let (sin, cos) = dir;
    match *texture {
        Texture::Noise { cells, octaves } => {
            let (mut sum, mut weight, mut amp, mut freq) = (0.0, 0.0, 1.0, cells);
            for octave in 0..octaves {
                sum += amp * value_noise(seed.wrapping_add(octave as u64), x * freq, y * freq);
                weight += amp;
                amp *= 0.5;
                freq *= 2.0;
            }
            sum / weight
        }
        Texture::Stripes { count, sharp, .. } => {
            let phase = (x * cos + y * sin) * count;
            let frac = phase - phase.floor();
            if sharp {
                if frac < 0.5 {
                    0.0
                } else {
                    1.0
                }
            } else {
                smoothstep((2.0 * frac - 1.0).abs())
            }
        }
        Texture::Checks { count, .. } => {
            let u = ((x * cos + y * sin) * count).floor() as i64;
            let v = ((y * cos - x * sin) * count).floor() as i64;
            ((u + v) & 1) as f64
        }
        Texture::Gradient { .. } => ((x - 0.5) * cos + (y - 0.5) * sin + 0.5).clamp(0.0, 1.0),
        Texture::Radial { cx, cy } => {
            let (dx, dy) = (x - cx, y - cy);
            ((dx * dx + dy * dy).sqrt() / 0.9).min(1.0)
        }
        Texture::Grain => 0.5,
    }
}

/// Inside-tests in the shape's own frame: unit bounding circle, y downwards.
enum Outline {
    Circle,
    Ring,
    Square,
    Diamond,
    Cross,
    Polygon(Vec<(f64, f64)>),
}

impl Outline {
    fn of(shape: Shape) -> Outline {
        // Polygon corners on circles around the centre, the first pointing up.
        let star_or_triangle = |corners: usize, radii: &[f64]| {
            (0..corners)
                .map(|k| {
                    let angle = -std::f64::consts::FRAC_PI_2
                        + 2.0 * std::f64::consts::PI * k as f64 / corners as f64;
                    let (sin, cos) = sin_cos(angle);
                    let r = radii[k % radii.len()];
                    (r * cos, r * sin)
                })
                .collect()
        };
        match shape {
            Shape::Circle => Outline::Circle,
            Shape::Ring => Outline::Ring,
            Shape::Square => Outline::Square,
            Shape::Diamond => Outline::Diamond,
            Shape::Cross => Outline::Cross,
            Shape::Triangle => Outline::Polygon(star_or_triangle(3, &[1.0])),
            Shape::Star => Outline::Polygon(star_or_triangle(10, &[1.0, 0.5])),
        }
    }

    fn contains(&self, u: f64, v: f64) -> bool {
        match self {
            Outline::Circle => u * u + v * v <= 1.0,
            Outline::Ring => {
                let r2 = u * u + v * v;
                (0.3..=1.0).contains(&r2)
            }
            Outline::Square => u.abs() <= SQUARE_HALF_SIDE && v.abs() <= SQUARE_HALF_SIDE,
            Outline::Diamond => u.abs() + v.abs() <= 1.0,
            Outline::Cross => {
                let (au, av) = (u.abs(), v.abs());
                (au <= 0.3 && av <= 0.95) || (av <= 0.3 && au <= 0.95)
            }
            Outline::Polygon(corners) => {
                // Even-odd crossing test.
                let mut inside = false;
                let mut j = corners.len() - 1;
                for (i, &(xi, yi)) in corners.iter().enumerate() {
                    let (xj, yj) = corners[j];
                    if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }
}

/// Subsamples per pixel side for anti-aliased edges.
const SUPERSAMPLE: u32 = 4;

/// Draws the scene at `size` x `size` pixels.
pub fn render(scene: &Scene, size: u32) -> RgbImage {
    let side = size as f64;
    let bg = &scene.background;
    let dir = match bg.texture {
        Texture::Stripes { angle, .. }
        | Texture::Checks { angle, .. }
        | Texture::Gradient { angle } => sin_cos(angle),
        _ => (0.0, 1.0),
    };
    let mut pixels: Vec<[f64; 3]> = Vec::with_capacity((size * size) as usize);
    for py in 0..size {
        for px in 0..size {
            let (x, y) = ((px as f64 + 0.5) / side, (py as f64 + 0.5) / side);
            let t = texture_at(&bg.texture, bg.noise_seed, x, y, dir);
            let grain = bg.grain * (2.0 * hash_unit(!bg.noise_seed, px as i64, py as i64) - 1.0);
            pixels.push(
                [0, 1, 2].map(|c| bg.colour_a[c] + (bg.colour_b[c] - bg.colour_a[c]) * t + grain),
            );
        }
    }
    for object in &scene.objects {
        draw_object(&mut pixels, size, object);
    }
    let mut image = RgbImage::new(size, size);
    for (pixel, value) in image.pixels_mut().zip(&pixels) {
        *pixel = Rgb(value.map(|c| (c * 255.0).round().clamp(0.0, 255.0) as u8));
    }
    image
}

fn draw_object(pixels: &mut [[f64; 3]], size: u32, object: &SceneObject) {
    let side = size as f64;
    let outline = Outline::of(object.shape);
    let (sin, cos) = sin_cos(object.rotation);
    let radius = object.diameter / 2.0 * side;
    let reach = object.reach() * side;
    let (cx, cy) = (object.centre.0 * side, object.centre.1 * side);
    let colour = [0, 1, 2]
        .map(|c| (object.colour.rgb()[c] as f64 + object.tint[c] as f64).clamp(0.0, 255.0) / 255.0);
    let lo = |c: f64| ((c - reach).floor().max(0.0)) as u32;
    let hi = |c: f64| ((c + reach).ceil().min(side)) as u32;
    let n = SUPERSAMPLE;
    for py in lo(cy)..hi(cy) {
        for px in lo(cx)..hi(cx) {
            let mut hits = 0u32;
            for sy in 0..n {
                for sx in 0..n {
                    let dx = (px as f64 + (sx as f64 + 0.5) / n as f64 - cx) / radius;
                    let dy = (py as f64 + (sy as f64 + 0.5) / n as f64 - cy) / radius;
                    // Turn the sample back by the object's rotation into the shape's own frame.
                    let (u, v) = (dx * cos + dy * sin, dy * cos - dx * sin);
                    hits += outline.contains(u, v) as u32;
                }
            }
            if hits > 0 {
                let alpha = hits as f64 / (n * n) as f64;
                let p = &mut pixels[(py * size + px) as usize];
                for c in 0..3 {
                    p[c] += (colour[c] - p[c]) * alpha;
                }
            }
        }
    }
}
