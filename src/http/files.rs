//! `GET /v1/images/{id}/file`: an image file, served only from under a watched folder.
//!
//! The stored path is resolved on this machine (named roots included), every symbolic link in
//! it resolved, and the result must lie under one of the watched folders (themselves resolved):
//! a path with `..` that climbs out, or a link that points elsewhere, is refused. The file is
//! then opened by its resolved path without following links, so a link swapped in after the
//! check is refused too.

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::api::parse_id;
use super::params::Params;
use super::{ApiError, AppState};
use crate::store::query::Selection;

pub(crate) async fn file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let id = parse_id(&id, "image")?;
    let key = state
        .read(move |store| {
            let rows = store.select(&Selection::ImageId(id), 1)?;
            rows.into_iter()
                .next()
                .map(|r| r.path)
                .ok_or_else(|| ApiError::not_found(format!("no image {id}")))
        })
        .await?;
    let link = state.link.clone();
    let max_bytes = state.opts.decode.max_file_bytes;
    let bytes = AppState::blocking(move || {
        let path = link.keys.path(&key).map_err(|e| {
            ApiError::not_found(if key.starts_with("upload:/") {
                "an uploaded image: its bytes are not kept".to_string()
            } else {
                format!("{key}: {e}")
            })
        })?;
        let resolved = match std::fs::canonicalize(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::not_found(format!("{key}: the file is gone")))
            }
            Err(e) => return Err(ApiError::not_found(format!("{key}: {e}"))),
        };
        if !under_any(&resolved, &link.watched) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{key}: the file lies outside the watched folders"),
            ));
        }
        let (bytes, _) = crate::files::read_limited(&resolved, max_bytes, false, None)
            .map_err(|e| ApiError::not_found(format!("{key}: {}", e.reason())))?;
        Ok(bytes)
    })
    .await?;
    let mime = image::guess_format(&bytes)
        .map(|f| f.to_mime_type())
        .unwrap_or("application/octet-stream");
    let headers = [
        (header::CONTENT_TYPE, mime),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Never a document that runs in this origin, whatever the bytes are.
        (header::CONTENT_SECURITY_POLICY, "sandbox"),
        (header::CACHE_CONTROL, "private, max-age=60"),
    ];
    Ok((headers, bytes).into_response())
}

/// Whether `path` (resolved) lies under one of `folders` (resolved).
fn under_any(path: &FsPath, folders: &[std::path::PathBuf]) -> bool {
    folders.iter().any(|f| path.starts_with(f))
}

#[cfg(test)]
mod tests {
    use super::under_any;
    use std::path::{Path, PathBuf};

    #[test]
    fn only_paths_under_a_folder_pass() {
        let folders = vec![PathBuf::from("/photos")];
        assert!(under_any(Path::new("/photos/a/b.jpg"), &folders));
        // Component-wise: a sibling whose name starts the same is not under it.
        assert!(!under_any(Path::new("/photos2/b.jpg"), &folders));
        assert!(!under_any(Path::new("/etc/passwd"), &folders));
    }
}
