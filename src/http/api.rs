//! The routes that read the store (images, status, models), activation, metrics, health and
//! the page.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::params::Params;
use super::{ApiError, AppState};
use crate::store::api::CaptionStore;
use crate::store::query::{ResultRow, Selection};
use crate::store::unix_now;

const PAGE: &str = include_str!("page/index.html");

pub(crate) async fn page(RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Everything the page uses is in it or comes from this server.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; \
             script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    ];
    Ok((headers, PAGE).into_response())
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such route (see docs/HTTP.md)")
}

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when a model captions and the store takes writes.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let plain = |status: StatusCode, text: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response()
    };
    let telemetry = &state.link.telemetry;
    if state.link.uploads.is_none() || telemetry.active_model().is_none() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is loaded\n".into(),
        );
    }
    if telemetry.writer_failed() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store stopped taking writes (see the log)\n".into(),
        );
    }
    let db = state.link.db.clone();
    // A connection that can write, and a transaction on it.
    let writable = AppState::blocking(move || {
        let mut store = crate::store::open(&db)?;
        store.begin()?;
        Ok(())
    })
    .await;
    match writable {
        Ok(()) => plain(StatusCode::OK, "ready\n".into()),
        Err(e) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is not writable: {}\n", e.message),
        ),
    }
}

/// Prometheus text: the store's gauges read now, then the stages' counters and histograms.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let report = state.read(|store| Ok(store.status(unix_now())?)).await;
    let mut lines = String::new();
    let _ = writeln!(
        lines,
        "# HELP gaze_store_up Whether the store could be read for this scrape.\n\
         # TYPE gaze_store_up gauge\ngaze_store_up {}",
        u8::from(report.is_ok())
    );
    if let Ok(report) = &report {
        lines.push_str("# HELP gaze_images Images in the store by status.\n");
        lines.push_str("# TYPE gaze_images gauge\n");
        for (status, n) in &report.by_status {
            let _ = writeln!(lines, "gaze_images{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            lines,
            "# HELP gaze_backlog_images Images waiting to be captioned.\n\
             # TYPE gaze_backlog_images gauge\ngaze_backlog_images {}\n\
             # HELP gaze_images_per_second Images done in the last minute, per second.\n\
             # TYPE gaze_images_per_second gauge\ngaze_images_per_second {}",
            report.backlog, report.images_per_second
        );
    }
    let captioned = state.link.counters.summary().captioned;
    let body = state.link.telemetry.render(&lines, captioned);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub(crate) async fn status(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let db = state.link.db.to_string();
    state
        .read(move |store| {
            let mut v = store.status(unix_now())?.to_json();
            v["db"] = db.into();
            Ok(Json(v))
        })
        .await
}

pub(crate) async fn models(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let serving = state
        .link
        .telemetry
        .active_model()
        .map(|(id, name)| json!({"id": id, "name": name}));
    state
        .read(move |store| {
            let models = store.list_models()?;
            Ok(Json(json!({"models": models, "serving": serving})))
        })
        .await
}

/// Activates a registered model in the registry and swaps it into the running daemon.
pub(crate) async fn activate(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    if state.opts.token.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "activating a model over HTTP needs [http] token to be set",
        ));
    }
    let id = parse_id(&id, "model")?;
    if state.link.uploads.is_none() {
        return Err(ApiError::unavailable(
            "this daemon captions nothing (--no-caption): there is no model to swap",
        ));
    }
    let link = state.link.clone();
    let opts = state.opts.clone();
    AppState::blocking(move || {
        let mut store = crate::store::open(&link.db)?;
        let row = store
            .model(id)?
            .ok_or_else(|| ApiError::not_found(format!("no model {id}")))?;
        // Loaded (and its hash checked) before the registry changes: a model that cannot
        // caption never becomes active.
        let model =
            crate::daemon::load_registered_model(&row, &link.device, opts.models_dir.as_deref())
                .map_err(|reason| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason))?;
        let activation = store.activate(id, "http", opts.recaption, unix_now())?;
        link.swap.promote(crate::daemon::ActiveModel {
            id,
            name: row.name.clone(),
            model: Arc::new(model),
        });
        tracing::info!(model = %row.name, model_id = id, requeued = activation.requeued,
            "model activated over HTTP");
        Ok(Json(json!({
            "active": {"id": id, "name": row.name},
            "previous": activation.previous,
            "requeued": activation.requeued,
        })))
    })
    .await
}

