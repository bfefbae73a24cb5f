//! A captioned synthetic dataset: coloured shapes on textured backgrounds, five captions each.
//!
//! It exists so that tests, demos and benchmarks have a dataset that needs no download, is small
//! enough to train on a laptop CPU in minutes, and still needs attention to caption well: the
//! captions say which shapes of which colours and sizes are where, and how they are arranged
//! ("a small green star above a large yellow triangle", "a blue square between two red circles").
//!
//! Output is Karpathy's split JSON in the Flickr form (`dataset_synth.json`, no `filepath`) with
//! JPEG images under `images/`, so everything that reads Flickr8k reads this too.
//!
//! Guarantees:
//! - Deterministic: the same options give the same bytes on any machine and with any number of
//!   threads. Randomness comes from [`SceneRng`] over gaze's own SplitMix64 (so no crate update
//!   can change the stream); each image draws from its own streams keyed by (seed, split, index), so an
//!   image does not depend on the others, nor the validation and test sets on `--train`.
//!   Rendering uses only IEEE-exact arithmetic (no platform `sin`/`cos`), and the `image`
//!   crate's JPEG encoder works in integers.
//! - Captions are true: objects sit in a 3x3 grid of cells, one to a cell, never overlapping;
//!   two or three objects always share a row or a column, so "left of", "above", "between" and
//!   "from left to right" follow from the cell order with a wide margin; single objects are
//!   named by their cell ("in the top left corner"), their centre well inside it.
//! - Captions are learnable: a fixed vocabulary ([`VOCABULARY`]), three phrasings per kind of
//!   scene, each with and without size words; an image's five captions are five different
//!   variants of the same facts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rayon::prelude::*;

use super::karpathy::{KarpathyDataset, KarpathyImage, KarpathySentence, Split};
use super::DataError;
use crate::rng::{mix64, SplitMix64};

/// The JSON file written into the output folder.
pub const JSON_NAME: &str = "dataset_synth.json";
/// The folder, under the output folder, that holds the images.
pub const IMAGE_DIR: &str = "images";
/// The `dataset` value of the JSON.
pub const DATASET_NAME: &str = "synth";
/// Captions written per image.
pub const CAPTIONS_PER_IMAGE: usize = 5;
/// Smallest and largest image side accepted.
pub const MIN_SIZE: u32 = 32;
pub const MAX_SIZE: u32 = 4096;

/// Every word a caption can use.
#[rustfmt::skip]
pub const VOCABULARY: &[&str] = &[
    "a", "above", "an", "and", "are", "at", "below", "between", "black", "blue", "bottom", "by",
    "centre", "circle", "circles", "column", "corner", "cross", "crosses", "diamond", "diamonds",
    "each", "from", "green", "image", "in", "is", "large", "left", "next", "of", "on", "one",
    "orange", "other", "purple", "red", "right", "ring", "rings", "row", "side", "small", "square",
    "squares", "star", "stars", "the", "them", "there", "three", "to", "top", "triangle",
    "triangles", "two", "white", "with", "yellow",
];

// ---------------------------------------------------------------------------------------------
// Randomness

/// The synthetic scenes' sampling on top of [`crate::rng::SplitMix64`]. Its integer draws use a
/// multiply-shift (not the rejection sampling of `SplitMix64::below`), and the published
/// synthetic datasets are defined by exactly these draws, so they stay as they are.
#[derive(Debug, Clone)]
pub struct SceneRng(SplitMix64);

impl SceneRng {
    pub fn new(seed: u64) -> Self {
        SceneRng(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        self.0.uniform(lo, hi)
    }

    /// Uniform in 0..n (n > 0 and below 2^32; the bias is under 2^-32 * n).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0 && (n as u64) < (1 << 32));
        (((self.0.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// What a random stream is used for; each purpose of each image has its own stream.
#[derive(Debug, Clone, Copy)]
enum Purpose {
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

fn stream(seed: u64, split: Split, index: usize, purpose: Purpose) -> SceneRng {
    let key = mix64(mix64(mix64(seed) ^ split_salt(split)) ^ index as u64);
    SceneRng::new(mix64(key ^ purpose as u64))
}

// ---------------------------------------------------------------------------------------------
// Scenes

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
    Ring,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 7] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Cross,
        Shape::Ring,
        Shape::Diamond,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
            Shape::Diamond => "diamond",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Cross => "crosses",
            Shape::Ring => "rings",
            Shape::Diamond => "diamonds",
        }
    }

    /// How far the shape reaches from its centre, in units of its nominal radius (half the
    /// diameter); only the square's corners stick out.
    pub fn reach(self) -> f64 {
        match self {
            Shape::Square => SQUARE_HALF_SIDE * std::f64::consts::SQRT_2,
            _ => 1.0,
        }
    }
}

/// Half the side of a square of nominal radius 1: a little larger than the inscribed square, so
/// squares look about as big as the other shapes.
const SQUARE_HALF_SIDE: f64 = 0.74;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::White,
        Colour::Black,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The colour's nominal sRGB value; objects are drawn within a few levels of it.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [35, 80, 215],
            Colour::Yellow => [240, 215, 40],
            Colour::Purple => [135, 50, 175],
            Colour::Orange => [245, 135, 25],
            Colour::White => [245, 245, 245],
            Colour::Black => [20, 20, 20],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// Diameters of the shape's bounding circle, as fractions of the image side.
    fn diameter_range(self) -> (f64, f64) {
        match self {
            Size::Small => (0.19, 0.22),
            Size::Large => (0.29, 0.32),
        }
    }
}

/// Along which axis a line of two or three objects runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Objects share a row; they are listed left to right.
    Horizontal,
    /// Objects share a column; they are listed top to bottom.
    Vertical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One object, named by its cell.
    Single,
    /// Two or three objects in one row or column, in order along it.
    Line(Axis),
}

