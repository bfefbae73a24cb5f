//! Data: Karpathy split JSON, word maps, image decoding and preprocessing, the tutorial's
//! prepared HDF5/JSON files (writing them with `prepare`, reading them with `prepared`), and the
//! synthetic captioned dataset (`synth`).

pub mod error;
pub mod hdf5;
pub mod image;
pub mod karpathy;
pub mod prepare;
pub mod prepared;
pub mod pyjson;
pub mod pyrandom;
pub mod synth;
pub mod wordmap;

pub use error::DataError;
pub use prepared::{PreparedFiles, PreparedSplit};
pub use wordmap::WordMap;
