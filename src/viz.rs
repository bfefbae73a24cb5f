//! Attention pictures, in the manner of the tutorial's `visualize_att`.
use image::{DynamicImage, RgbImage};

use crate::data::WordMap;
use crate::model::Caption;

/// A grid of panels, one per word (the first is `<start>`), each the image with the word's
/// upsampled, smoothed attention map laid over it and the word written above.
pub fn attention_picture(image: &DynamicImage, caption: &Caption, word_map: &WordMap) -> RgbImage {
    let _ = (image, caption, word_map);
    todo!("attention pictures")
}
