//! The HTTP server of `gaze serve` and `gaze watch --http`: the JSON API under `/v1`
//! (docs/HTTP.md, docs/openapi.json), Prometheus metrics, health checks and the web page.
//!
//! It runs on a tokio runtime of its own (`[http] threads`), on its own threads, beside the
//! daemon's stages. Uploads are decoded on that runtime's blocking pool and handed to the
//! daemon's batcher through a bounded queue ([`crate::daemon::Uploads`]), so they are batched
//! with watched files by the one inference worker; the answer comes back on a oneshot channel.
//! Reads go to the store through read-only connections kept in a small pool, run on the
//! blocking pool too: no captioning thread ever waits on a client.
//!
//! - [`api`]: the routes that read (images, status, models, metrics, health).
//! - [`caption`]: `POST /v1/caption`.
//! - [`files`]: serving an image file only from under a watched folder.
//! - [`auth`]: the bearer token (and its cookie, for the page).

mod api;
mod auth;
mod caption;
mod files;
mod params;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::config::Config;
use crate::daemon::{Daemon, ModelSwap, Uploads};
use crate::data::image::DecodeOptions;
use crate::store::api::CaptionStore;
use crate::store::path_key::Roots;
use crate::store::registry::Recaption;
use crate::store::{BoxedStore, Location};
use crate::telemetry::Telemetry;

/// Every route, as (method, path template); docs/openapi.json names exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/caption"),
    ("GET", "/v1/images"),
    ("GET", "/v1/images/{id}"),
    ("GET", "/v1/images/{id}/attention.png"),
    ("GET", "/v1/images/{id}/file"),
    ("GET", "/v1/status"),
    ("GET", "/v1/models"),
    ("POST", "/v1/models/{id}/activate"),
];

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen {addr:?}: {reason}")]
    Listen { addr: String, reason: String },
    #[error(
        "http.listen {addr}: not a loopback address, so every request must carry a token: set \
         [http] token (or GAZE_HTTP_TOKEN), or listen on 127.0.0.1"
    )]
    NeedsToken { addr: SocketAddr },
    #[error("http.listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the HTTP server: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The server's settings, from `[http]` and the daemon's own.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub max_body_bytes: usize,
    pub max_concurrent_uploads: usize,
    pub request_timeout: Duration,
    pub threads: usize,
    /// How uploads are decoded (the daemon's pixel limit); its `max_file_bytes` is also the
    /// largest file `/file` serves.
    pub decode: DecodeOptions,
    /// What an activated model captions again.
    pub recaption: Recaption,
    /// Where registry model files are looked for when their recorded path is missing.
    pub models_dir: Option<PathBuf>,
}

impl HttpOptions {
    /// `cfg`'s `[http]` settings with `listen` resolved; off loopback a token is required.
    pub fn from_config(cfg: &Config) -> Result<Self, HttpError> {
        let h = &cfg.http;
        let listen = parse_listen(&h.listen)?;
        let token = h.token.clone().filter(|t| !t.is_empty());
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(HttpError::NeedsToken { addr: listen });
        }
        Ok(HttpOptions {
            listen,
            token,
            max_body_bytes: usize::try_from(h.max_body_bytes).unwrap_or(usize::MAX),
            max_concurrent_uploads: h.max_concurrent_uploads.max(1),
            request_timeout: Duration::from_millis(h.request_timeout_ms.max(1)),
            threads: h.threads.max(1),
            decode: DecodeOptions {
                max_pixels: cfg.limits.max_pixels,
                max_file_bytes: cfg.limits.max_file_bytes,
            },
            recaption: cfg.retrain.recaption,
            models_dir: cfg.worker.models_dir.clone(),
        })
    }
}

/// `host:port` (a name is resolved; its first address is used).
fn parse_listen(text: &str) -> Result<SocketAddr, HttpError> {
    use std::net::ToSocketAddrs;
    let bad = |reason: String| HttpError::Listen {
        addr: text.into(),
        reason,
    };
    text.to_socket_addrs()
        .map_err(|e| {
            bad(format!(
                "{e} (expected host:port, for example 127.0.0.1:8080)"
            ))
        })?
        .next()
        .ok_or_else(|| bad("the name has no address".into()))
}

/// What the server needs of a running daemon.
#[derive(Clone)]
pub struct DaemonLink {
    pub db: Location,
    pub telemetry: Arc<Telemetry>,
    /// The run's counts (images captioned).
    pub(crate) counters: Arc<crate::daemon::Counters>,
    /// `None` when the daemon captions nothing (`--no-caption`).
    pub uploads: Option<Uploads>,
    pub swap: ModelSwap,
    /// The device models are loaded on (for activation).
    pub device: candle_core::Device,
    /// The watched folders, with every link resolved: `/file` serves only from under them.
    pub watched: Vec<PathBuf>,
    pub keys: Roots,
}

