//! Drawing scenes: each image's own random streams, keyed by (seed, split, index), and the
//! sampling of objects, their places and the background from them.

use super::scene::{Axis, Background, Colour, Layout, Scene, SceneObject, Shape, Size, Texture};
use crate::data::karpathy::Split;
use crate::rng::{mix64, SplitMix64};

/// What a random stream is used for; each purpose of each image has its own stream.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purpose {
    Scene = 1,
    Captions = 2,
}

fn split_salt(split: Split) -> u64 {
    match split {
        Split::Train => 0x7472_6169_6E00_0001,
        Split::Val => 0x7661_6C00_0000_0002,
        Split::Test => 0x7465_7374_0000_0003,
    }
}

pub(super) fn stream(seed: u64, split: Split, index: usize, purpose: Purpose) -> SplitMix64 {
    let key = mix64(mix64(mix64(seed) ^ split_salt(split)) ^ index as u64);
    SplitMix64::new(mix64(key ^ purpose as u64))
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Kind {
    shape: Shape,
    colour: Colour,
    size: Size,
    diameter: f64,
}

fn sample_kind(rng: &mut SplitMix64) -> Kind {
    let shape = rng.pick(&Shape::ALL);
    let colour = rng.pick(&Colour::ALL);
    let size = if rng.chance(0.5) {
        Size::Small
    } else {
        Size::Large
    };
    let (lo, hi) = size.diameter_range();
    Kind {
        shape,
        colour,
        size,
        diameter: rng.uniform(lo, hi),
    }
}

/// `n` kinds that differ pairwise in shape or colour, so captions can tell them apart.
fn distinct_kinds(rng: &mut SplitMix64, n: usize) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::with_capacity(n);
    while kinds.len() < n {
        let k = sample_kind(rng);
        if kinds
            .iter()
            .all(|o| (o.shape, o.colour) != (k.shape, k.colour))
        {
            kinds.push(k);
        }
    }
    kinds
}

/// Jitter of a centre around its cell centre, as a fraction of the image side.
const SINGLE_JITTER: f64 = 0.06;
const LINE_JITTER: f64 = 0.035;
/// Least clear space between two objects' bounding circles, and between a shape and the border.
const MIN_GAP: f64 = 0.012;
const BORDER: f64 = 0.005;
const MAX_ROTATION: f64 = 0.15;

pub(super) fn cell_centre(cell: (usize, usize)) -> (f64, f64) {
    ((cell.1 as f64 + 0.5) / 3.0, (cell.0 as f64 + 0.5) / 3.0)
}

/// Places objects around their cell centres, or gives up when they do not fit apart (two large
/// objects in neighbouring cells can be too big for the cells' spacing).
fn place(
    kinds: &[Kind],
    cells: &[(usize, usize)],
    jitter: f64,
    rng: &mut SplitMix64,
) -> Option<Vec<SceneObject>> {
    // Random tries first, then the cell centres themselves.
    for attempt in 0..=32 {
        let jitter = if attempt == 32 { 0.0 } else { jitter };
        let objects: Vec<SceneObject> = kinds
            .iter()
            .zip(cells)
            .map(|(k, &cell)| {
                let (cx, cy) = cell_centre(cell);
                let reach = k.diameter / 2.0 * k.shape.reach();
                let (lo, hi) = (reach + BORDER, 1.0 - reach - BORDER);
                let x = (cx + rng.uniform(-jitter, jitter)).clamp(lo, hi);
                let y = (cy + rng.uniform(-jitter, jitter)).clamp(lo, hi);
                let tint = [0, 0, 0].map(|_: i8| rng.uniform(-10.0, 10.0).round() as i8);
                SceneObject {
                    shape: k.shape,
                    colour: k.colour,
                    size: k.size,
                    cell,
                    centre: (x, y),
                    diameter: k.diameter,
                    rotation: rng.uniform(-MAX_ROTATION, MAX_ROTATION),
                    tint,
                }
            })
            .collect();
        if objects_apart(&objects) {
            return Some(objects);
        }
    }
    None
}

fn objects_apart(objects: &[SceneObject]) -> bool {
    objects.iter().enumerate().all(|(i, a)| {
        objects[i + 1..].iter().all(|b| {
            let (dx, dy) = (a.centre.0 - b.centre.0, a.centre.1 - b.centre.1);
            (dx * dx + dy * dy).sqrt() >= a.reach() + b.reach() + MIN_GAP
        })
    })
}