/// One shape in a scene. Coordinates are fractions of the image side, y downwards.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// The grid cell (row, column), each 0..3.
    pub cell: (usize, usize),
    /// Centre (x, y).
    pub centre: (f64, f64),
    /// Diameter of the circle that holds the whole shape.
    pub diameter: f64,
    /// Small tilt, radians.
    pub rotation: f64,
    /// Per-channel offset from the nominal colour, in 0..255 levels.
    pub tint: [i8; 3],
}

impl SceneObject {
    /// Same shape, colour and size: captions count such objects together.
    pub fn same_kind(&self, other: &SceneObject) -> bool {
        self.shape == other.shape && self.colour == other.colour && self.size == other.size
    }

    /// The radius of the circle around the centre that holds the whole shape.
    pub fn reach(&self) -> f64 {
        self.diameter / 2.0 * self.shape.reach()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Texture {
    /// Smooth value noise: `cells` lattice cells across the image at the coarsest of `octaves`.
    Noise { cells: f64, octaves: u32 },
    /// Parallel stripes, `count` periods across, at `angle` radians; hard or soft edges.
    Stripes { angle: f64, count: f64, sharp: bool },
    /// A checkerboard of `count` squares across, turned by `angle` radians.
    Checks { angle: f64, count: f64 },
    /// A linear ramp from one colour to the other in direction `angle`.
    Gradient { angle: f64 },
    /// A radial ramp around (cx, cy).
    Radial { cx: f64, cy: f64 },
    /// One colour with strong grain.
    Grain,
}

/// A muted two-colour texture behind the objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Background {
    pub texture: Texture,
    /// Linear blend endpoints, RGB in 0..1.
    pub colour_a: [f64; 3],
    pub colour_b: [f64; 3],
    /// Amplitude of per-pixel grain, in 0..1 units.
    pub grain: f64,
    /// Seeds the per-pixel hash noise.
    pub noise_seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub layout: Layout,
    /// In order along the line for [`Layout::Line`].
    pub objects: Vec<SceneObject>,
    pub background: Background,
}

/// Shape, colour, size and diameter: what identical objects share.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Kind {
    shape: Shape,
    colour: Colour,
    size: Size,
    diameter: f64,
}

fn sample_kind(rng: &mut SceneRng) -> Kind {
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
        diameter: rng.range(lo, hi),
    }
}

