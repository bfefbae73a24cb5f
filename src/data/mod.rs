//! Data: Karpathy split JSON, word maps, image decoding and preprocessing, the tutorial's
//! prepared HDF5/JSON files (writing them with `prepare`, reading them with `prepared`), and the
//! threaded training loader.

pub mod error;
pub mod hdf5;
pub mod image;
pub mod karpathy;
pub mod loader;
pub mod prepare;
pub mod prepared;
pub mod pyjson;
pub mod pyrandom;
pub mod synth;
pub mod wordmap;

pub use error::DataError;
pub use prepared::{PreparedFiles, PreparedSplit};
pub use wordmap::WordMap;
