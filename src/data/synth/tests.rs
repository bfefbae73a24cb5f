//! The synthetic dataset's tests: determinism, the files written, true captions, geometry.

use std::collections::{BTreeSet, HashMap};

use std::collections::BTreeMap;
use std::path::Path;

use super::render::sin_cos;
use super::sample::cell_centre;
use super::*;
use crate::data::karpathy::{KarpathyDataset, Split};

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
            assert!(s.raw.ends_with('.') && s.raw.starts_with(|c: char| c.is_ascii_uppercase()));
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
    assert!(raws(&s).contains(&"There are two large orange circles one above the other.".into()));

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
                let d =
                    ((a.centre.0 - b.centre.0).powi(2) + (a.centre.1 - b.centre.1).powi(2)).sqrt();
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