/// Cells of `n` objects along a random row or column, in order along it.
fn line_cells(rng: &mut SplitMix64, n: usize) -> (Axis, Vec<(usize, usize)>) {
    let axis = if rng.chance(0.5) {
        Axis::Horizontal
    } else {
        Axis::Vertical
    };
    let across = rng.scaled_below(3);
    let along: Vec<usize> = match n {
        2 => rng.pick(&[[0, 1], [0, 2], [1, 2]]).to_vec(),
        _ => vec![0, 1, 2],
    };
    let cells = along
        .into_iter()
        .map(|a| match axis {
            Axis::Horizontal => (across, a),
            Axis::Vertical => (a, across),
        })
        .collect();
    (axis, cells)
}

/// Draws a scene: 30% one object, 40% two, 30% three. Of pairs, 30% are two identical objects;
/// of triples, 25% are three identical, 35% two identical and one other, 40% all different.
pub fn sample_scene(rng: &mut SplitMix64) -> Scene {
    loop {
        let background = sample_background(rng);
        let roll = rng.next_f64();
        let (layout, kinds, cells, jitter) = if roll < 0.3 {
            let kind = sample_kind(rng);
            let cell = (rng.scaled_below(3), rng.scaled_below(3));
            (Layout::Single, vec![kind], vec![cell], SINGLE_JITTER)
        } else if roll < 0.7 {
            let kinds = if rng.chance(0.3) {
                let k = sample_kind(rng);
                vec![k, k]
            } else {
                distinct_kinds(rng, 2)
            };
            let (axis, cells) = line_cells(rng, 2);
            (Layout::Line(axis), kinds, cells, LINE_JITTER)
        } else {
            let mix = rng.next_f64();
            let kinds = if mix < 0.25 {
                let k = sample_kind(rng);
                vec![k, k, k]
            } else if mix < 0.6 {
                let pair = distinct_kinds(rng, 2);
                let mut kinds = vec![pair[0], pair[0], pair[0]];
                kinds[rng.scaled_below(3)] = pair[1];
                kinds
            } else {
                distinct_kinds(rng, 3)
            };
            let (axis, cells) = line_cells(rng, 3);
            (Layout::Line(axis), kinds, cells, LINE_JITTER)
        };
        // A scene whose objects cannot fit apart is drawn again from scratch.
        if let Some(objects) = place(&kinds, &cells, jitter, rng) {
            return Scene {
                layout,
                objects,
                background,
            };
        }
    }
}

fn hsv_to_rgb(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h = (h - h.floor()) * 6.0;
    let sector = h.floor();
    let f = h - sector;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Muted colours (low saturation, middle brightness) so every object colour, white and black
/// included, stands out; the two colours differ only a little.
fn sample_background(rng: &mut SplitMix64) -> Background {
    let hue = rng.next_f64();
    let value = rng.uniform(0.36, 0.62);
    let colour_a = hsv_to_rgb(hue, rng.uniform(0.06, 0.28), value);
    let shift = rng.uniform(0.07, 0.16) * if value > 0.5 { -1.0 } else { 1.0 };
    let colour_b = hsv_to_rgb(
        hue + rng.uniform(-0.08, 0.08),
        rng.uniform(0.06, 0.28),
        value + shift,
    );
    let angle = rng.pick(&[0.0, 0.25, 0.5, 0.75]) * std::f64::consts::PI + rng.uniform(-0.2, 0.2);
    let texture = match rng.scaled_below(6) {
        0 => Texture::Noise {
            cells: rng.uniform(3.0, 7.0),
            octaves: 3,
        },
        1 => Texture::Stripes {
            angle,
            count: rng.uniform(6.0, 14.0),
            sharp: rng.chance(0.5),
        },
        2 => Texture::Checks {
            angle,
            count: rng.uniform(5.0, 12.0),
        },
        3 => Texture::Gradient {
            angle: rng.uniform(0.0, 2.0 * std::f64::consts::PI),
        },
        4 => Texture::Radial {
            cx: rng.next_f64(),
            cy: rng.next_f64(),
        },
        _ => Texture::Grain,
    };
    let grain = if texture == Texture::Grain {
        rng.uniform(0.04, 0.07)
    } else {
        rng.uniform(0.01, 0.03)
    };
    Background {
        texture,
        colour_a,
        colour_b,
        grain,
        noise_seed: rng.next_u64(),
    }
}
