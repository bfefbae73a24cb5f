//! Captions: the fixed vocabulary and the phrasings of each kind of scene.

use super::scene::{Axis, Layout, Scene, SceneObject};
use super::CAPTIONS_PER_IMAGE;
use crate::rng::SplitMix64;

#[rustfmt::skip]
pub const VOCABULARY: &[&str] = &[
    "a", "above", "an", "and", "are", "at", "below", "between", "black", "blue", "bottom", "by",
    "centre", "circle", "circles", "column", "corner", "cross", "crosses", "diamond", "diamonds",
    "each", "from", "green", "image", "in", "is", "large", "left", "next", "of", "on", "one",
    "orange", "other", "purple", "red", "right", "ring", "rings", "row", "side", "small", "square",
    "squares", "star", "stars", "the", "them", "there", "three", "to", "top", "triangle",
    "triangles", "two", "white", "with", "yellow",
];

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
pub fn describe(scene: &Scene, rng: &mut SplitMix64) -> Vec<Caption> {
    let mut variants = caption_variants(scene);
    rng.scaled_shuffle(&mut variants);
    variants.truncate(CAPTIONS_PER_IMAGE);
    variants
}
