//! The writes the daemon makes today, at their old paths (transitional: the daemon moves to the
//! store's interface, [`super::api`], next). Each lives in the module that owns its table.

pub use super::captions::{caption_exists, insert_caption, NewCaption};
pub use super::queue::{
    image_state, live_paths, mark_done, mark_failed, mark_gone, mark_pending, mark_skipped,
    requeue_for_model, skipped_paths, unmark_skipped, ImageState, ImageStatus, ReadImage,
};
pub use super::registry::{model_id_by_hash, NewModel};

/// Registers a model and returns its id: [`super::registry::register`].
pub fn register_model(
    conn: &rusqlite::Connection,
    m: &NewModel,
    now: f64,
) -> rusqlite::Result<i64> {
    super::registry::register(conn, m, now).map(|r| r.id)
}