impl DaemonLink {
    pub fn of(daemon: &Daemon) -> Self {
        let opts = daemon.options();
        DaemonLink {
            db: daemon.location().clone(),
            telemetry: daemon.telemetry(),
            counters: daemon.counters(),
            uploads: daemon.uploads(),
            swap: daemon.model_swap(),
            device: daemon
                .started_with()
                .map(|m| m.model.device.clone())
                .unwrap_or(candle_core::Device::Cpu),
            watched: daemon.watched().to_vec(),
            keys: opts.keys.clone(),
        }
    }
}

/// Shared by every request.
pub(crate) struct AppState {
    pub opts: HttpOptions,
    pub link: DaemonLink,
    /// Uploads being read or decoded now.
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    /// Read-only store connections, reused between requests.
    readers: Mutex<Vec<BoxedStore>>,
}

/// An error answer: a status and a sentence, as `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for `Retry-After` (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl AppState {
    /// Runs `f` on a read-only store connection, on the blocking pool.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn CaptionStore) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = state
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let store = match pooled {
                Some(s) => s,
                None => crate::store::open_read_only(&state.link.db)?,
            };
            let result = f(&*store);
            let mut pool = state.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 8 {
                pool.push(store);
            }
            result
        })
        .await
        .map_err(|e| ApiError::internal(format!("a store read failed: {e}")))?
    }

    /// Runs blocking work (decoding, drawing) on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal(format!("the work failed: {e}")))?
    }
}

/// The route template `path` matches (for metrics labels), or `None`.
pub(crate) fn route_of(method: &str, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES.iter().find_map(|&(m, template)| {
        let parts: Vec<&str> = template.split('/').collect();
        let matches = m == method
            && parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(p, s)| p == s || (p.starts_with('{') && !s.is_empty()));
        matches.then_some(template)
    })
}

fn router(state: Arc<AppState>) -> Router {
    let body_limit = DefaultBodyLimit::max(state.opts.max_body_bytes);
    Router::new()
        .route("/", get(api::page))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/v1/caption", post(caption::caption).layer(body_limit))
        .route("/v1/images", get(api::images))
        .route("/v1/images/{id}", get(api::image))
        .route("/v1/images/{id}/attention.png", get(api::attention_png))
        .route("/v1/images/{id}/file", get(files::file))
        .route("/v1/status", get(api::status))
        .route("/v1/models", get(api::models))
        .route("/v1/models/{id}/activate", post(api::activate))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// Before every route: the token; after it: the request's count and latency by route.
async fn front(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(req.method().as_str(), req.uri().path()).unwrap_or("unmatched");
    let response = match auth::refusal(&state.opts, &req) {
        None => next.run(req).await,
        Some(refusal) => refusal,
    };
    state
        .link
        .telemetry
        .http_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// A running HTTP server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Binds `opts.listen` (port 0 picks a free one) and serves on threads of its own.
    pub fn start(opts: HttpOptions, link: DaemonLink) -> Result<Server, HttpError> {
        let listener =
            std::net::TcpListener::bind(opts.listen).map_err(|source| HttpError::Bind {
                addr: opts.listen,
                source,
            })?;
        let bind_err = |source| HttpError::Bind {
            addr: opts.listen,
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .max_blocking_threads((opts.threads * 4).max(8))
            .thread_name("gaze-http")
            .enable_all()
            .build()
            .map_err(HttpError::Runtime)?;
        let state = Arc::new(AppState {
            upload_slots: Arc::new(tokio::sync::Semaphore::new(opts.max_concurrent_uploads)),
            opts,
            link,
            readers: Mutex::new(Vec::new()),
        });
        let app = router(state);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("gaze-http-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop_rx.await;
                        })
                        .await
                })
            })
            .map_err(HttpError::Runtime)?;
        tracing::info!(%addr, "HTTP server listening (the page is at http://{addr}/)");
        Ok(Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections, lets the requests in progress finish, and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server ended with an error"),
                Err(_) => tracing::error!("the HTTP server thread panicked"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_matched_by_template() {
        assert_eq!(route_of("GET", "/v1/images/12"), Some("/v1/images/{id}"));
        assert_eq!(
            route_of("GET", "/v1/images/12/attention.png"),
            Some("/v1/images/{id}/attention.png")
        );
        assert_eq!(route_of("POST", "/v1/images/12"), None);
        assert_eq!(route_of("GET", "/v1/images//file"), None);
        assert_eq!(route_of("GET", "/"), Some("/"));
        assert_eq!(route_of("GET", "/nope"), None);
    }

    #[test]
    fn off_loopback_a_token_is_required() {
        let mut cfg = Config::default();
        cfg.http.listen = "0.0.0.0:0".into();
        assert!(matches!(
            HttpOptions::from_config(&cfg),
            Err(HttpError::NeedsToken { .. })
        ));
        cfg.http.token = Some("secret".into());
        assert!(HttpOptions::from_config(&cfg).is_ok());
        cfg.http.listen = "no port".into();
        assert!(matches!(
            HttpOptions::from_config(&cfg),
            Err(HttpError::Listen { .. })
        ));
    }
}