pub(crate) fn parse_id(text: &str, what: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ApiError::bad_request(format!("{text:?} is not a {what} id")))
}

/// Rows of the same image (one per caption, adjacent) as one image with its captions.
fn group(rows: &[ResultRow]) -> Vec<Value> {
    let mut images: Vec<Value> = Vec::new();
    let mut last = None;
    for r in rows {
        if last != Some(r.image_id) {
            images.push(json!({
                "id": r.image_id,
                "path": r.path,
                "status": r.status.to_string(),
                "content_hash": r.content_hash,
                "width": r.width,
                "height": r.height,
                "attempts": r.attempts,
                "error": r.error,
                "captions": [],
            }));
            last = Some(r.image_id);
        }
        if let (Some(id), Some(image)) = (r.caption_id, images.last_mut()) {
            image["captions"]
                .as_array_mut()
                .expect("made as an array")
                .push(json!({
                    "id": id,
                    "text": r.caption,
                    "score": r.score,
                    "finished": r.finished,
                    "beam_size": r.beam_size,
                    "model": {"id": r.model_id, "name": r.model},
                    "created_at": r.created_at,
                }));
        }
    }
    images
}

/// The most rows one page reads: enough for `limit` images with a few captions each.
const ROWS_PER_IMAGE: usize = 4;

pub(crate) async fn images(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(
        query.as_deref(),
        &["search", "recent", "failed", "path", "limit", "cursor"],
    )?;
    let limit = p.number("limit", 1..=500)?.unwrap_or(50) as usize;
    let offset = match p.get("cursor") {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("cursor={c:?}: not a cursor this server gave"))
        })?,
    };
    let failed = p.flag("failed", false)?;
    let recent = p.number("recent", 1..=i64::MAX)?;
    let given = [
        p.get("search").is_some(),
        recent.is_some(),
        failed,
        p.get("path").is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(ApiError::bad_request(
            "give at most one of search, recent, failed=true and path",
        ));
    }
    let keys = state.link.keys.clone();
    let path_keys: Vec<String> = match p.get("path") {
        Some(path) => {
            // As stored, or as a path on this machine (resolved the way the watcher records it).
            let mut keys_tried = vec![path.to_string()];
            if let Ok(abs) = std::fs::canonicalize(path) {
                keys_tried.push(keys.key(&abs));
            }
            keys_tried
        }
        None => Vec::new(),
    };
    let selections: Vec<Selection> = if let Some(words) = p.get("search") {
        vec![Selection::Search(words.to_string())]
    } else if failed {
        vec![Selection::Failed]
    } else if !path_keys.is_empty() {
        path_keys.into_iter().map(Selection::Path).collect()
    } else {
        vec![Selection::Recent(recent.map_or(usize::MAX, |n| n as usize))]
    };
    state
        .read(move |store| {
            let want = offset + limit * ROWS_PER_IMAGE + 1;
            // The first selection that matches anything (a path as stored, then as resolved).
            let mut page = store.select_page(&selections[0], want)?;
            for sel in &selections[1..] {
                if !page.rows.is_empty() {
                    break;
                }
                page = store.select_page(sel, want)?;
            }
            let rows = page.rows.get(offset..).unwrap_or(&[]);
            // Whole images only: stop before the image that would be the (limit+1)th, and
            // drop an image whose rows may go on past what was read.
            let mut taken = 0;
            let mut images = 0;
            while taken < rows.len() {
                let id = rows[taken].image_id;
                let run = rows[taken..]
                    .iter()
                    .take_while(|r| r.image_id == id)
                    .count();
                let cut_off = taken + run == rows.len() && page.truncated();
                if images == limit || (cut_off && images > 0) {
                    break;
                }
                taken += run;
                images += 1;
            }
            let consumed = offset + taken;
            let next = (consumed < page.total).then(|| consumed.to_string());
            Ok(Json(json!({
                "images": group(&rows[..taken]),
                "next_cursor": next,
                "total": page.total,
            })))
        })
        .await
}

