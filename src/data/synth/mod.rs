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
//!   threads. Randomness comes from gaze's own [`SplitMix64`](crate::rng::SplitMix64) (so no crate
//!   update can change the stream); each image draws from its own streams keyed by (seed, split, index), so an
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
//!
//! Files by job: `scene` the scene types, `sample` drawing scenes from each image's own random
//! streams, `caption` the vocabulary and phrasings, `render` the pixels, `dataset` the plan and
//! the files written.

mod caption;
mod dataset;
mod render;
mod sample;
mod scene;

#[cfg(test)]
mod tests;

pub use caption::{caption_variants, describe, Caption, VOCABULARY};
pub use dataset::{
    encode_jpeg, generate, karpathy_dataset, plan, SynthItem, SynthOptions, SynthSummary,
};
pub use render::render;
pub use sample::sample_scene;
pub use scene::{Axis, Background, Colour, Layout, Scene, SceneObject, Shape, Size, Texture};

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
