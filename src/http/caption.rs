//! `POST /v1/caption`: an uploaded image, decoded here and captioned in the daemon's batches.
//!
//! The steps, each with its refusal: an upload slot (503 when `max_concurrent_uploads` are
//! being read), the body within `max_body_bytes` (413), an image format gaze reads (415), an
//! image that decodes (422), a place in the bounded upload queue (503 with `Retry-After`), and
//! a caption within `request_timeout_ms` (504).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::params::Params;
use super::{ApiError, AppState};
use crate::daemon::{Answer, Decoded, Job, QueueRefusal, Reply};

pub(crate) async fn caption(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(query.as_deref(), &["beam_size", "attention", "store"])?;
    let beam_size = p.number("beam_size", 1..=100)?.map(|b| b as usize);
    let attention = p.flag("attention", false)?;
    let store = p.flag("store", false)?;
    let Some(uploads) = state.link.uploads.clone() else {
        return Err(ApiError::unavailable(
            "no model is loaded (this daemon only discovers files)",
        ));
    };
    let max = state.opts.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than http.max_body_bytes ({max} bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // Held while the body is read and decoded: those are what cost memory and time here.
    let slot = state
        .upload_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable(format!(
            "{} uploads are being read already (http.max_concurrent_uploads); try again shortly",
            state.opts.max_concurrent_uploads
        ))
        })?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let read = async {
        if multipart {
            read_multipart(req, &state).await
        } else {
            axum::body::to_bytes(req.into_body(), max)
                .await
                .map_err(|e| {
                    // The limit's error says so; anything else is a broken upload.
                    if e.to_string().contains("length limit exceeded") {
                        too_large()
                    } else {
                        ApiError::bad_request(format!("reading the body: {e}"))
                    }
                })
        }
    };
    // A client that trickles its body holds an upload slot: not for longer than this.
    let bytes = tokio::time::timeout(state.opts.request_timeout, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within http.request_timeout_ms ({} ms)",
                    state.opts.request_timeout.as_millis()
                ),
            )
        })??;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send the image's bytes (or a multipart form with an image part)",
        ));
    }
    let decode = state.opts.decode;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let decoded = AppState::blocking(move || {
        let format = image::guess_format(&bytes).map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not an image: the body is in no format gaze reads (JPEG, PNG, WebP, BMP, GIF, \
                 TIFF...)",
            )
        })?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let ext = format.extensions_str().first().copied().unwrap_or("img");
        let key = format!("upload:/{hash}.{ext}");
        let (width, height, pixels) = crate::daemon::prepare_image(
            &bytes,
            std::path::Path::new("the uploaded image"),
            &decode,
        )
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64);
        Ok(Decoded {
            job: Job {
                path: PathBuf::from(&key),
                key,
                size: bytes.len() as u64,
                mtime_ns: now_ns,
                lease: None,
            },
            hash,
            width,
            height,
            pixels,
            reply: Some(Reply {
                beam_size,
                store,
                tx,
            }),
        })
    })
    .await?;
    let (width, height, hash) = (decoded.width, decoded.height, decoded.hash.clone());
    uploads.try_send(decoded).map_err(|refusal| match refusal {
        QueueRefusal::Full => ApiError::unavailable(
            "the caption queue is full (http.queue_depth uploads wait already); try again shortly",
        ),
        QueueRefusal::Closed => ApiError::unavailable("the daemon is stopping"),
    })?;
    drop(slot);
    let answer = match tokio::time::timeout(state.opts.request_timeout, rx).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no caption within http.request_timeout_ms ({} ms)",
                    state.opts.request_timeout.as_millis()
                ),
            ))
        }
        Ok(Err(_)) => {
            return Err(ApiError::unavailable(
                "the daemon stopped before captioning the image",
            ))
        }
        Ok(Ok(Err(reason))) => return Err(ApiError::internal(reason)),
        Ok(Ok(Ok(answer))) => answer,
    };
    Ok(Json(answer_json(&answer, width, height, &hash, attention)))
}

fn answer_json(a: &Answer, width: u32, height: u32, hash: &str, attention: bool) -> Value {
    let c = &a.caption;
    let mut v = json!({
        "caption": c.text,
        "tokens": c.tokens,
        "score": c.score,
        "finished": c.finished,
        "beam_size": c.beam_size,
        "model": {"id": a.model_id, "name": a.model_name},
        "width": width,
        "height": height,
        "content_hash": hash,
        "image_id": a.image_id,
    });
    if attention {
        v["attention"] = json!({"grid": c.grid, "maps": c.alphas});
    }
    v
}

/// The image part of a multipart form: the part named `image`, or else the first file part.
async fn read_multipart(
    req: Request,
    state: &Arc<AppState>,
) -> Result<axum::body::Bytes, ApiError> {
    let mut form = Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::bad_request(format!("the multipart form: {}", e.body_text())))?;
    let mut fallback = None;
    loop {
        let field = form.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else { break };
        let named_image = field.name() == Some("image");
        let is_file = field.file_name().is_some();
        let first_file = is_file && fallback.is_none();
        if !(named_image || first_file) {
            continue;
        }
        let bytes = field.bytes().await.map_err(multipart_error)?;
        if named_image {
            return Ok(bytes);
        }
        fallback = Some(bytes);
    }
    fallback.ok_or_else(|| {
        ApiError::bad_request("the multipart form has no part named \"image\" and no file part")
    })
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(e.status(), format!("the multipart form: {}", e.body_text()))
}
