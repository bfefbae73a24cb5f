//! Data: Karpathy split JSON, word maps, image decoding and preprocessing, and the tutorial's
//! prepared HDF5/JSON files.

pub mod error;
pub mod image;
pub mod karpathy;
pub mod synth;
pub mod wordmap;

pub use error::DataError;
pub use wordmap::WordMap;
