//! The queries at their old path (transitional: callers move to [`super::api::Query`]).

pub use super::query::*;
