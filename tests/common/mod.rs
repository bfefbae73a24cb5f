pub mod model;
pub mod pg;