/// `n` kinds that differ pairwise in shape or colour, so captions can tell them apart.
fn distinct_kinds(rng: &mut SceneRng, n: usize) -> Vec<Kind> {
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

fn cell_centre(cell: (usize, usize)) -> (f64, f64) {
    ((cell.1 as f64 + 0.5) / 3.0, (cell.0 as f64 + 0.5) / 3.0)
}

/// Places objects around their cell centres, or gives up when they do not fit apart (two large
/// objects in neighbouring cells can be too big for the cells' spacing).
fn place(
    kinds: &[Kind],
    cells: &[(usize, usize)],
    jitter: f64,
    rng: &mut SceneRng,
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
                let x = (cx + rng.range(-jitter, jitter)).clamp(lo, hi);
                let y = (cy + rng.range(-jitter, jitter)).clamp(lo, hi);
                let tint = [0, 0, 0].map(|_: i8| rng.range(-10.0, 10.0).round() as i8);
                SceneObject {
                    shape: k.shape,
                    colour: k.colour,
                    size: k.size,
                    cell,
                    centre: (x, y),
                    diameter: k.diameter,
                    rotation: rng.range(-MAX_ROTATION, MAX_ROTATION),
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
fn line_cells(rng: &mut SceneRng, n: usize) -> (Axis, Vec<(usize, usize)>) {
    let axis = if rng.chance(0.5) {
        Axis::Horizontal
    } else {
        Axis::Vertical
    };
    let across = rng.below(3);
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
pub fn sample_scene(rng: &mut SceneRng) -> Scene {
    loop {
        let background = sample_background(rng);
        let roll = rng.unit();
        let (layout, kinds, cells, jitter) = if roll < 0.3 {
            let kind = sample_kind(rng);
            let cell = (rng.below(3), rng.below(3));
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
            let mix = rng.unit();
            let kinds = if mix < 0.25 {
                let k = sample_kind(rng);
                vec![k, k, k]
            } else if mix < 0.6 {
                let pair = distinct_kinds(rng, 2);
                let mut kinds = vec![pair[0], pair[0], pair[0]];
                kinds[rng.below(3)] = pair[1];
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

// ---------------------------------------------------------------------------------------------
// Captions

/// One caption: lower-case word tokens, and the sentence as a person would write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    pub tokens: Vec<String>,
    pub raw: String,
}

impl Caption {
    /// Words and "," marks; commas show in `raw` only.
    fn from_pieces(pieces: &[&str]) -> Caption {
        let tokens: Vec<String> = pieces
            .iter()
            .filter(|p| **p != ",")
            .map(|p| p.to_string())
            .collect();
        let mut raw = String::new();
        for piece in pieces {
            if !raw.is_empty() && *piece != "," {
                raw.push(' ');
            }
            raw.push_str(piece);
        }
        let mut chars = raw.chars();
        let mut sentence: String = chars
            .next()
            .map(|c| c.to_ascii_uppercase())
            .into_iter()
            .collect();
        sentence.extend(chars);
        sentence.push('.');
        Caption {
            tokens,
            raw: sentence,
        }
    }
}

/// What a scene shows, in the terms captions use.
enum Facts<'a> {
    Single(&'a SceneObject),
    Pair(&'a SceneObject, &'a SceneObject, Axis),
    Twins(&'a SceneObject, Axis),
    Triplets(&'a SceneObject, Axis),
    /// Two of a kind and one other, which stands at position `odd_at` (0..3) along the line.
    TwinsAndOne {
        twin: &'a SceneObject,
        odd: &'a SceneObject,
        odd_at: usize,
        axis: Axis,
    },
    Three([&'a SceneObject; 3], Axis),
}

fn facts(scene: &Scene) -> Facts<'_> {
    let o = &scene.objects;
    let axis = match scene.layout {
        Layout::Line(axis) => axis,
        Layout::Single => return Facts::Single(&o[0]),
    };
    match o.len() {
        2 if o[0].same_kind(&o[1]) => Facts::Twins(&o[0], axis),
        2 => Facts::Pair(&o[0], &o[1], axis),
        _ => {
            let (s01, s02, s12) = (
                o[0].same_kind(&o[1]),
                o[0].same_kind(&o[2]),
                o[1].same_kind(&o[2]),
            );
            match (s01, s02, s12) {
                (true, true, _) => Facts::Triplets(&o[0], axis),
                (true, false, _) => Facts::TwinsAndOne {
                    twin: &o[0],
                    odd: &o[2],
                    odd_at: 2,
                    axis,
                },
                (false, true, _) => Facts::TwinsAndOne {
                    twin: &o[0],
                    odd: &o[1],
                    odd_at: 1,
                    axis,
                },
                (false, false, true) => Facts::TwinsAndOne {
                    twin: &o[1],
                    odd: &o[0],
                    odd_at: 0,
                    axis,
                },
                (false, false, false) => Facts::Three([&o[0], &o[1], &o[2]], axis),
            }
        }
    }
}

/// "a [size] colour shape" ("an orange ...").
fn one(o: &SceneObject, sized: bool) -> Vec<&'static str> {
    let mut words = Vec::with_capacity(4);
    if sized {
        words.push(o.size.word());
    }
    words.extend([o.colour.word(), o.shape.word()]);
    let vowel = words[0].starts_with(['a', 'e', 'i', 'o', 'u']);
    words.insert(0, if vowel { "an" } else { "a" });
    words
}

/// "two|three [size] colour shapes".
fn many(count: &'static str, o: &SceneObject, sized: bool) -> Vec<&'static str> {
    let mut words = vec![count];
    if sized {
        words.push(o.size.word());
    }
    words.extend([o.colour.word(), o.shape.plural()]);
    words
}

fn region(cell: (usize, usize)) -> &'static [&'static str] {
    match cell {
        (0, 0) => &["in", "the", "top", "left", "corner"],
        (0, 1) => &["at", "the", "top"],
        (0, 2) => &["in", "the", "top", "right", "corner"],
        (1, 0) => &["on", "the", "left"],
        (1, 1) => &["in", "the", "centre"],
        (1, 2) => &["on", "the", "right"],
        (2, 0) => &["in", "the", "bottom", "left", "corner"],
        (2, 1) => &["at", "the", "bottom"],
        _ => &["in", "the", "bottom", "right", "corner"],
    }
}

/// Words for "first comes before second along the axis", read forwards or backwards.
fn before(axis: Axis) -> &'static [&'static str] {
    match axis {
        Axis::Horizontal => &["to", "the", "left", "of"],
        Axis::Vertical => &["above"],
    }
}

fn after(axis: Axis) -> &'static [&'static str] {
    match axis {
        Axis::Horizontal => &["to", "the", "right", "of"],
        Axis::Vertical => &["below"],
    }
}

fn in_order(axis: Axis) -> &'static [&'static str] {
    match axis {
        Axis::Horizontal => &["from", "left", "to", "right"],
        Axis::Vertical => &["from", "top", "to", "bottom"],
    }
}

fn cat(parts: &[&[&'static str]]) -> Vec<&'static str> {
    parts.concat()
}

/// Every caption the scene can have: three phrasings, each without and with size words.
pub fn caption_variants(scene: &Scene) -> Vec<Caption> {
    let facts = facts(scene);
    let mut variants = Vec::with_capacity(6);
    for sized in [false, true] {
        let phrasings: [Vec<&'static str>; 3] = match &facts {
            Facts::Single(o) => {
                let (a, place) = (one(o, sized), region(o.cell));
                [
                    cat(&[&a, place]),
                    cat(&[&["there", "is"], &a, place]),
                    cat(&[&a, place, &["of", "the", "image"]]),
                ]
            }
            Facts::Pair(x, y, axis) => {
                let (x, y) = (one(x, sized), one(y, sized));
                [
                    cat(&[&x, before(*axis), &y]),
                    cat(&[&y, after(*axis), &x]),
                    cat(&[&["there", "is"], &x, before(*axis), &y]),
                ]
            }
            Facts::Twins(o, axis) => {
                let two = many("two", o, sized);
                let (together, alternative): (&[&str], &[&str]) = match axis {
                    Axis::Horizontal => (&["side", "by", "side"], &["next", "to", "each", "other"]),
                    Axis::Vertical => (
                        &["one", "above", "the", "other"],
                        &["one", "below", "the", "other"],
                    ),
                };
                [
                    cat(&[&two, together]),
                    cat(&[&["there", "are"], &two, together]),
                    cat(&[&two, alternative]),
                ]
            }
            Facts::Triplets(o, axis) => {
                let three = many("three", o, sized);
                let line: &[&str] = match axis {
                    Axis::Horizontal => &["row"],
                    Axis::Vertical => &["column"],
                };
                [
                    cat(&[&three, &["in", "a"], line]),
                    cat(&[&["there", "are"], &three, &["in", "a"], line]),
                    cat(&[&["a"], line, &["of"], &three]),
                ]
            }
            Facts::TwinsAndOne {
                twin,
                odd,
                odd_at,
                axis,
            } => {
                let (two, z) = (many("two", twin, sized), one(odd, sized));
                match odd_at {
                    1 => [
                        cat(&[&z, &["between"], &two]),
                        cat(&[&two, &["with"], &z, &["between", "them"]]),
                        cat(&[&["there", "is"], &z, &["between"], &two]),
                    ],
                    2 => [
                        cat(&[&two, before(*axis), &z]),
                        cat(&[&z, after(*axis), &two]),
                        cat(&[&two, &["and"], &z, in_order(*axis)]),
                    ],
                    _ => [
                        cat(&[&z, before(*axis), &two]),
                        cat(&[&two, after(*axis), &z]),
                        cat(&[&z, &["and"], &two, in_order(*axis)]),
                    ],
                }
            }
            Facts::Three([x, y, z], axis) => {
                let (x, y, z) = (one(x, sized), one(y, sized), one(z, sized));
                [
                    cat(&[&x, &[","], &y, &["and"], &z, in_order(*axis)]),
                    cat(&[&y, &["between"], &x, &["and"], &z]),
                    cat(&[&["there", "is"], &y, &["between"], &x, &["and"], &z]),
                ]
            }
        };
        variants.extend(phrasings.iter().map(|p| Caption::from_pieces(p)));
    }
    variants
}

/// Five different captions of the scene, drawn from its variants.
pub fn describe(scene: &Scene, rng: &mut SceneRng) -> Vec<Caption> {
    let mut variants = caption_variants(scene);
    rng.shuffle(&mut variants);
    variants.truncate(CAPTIONS_PER_IMAGE);
    variants
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Sine and cosine from a Taylor series: plain arithmetic, so the same bits on every platform
/// (the platform's `sin` may differ in the last place, which would change pixels).
fn sin_cos(angle: f64) -> (f64, f64) {
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
fn sample_background(rng: &mut SceneRng) -> Background {
    let hue = rng.unit();
    let value = rng.range(0.36, 0.62);
    let colour_a = hsv_to_rgb(hue, rng.range(0.06, 0.28), value);
    let shift = rng.range(0.07, 0.16) * if value > 0.5 { -1.0 } else { 1.0 };
    let colour_b = hsv_to_rgb(
        hue + rng.range(-0.08, 0.08),
        rng.range(0.06, 0.28),
        value + shift,
    );
    let angle = rng.pick(&[0.0, 0.25, 0.5, 0.75]) * std::f64::consts::PI + rng.range(-0.2, 0.2);
    let texture = match rng.below(6) {
        0 => Texture::Noise {
            cells: rng.range(3.0, 7.0),
            octaves: 3,
        },
        1 => Texture::Stripes {
            angle,
            count: rng.range(6.0, 14.0),
            sharp: rng.chance(0.5),
        },
        2 => Texture::Checks {
            angle,
            count: rng.range(5.0, 12.0),
        },
        3 => Texture::Gradient {
            angle: rng.range(0.0, 2.0 * std::f64::consts::PI),
        },
        4 => Texture::Radial {
            cx: rng.unit(),
            cy: rng.unit(),
        },
        _ => Texture::Grain,
    };
    let grain = if texture == Texture::Grain {
        rng.range(0.04, 0.07)
    } else {
        rng.range(0.01, 0.03)
    };
    Background {
        texture,
        colour_a,
        colour_b,
        grain,
        noise_seed: rng.next_u64(),
    }
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

// ---------------------------------------------------------------------------------------------
// The dataset

#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Output folder; gets `dataset_synth.json` and `images/`.
    pub out_dir: PathBuf,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Image side in pixels.
    pub size: u32,
    pub seed: u64,
    /// JPEG quality, 1..=100.
    pub jpeg_quality: u8,
}

impl SynthOptions {
    /// The default dataset (2,000 / 200 / 200 images of 256x256, seed 0) in `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        SynthOptions {
            out_dir: out_dir.into(),
            train: 2000,
            val: 200,
            test: 200,
            size: 256,
            seed: 0,
            jpeg_quality: 92,
        }
    }

    fn counts(&self) -> [(Split, usize); 3] {
        [
            (Split::Train, self.train),
            (Split::Val, self.val),
            (Split::Test, self.test),
        ]
    }
}

/// One image of the dataset before rendering: what it shows and what its captions say.
#[derive(Debug, Clone)]
pub struct SynthItem {
    pub split: Split,
    /// Index within its split.
    pub index: usize,
    /// Index in the whole dataset (train, then val, then test).
    pub imgid: usize,
    pub filename: String,
    pub scene: Scene,
    pub captions: Vec<Caption>,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub json_path: PathBuf,
    pub image_dir: PathBuf,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub captions: usize,
    /// Every word used, with how many times it occurs over all captions.
    pub word_counts: BTreeMap<String, usize>,
}

impl SynthSummary {
    pub fn images(&self) -> usize {
        self.train + self.val + self.test
    }
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Val => "val",
        Split::Test => "test",
    }
}

/// Samples every scene and its captions without drawing anything (fast: tests and statistics).
pub fn plan(opts: &SynthOptions) -> Vec<SynthItem> {
    let mut items = Vec::with_capacity(opts.train + opts.val + opts.test);
    for (split, count) in opts.counts() {
        for index in 0..count {
            let scene = sample_scene(&mut stream(opts.seed, split, index, Purpose::Scene));
            let captions = describe(
                &scene,
                &mut stream(opts.seed, split, index, Purpose::Captions),
            );
            let imgid = items.len();
            let filename = format!("{}_{index:06}.jpg", split_name(split));
            items.push(SynthItem {
                split,
                index,
                imgid,
                filename,
                scene,
                captions,
            });
        }
    }
    items
}

/// The Karpathy JSON (Flickr form) for planned items.
pub fn karpathy_dataset(items: &[SynthItem]) -> KarpathyDataset {
    let images = items
        .iter()
        .map(|item| {
            let imgid = item.imgid as u64;
            let first = imgid * CAPTIONS_PER_IMAGE as u64;
            let sentences = item
                .captions
                .iter()
                .zip(first..)
                .map(|(c, sentid)| KarpathySentence {
                    tokens: c.tokens.clone(),
                    raw: c.raw.clone(),
                    imgid: Some(imgid),
                    sentid: Some(sentid),
                })
                .collect();
            KarpathyImage {
                filepath: None,
                filename: item.filename.clone(),
                split: split_name(item.split).to_string(),
                sentences,
                imgid: Some(imgid),
                cocoid: None,
                sentids: Some((first..first + item.captions.len() as u64).collect()),
            }
        })
        .collect();
    KarpathyDataset {
        images,
        dataset: Some(DATASET_NAME.to_string()),
    }
}

/// Renders and encodes one image as JPEG bytes.
pub fn encode_jpeg(
    scene: &Scene,
    size: u32,
    quality: u8,
    path: &Path,
) -> Result<Vec<u8>, DataError> {
    let image = render(scene, size);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(&image)
        .map_err(|e| DataError::format(path, format!("cannot encode JPEG: {e}")))?;
    Ok(bytes)
}

fn check_options(opts: &SynthOptions) -> Result<(), DataError> {
    let bad = |reason: String| Err(DataError::format(&opts.out_dir, reason));
    if !(MIN_SIZE..=MAX_SIZE).contains(&opts.size) {
        return bad(format!(
            "image size {} is outside {MIN_SIZE}..={MAX_SIZE}",
            opts.size
        ));
    }
    if !(1..=100).contains(&opts.jpeg_quality) {
        return bad(format!(
            "JPEG quality {} is outside 1..=100",
            opts.jpeg_quality
        ));
    }
    if opts.train + opts.val + opts.test == 0 {
        return bad("asked for no images at all".to_string());
    }
    Ok(())
}

/// Writes the dataset: images in parallel (each from its own random streams, so the bytes do
/// not depend on scheduling), then the JSON, through a temporary file so that a JSON on disk
/// always describes images that exist. Existing files of the same names are replaced.
pub fn generate(opts: &SynthOptions) -> Result<SynthSummary, DataError> {
    check_options(opts)?;
    let image_dir = opts.out_dir.join(IMAGE_DIR);
    std::fs::create_dir_all(&image_dir).map_err(|e| DataError::io(&image_dir, e))?;
    let items = plan(opts);
    items.par_iter().try_for_each(|item| {
        let path = image_dir.join(&item.filename);
        let bytes = encode_jpeg(&item.scene, opts.size, opts.jpeg_quality, &path)?;
        std::fs::write(&path, bytes).map_err(|e| DataError::io(&path, e))
    })?;

    let json_path = opts.out_dir.join(JSON_NAME);
    let dataset = karpathy_dataset(&items);
    let json = serde_json::to_vec(&dataset).map_err(|source| DataError::Json {
        path: json_path.clone(),
        source,
    })?;
    let partial = opts.out_dir.join(format!(".{JSON_NAME}.partial"));
    std::fs::write(&partial, json).map_err(|e| DataError::io(&partial, e))?;
    std::fs::rename(&partial, &json_path).map_err(|e| DataError::io(&json_path, e))?;

    let mut word_counts = BTreeMap::new();
    for caption in items.iter().flat_map(|i| &i.captions) {
        for token in &caption.tokens {
            *word_counts.entry(token.clone()).or_insert(0) += 1;
        }
    }
    Ok(SynthSummary {
        json_path,
        image_dir,
        train: opts.train,
        val: opts.val,
        test: opts.test,
        captions: items.iter().map(|i| i.captions.len()).sum(),
        word_counts,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    fn object(shape: Shape, colour: Colour, size: Size, cell: (usize, usize)) -> SceneObject {
        let diameter = if size == Size::Small { 0.2 } else { 0.3 };
        SceneObject {
            shape,
            colour,
            size,
            cell,
            centre: cell_centre(cell),
            diameter,
            rotation: 0.0,
            tint: [0; 3],
        }
    }

    fn scene(layout: Layout, objects: Vec<SceneObject>) -> Scene {
        let background = Background {
            texture: Texture::Grain,
            colour_a: [0.5; 3],
            colour_b: [0.5; 3],
            grain: 0.0,
            noise_seed: 1,
        };
        Scene {
            layout,
            objects,
            background,
        }
    }

    fn raws(scene: &Scene) -> Vec<String> {
        caption_variants(scene).into_iter().map(|c| c.raw).collect()
    }

    fn tiny(dir: &Path, seed: u64) -> SynthOptions {
        SynthOptions {
            out_dir: dir.to_path_buf(),
            train: 4,
            val: 2,
            test: 2,
            size: 48,
            seed,
            jpeg_quality: 92,
        }
    }

    /// Every file under the images folder, by name.
    fn image_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir.join(IMAGE_DIR))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn sin_cos_is_accurate() {
        for i in -40..=40 {
            let a = i as f64 * 0.37;
            let (s, c) = sin_cos(a);
            assert!(
                (s - a.sin()).abs() < 1e-9 && (c - a.cos()).abs() < 1e-9,
                "angle {a}"
            );
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        for (dir, seed) in dirs.iter().zip([7, 7, 8]) {
            generate(&tiny(dir.path(), seed)).unwrap();
        }
        let json = |d: &tempfile::TempDir| std::fs::read(d.path().join(JSON_NAME)).unwrap();
        assert_eq!(json(&dirs[0]), json(&dirs[1]));
        assert_eq!(image_bytes(dirs[0].path()), image_bytes(dirs[1].path()));
        assert_ne!(json(&dirs[0]), json(&dirs[2]));
        let (a, c) = (image_bytes(dirs[0].path()), image_bytes(dirs[2].path()));
        assert_eq!(a.keys().collect::<Vec<_>>(), c.keys().collect::<Vec<_>>());
        assert!(
            a.iter().all(|(name, bytes)| c[name] != *bytes),
            "every image changes with the seed"
        );
    }

    #[test]
    fn held_out_splits_do_not_depend_on_the_training_count() {
        let small = plan(&SynthOptions {
            train: 3,
            ..tiny(Path::new("x"), 5)
        });
        let large = plan(&SynthOptions {
            train: 9,
            ..tiny(Path::new("x"), 5)
        });
        let val = |items: &[SynthItem]| -> Vec<Scene> {
            items
                .iter()
                .filter(|i| i.split != Split::Train)
                .map(|i| i.scene.clone())
                .collect()
        };
        assert_eq!(val(&small), val(&large));
    }

    #[test]
    fn writes_flickr_style_karpathy_json_and_images() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(&tiny(dir.path(), 3)).unwrap();
        assert_eq!(
            (summary.train, summary.val, summary.test, summary.captions),
            (4, 2, 2, 40)
        );
        assert_eq!(summary.json_path, dir.path().join(JSON_NAME));

        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary.json_path).unwrap()).unwrap();
        assert_eq!(raw["dataset"], "synth");
        let first = &raw["images"][0];
        for key in ["filename", "imgid", "split", "sentences", "sentids"] {
            assert!(first.get(key).is_some(), "missing {key}");
        }
        assert!(first.get("filepath").is_none());
        for key in ["tokens", "raw", "imgid", "sentid"] {
            assert!(
                first["sentences"][0].get(key).is_some(),
                "missing sentence {key}"
            );
        }

        let dataset = KarpathyDataset::load(&summary.json_path).unwrap();
        let splits: Vec<&str> = dataset.images.iter().map(|i| i.split.as_str()).collect();
        assert_eq!(
            splits,
            ["train", "train", "train", "train", "val", "val", "test", "test"]
        );
        for (n, entry) in dataset.images.iter().enumerate() {
            assert_eq!(entry.imgid, Some(n as u64));
            assert_eq!(entry.sentences.len(), CAPTIONS_PER_IMAGE);
            let sentids: Vec<u64> = (n as u64 * 5..n as u64 * 5 + 5).collect();
            assert_eq!(entry.sentids.as_ref(), Some(&sentids));
            for (s, id) in entry.sentences.iter().zip(&sentids) {
                assert_eq!((s.imgid, s.sentid), (Some(n as u64), Some(*id)));
                assert!(s
                    .tokens
                    .iter()
                    .all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase())));
                assert!(
                    s.raw.ends_with('.') && s.raw.starts_with(|c: char| c.is_ascii_uppercase())
                );
                let words: Vec<String> = s
                    .raw
                    .trim_end_matches('.')
                    .replace(',', "")
                    .split(' ')
                    .map(|w| w.to_lowercase())
                    .collect();
                assert_eq!(words, s.tokens);
            }
            let distinct: BTreeSet<_> = entry.sentences.iter().map(|s| &s.raw).collect();
            assert_eq!(
                distinct.len(),
                CAPTIONS_PER_IMAGE,
                "five different captions"
            );
            let image = image::open(entry.path_in(&summary.image_dir)).unwrap();
            assert_eq!((image.width(), image.height()), (48, 48));
        }
    }

    #[test]
    fn refuses_bad_options_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        for opts in [
            SynthOptions {
                size: 8,
                ..tiny(dir.path(), 0)
            },
            SynthOptions {
                jpeg_quality: 0,
                ..tiny(dir.path(), 0)
            },
            SynthOptions {
                train: 0,
                val: 0,
                test: 0,
                ..tiny(dir.path(), 0)
            },
        ] {
            let err = generate(&opts).unwrap_err().to_string();
            assert!(err.starts_with(&dir.path().display().to_string()), "{err}");
        }
    }

    #[test]
    fn captions_state_the_relations() {
        use Colour::*;
        use Shape::*;
        use Size::*;
        let h = Layout::Line(Axis::Horizontal);
        let v = Layout::Line(Axis::Vertical);

        let s = scene(
            h,
            vec![
                object(Circle, Red, Small, (1, 0)),
                object(Square, Blue, Large, (1, 2)),
            ],
        );
        let r = raws(&s);
        assert!(
            r.contains(&"A red circle to the left of a blue square.".into()),
            "{r:?}"
        );
        assert!(
            r.contains(&"A large blue square to the right of a small red circle.".into()),
            "{r:?}"
        );

        let s = scene(
            v,
            vec![
                object(Star, Green, Small, (0, 1)),
                object(Triangle, Yellow, Large, (1, 1)),
            ],
        );
        let r = raws(&s);
        assert!(
            r.contains(&"A small green star above a large yellow triangle.".into()),
            "{r:?}"
        );
        assert!(
            r.contains(&"A yellow triangle below a green star.".into()),
            "{r:?}"
        );

        let s = scene(Layout::Single, vec![object(Ring, White, Large, (0, 2))]);
        assert!(raws(&s).contains(&"There is a large white ring in the top right corner.".into()));
        let s = scene(Layout::Single, vec![object(Cross, Black, Small, (2, 1))]);
        assert!(raws(&s).contains(&"A black cross at the bottom of the image.".into()));
        let s = scene(Layout::Single, vec![object(Diamond, Orange, Small, (1, 0))]);
        let r = raws(&s);
        assert!(
            r.contains(&"An orange diamond on the left.".into()),
            "{r:?}"
        );
        assert!(
            r.contains(&"There is a small orange diamond on the left.".into()),
            "{r:?}"
        );

        let twin = object(Square, Red, Small, (0, 0));
        let s = scene(
            h,
            vec![
                twin.clone(),
                object(Diamond, Purple, Large, (0, 1)),
                object(Square, Red, Small, (0, 2)),
            ],
        );
        let r = raws(&s);
        assert!(
            r.contains(&"A purple diamond between two red squares.".into()),
            "{r:?}"
        );
        assert!(
            r.contains(&"Two small red squares with a large purple diamond between them.".into()),
            "{r:?}"
        );

        let s = scene(
            v,
            vec![
                object(Circle, Orange, Large, (0, 2)),
                object(Circle, Orange, Large, (1, 2)),
            ],
        );
        assert!(raws(&s).contains(&"Two orange circles one above the other.".into()));
        let s = scene(
            v,
            vec![
                object(Circle, Orange, Large, (0, 2)),
                object(Circle, Orange, Large, (1, 2)),
            ],
        );
        assert!(
            raws(&s).contains(&"There are two large orange circles one above the other.".into())
        );

        let s = scene(
            h,
            vec![
                object(Star, Blue, Small, (2, 0)),
                object(Star, Blue, Small, (2, 1)),
                object(Ring, Green, Large, (2, 2)),
            ],
        );
        let r = raws(&s);
        assert!(
            r.contains(&"Two blue stars to the left of a green ring.".into()),
            "{r:?}"
        );
        assert!(
            r.contains(&"A green ring to the right of two blue stars.".into()),
            "{r:?}"
        );

        let s = scene(
            v,
            vec![
                object(Circle, Red, Small, (0, 0)),
                object(Square, Blue, Small, (1, 0)),
                object(Star, Green, Small, (2, 0)),
            ],
        );
        let r = raws(&s);
        assert!(
            r.contains(&"A red circle, a blue square and a green star from top to bottom.".into()),
            "{r:?}"
        );
        assert!(
            r.contains(&"A blue square between a red circle and a green star.".into()),
            "{r:?}"
        );

        let s = scene(h, vec![object(Cross, White, Large, (1, 0)); 3]);
        assert!(raws(&s).contains(&"A row of three white crosses.".into()));
    }

    /// Geometry behind the captions, checked from the sampled positions alone.
    #[test]
    fn sampled_scenes_are_geometrically_true() {
        let items = plan(&SynthOptions {
            train: 1500,
            val: 0,
            test: 0,
            ..tiny(Path::new("x"), 11)
        });
        for item in &items {
            let objects = &item.scene.objects;
            for o in objects {
                let r = o.reach();
                assert!(
                    o.diameter >= 1.0 / 6.0,
                    "large enough for a coarse feature grid"
                );
                assert!(
                    o.centre.0 - r >= 0.0
                        && o.centre.0 + r <= 1.0
                        && o.centre.1 - r >= 0.0
                        && o.centre.1 + r <= 1.0
                );
            }
            for (i, a) in objects.iter().enumerate() {
                for b in &objects[i + 1..] {
                    let d = ((a.centre.0 - b.centre.0).powi(2) + (a.centre.1 - b.centre.1).powi(2))
                        .sqrt();
                    assert!(
                        d > a.reach() + b.reach(),
                        "objects must not overlap: {:?}",
                        item.scene
                    );
                }
            }
            match item.scene.layout {
                Layout::Single => {
                    assert_eq!(objects.len(), 1);
                    let o = &objects[0];
                    // The centre lies in its third of each axis, at least 0.08 of the side inside.
                    for (coord, index) in [(o.centre.0, o.cell.1), (o.centre.1, o.cell.0)] {
                        let lo = index as f64 / 3.0;
                        assert!(coord > lo + 0.08 && coord < lo + 1.0 / 3.0 - 0.08, "{o:?}");
                    }
                }
                Layout::Line(axis) => {
                    assert!((2..=3).contains(&objects.len()));
                    for pair in objects.windows(2) {
                        let (dx, dy) = (
                            pair[1].centre.0 - pair[0].centre.0,
                            pair[1].centre.1 - pair[0].centre.1,
                        );
                        let (along, across) = if axis == Axis::Horizontal {
                            (dx, dy)
                        } else {
                            (dy, dx)
                        };
                        assert!(along > 0.2 && across.abs() < 0.08, "{:?}", item.scene);
                    }
                }
            }
            // Every object's colour and shape is named, and nothing else is.
            let named: BTreeSet<(&str, &str)> = objects
                .iter()
                .map(|o| (o.colour.word(), o.shape.word()))
                .collect();
            for caption in &item.captions {
                let mut said = BTreeSet::new();
                for pair in caption.tokens.windows(2) {
                    if let Some(colour) = Colour::ALL.iter().find(|c| c.word() == pair[0]) {
                        let shape = Shape::ALL
                            .iter()
                            .find(|s| s.word() == pair[1] || s.plural() == pair[1])
                            .unwrap();
                        said.insert((colour.word(), shape.word()));
                    }
                }
                assert_eq!(said, named, "{}", caption.raw);
            }
        }
    }

    #[test]
    fn every_word_is_frequent_in_two_thousand_images() {
        let items = plan(&SynthOptions {
            train: 2000,
            val: 0,
            test: 0,
            ..tiny(Path::new("x"), 0)
        });
        let mut images_with: HashMap<&str, usize> = HashMap::new();
        for item in &items {
            let words: BTreeSet<&str> = item
                .captions
                .iter()
                .flat_map(|c| &c.tokens)
                .map(|t| t.as_str())
                .collect();
            for w in words {
                *images_with.entry(w).or_default() += 1;
            }
        }
        let used: BTreeSet<&str> = images_with.keys().copied().collect();
        assert_eq!(used, VOCABULARY.iter().copied().collect::<BTreeSet<_>>());
        for (word, n) in &images_with {
            assert!(*n > 20, "{word:?} is in only {n} of 2000 images");
        }
    }

    #[test]
    fn objects_are_drawn_where_the_scene_puts_them() {
        let items = plan(&SynthOptions {
            train: 40,
            val: 0,
            test: 0,
            ..tiny(Path::new("x"), 2)
        });
        for item in &items {
            let image = render(&item.scene, 96);
            for o in item.scene.objects.iter().filter(|o| o.shape != Shape::Ring) {
                let (x, y) = ((o.centre.0 * 96.0) as u32, (o.centre.1 * 96.0) as u32);
                let got = image.get_pixel(x, y).0;
                let want = o.colour.rgb();
                let diff = (0..3)
                    .map(|c| (got[c] as i32 - want[c] as i32).abs())
                    .max()
                    .unwrap();
                assert!(
                    diff <= 12,
                    "{:?} at ({x}, {y}) is {got:?}, want about {want:?}",
                    o.shape
                );
            }
            // The background is muted: no saturated or near-white/black corner pixel.
            let corner = image.get_pixel(0, 0).0.map(|c| c as i32);
            let (max, min) = (*corner.iter().max().unwrap(), *corner.iter().min().unwrap());
            assert!(max - min < 90 && max < 200 && min > 40, "{corner:?}");
        }
    }
}