/// The rows of one image, or 404.
fn image_rows(store: &dyn CaptionStore, id: i64) -> Result<Vec<ResultRow>, ApiError> {
    let rows = store.select(&Selection::ImageId(id), 10_000)?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("no image {id}")));
    }
    Ok(rows)
}

pub(crate) async fn image(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(query.as_deref(), &["attention"])?;
    let with_attention = p.flag("attention", true)?;
    let id = parse_id(&id, "image")?;
    state
        .read(move |store| {
            let rows = image_rows(store, id)?;
            let mut image = group(&rows).remove(0);
            for caption in image["captions"].as_array_mut().expect("an array") {
                let caption_id = caption["id"].as_i64().expect("a caption id");
                let record = store.attention_of(caption_id)?;
                caption["tokens"] = record.as_ref().map(|r| json!(r.tokens)).into();
                if with_attention {
                    caption["attention"] = record
                        .map(|r| json!({"grid": r.grid, "maps": r.alphas}))
                        .into();
                }
            }
            Ok(Json(image))
        })
        .await
}

pub(crate) async fn attention_png(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(query.as_deref(), &["word", "caption"])?;
    let id = parse_id(&id, "image")?;
    let word = p.number("word", 0..=100_000)?.map(|w| w as usize);
    let caption = p.number("caption", 1..=i64::MAX)?;
    let keys = state.link.keys.clone();
    let (row, record) = state
        .read(move |store| {
            let rows = image_rows(store, id)?;
            let row = match caption {
                Some(c) => rows
                    .into_iter()
                    .find(|r| r.caption_id == Some(c))
                    .ok_or_else(|| ApiError::not_found(format!("image {id} has no caption {c}")))?,
                // The newest caption: rows come in caption order.
                None => rows
                    .into_iter()
                    .rfind(|r| r.caption_id.is_some())
                    .ok_or_else(|| ApiError::not_found(format!("image {id} has no caption")))?,
            };
            let caption_id = row.caption_id.expect("a captioned row");
            let record = store.attention_of(caption_id)?.ok_or_else(|| {
                ApiError::not_found(format!("caption {caption_id} has no stored attention"))
            })?;
            Ok((row, record))
        })
        .await?;
    let png = AppState::blocking(move || {
        // Not found on this machine: drawn over a grey panel, as for a deleted file.
        let file = keys
            .path(&row.path)
            .unwrap_or_else(|_| std::path::PathBuf::from("/nonexistent"));
        let hash = row.content_hash.as_deref();
        let picture = match word {
            None => {
                crate::viz::stored_picture(&file, hash, &record.tokens, &record.alphas, record.grid)
                    .0
            }
            Some(n) => {
                let (Some(alpha), Some(w)) = (record.alphas.get(n), record.tokens.get(n + 1))
                else {
                    return Err(ApiError::not_found(format!(
                        "word={n}: the caption has {} words",
                        record.alphas.len()
                    )));
                };
                let backdrop = crate::viz::Backdrop::load(&file, hash);
                crate::viz::word_panel(
                    &backdrop.image,
                    w,
                    alpha,
                    record.grid,
                    &crate::viz::PictureOptions::default(),
                )
            }
        };
        let mut bytes = Vec::new();
        picture
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|e| ApiError::internal(format!("encoding the PNG: {e}")))?;
        Ok(bytes)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}
