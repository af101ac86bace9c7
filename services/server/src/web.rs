//! The HTTP side of a query node (`server.http_listen`, and `vidx serve` on one machine): the
//! web UI at `/`, a JSON API mirroring `SearchService` (`POST /v1/search`), each hit's
//! thumbnail (`GET /v1/thumbnails/<id>.jpg`) and clip (`GET /v1/clips/<id>.mp4`, with Range
//! requests, cut from the source on demand and cached), and its OpenAPI document at
//! `/openapi.json`.
//!
//! A listener of its own rather than tonic's port: tonic serves HTTP/2 only, with per-request
//! limits and deadlines made for RPCs, while browsers speak HTTP/1.1 and fetch clips in ranges
//! over seconds. Both sides share the authenticator (bearer tokens, one tenant each), the
//! tenant confinement (every lookup goes through the store's tenant check) and the request
//! limits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use vidx_core::fusion::SearchHit;
use vidx_core::ports::{BlobStore, IndexStore};
use vidx_core::{SearchFilter, TimeRange};
use vidx_media::{InputSource, UrlPolicy};
use vidx_pipeline::{SearchMode, SearchRequest};
use vidx_proto::v1;

use crate::auth::Authenticator;
use crate::{Engine, ServerError};

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const OPENAPI: &str = include_str!("../ui/openapi.json");

/// Largest part of a clip sent in one response: a browser asks for the rest with Range.
const MAX_RANGE_BYTES: u64 = 4 << 20;
/// Clips kept in the cache directory, at most (the oldest go first).
pub const CLIP_CACHE_BYTES: u64 = 2 << 30;

/// Where clips come from and go.
#[derive(Debug, Clone)]
pub struct ClipSettings {
    /// The cache of cut clips.
    pub dir: PathBuf,
    /// Local sources must be under one of these (canonical); empty: any file.
    pub roots: Vec<PathBuf>,
    /// URL sources are checked (and connected to) as the ingest does.
    pub policy: UrlPolicy,
}

/// What the HTTP side needs.
pub struct HttpContext<S> {
    pub engine: Arc<OnceLock<Engine<S>>>,
    pub authenticator: Arc<Authenticator>,
    /// Where the thumbnails and the live footage are (the blob store, or `<data-dir>`);
    /// `None`: neither is served.
    pub media: Option<Arc<dyn BlobStore>>,
    pub clips: ClipSettings,
    /// The node's ingest, for `/v1/jobs` and `/v1/streams`; `None`: a node without the
    /// ingest role (those answer 501).
    pub ingest: Option<Arc<dyn crate::ingest::JobDesk>>,
    /// The standing queries' slots (shared with the gRPC service's).
    pub subscriptions: Arc<crate::subscribe::Slots>,
    /// The node's reindex (nodes with an ingest), for the operator's tenant only.
    pub reindex: crate::lifecycle::ReindexCell,
    /// The operator's tenant (`general.tenant`).
    pub operator: String,
    pub max_request_bytes: usize,
    /// Requests served at once; beyond, `429 Too Many Requests` at once.
    pub permits: Arc<Semaphore>,
}

type Shared<S> = Arc<HttpContext<S>>;

/// An error answered as JSON `{"error": {"code", "message"}}` with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let (http, code) = match status.code() {
            tonic::Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            tonic::Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "failed_precondition"),
            tonic::Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            tonic::Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            tonic::Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            tonic::Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(http, code, status.message().to_string())
    }
}

/// The HTTP routes over `context`.
pub fn router<S: IndexStore + Send + Sync + 'static>(context: Shared<S>) -> Router {
    let limit = context.max_request_bytes;
    Router::new()
        .route(
            "/",
            get(|| async { static_file(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { static_file(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { static_file(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/openapi.json",
            get(|| async { static_file(OPENAPI, "application/json") }),
        )
        .route("/healthz", get(healthz::<S>))
        .route("/v1/search", post(search::<S>))
        .route("/v1/subscribe", get(subscribe::<S>))
        .route("/v1/thumbnails/{file}", get(thumbnail::<S>))
        .route("/v1/clips/{file}", get(clip::<S>).head(clip::<S>))
        .route("/v1/jobs", get(list_jobs::<S>).post(submit_job::<S>))
        .route("/v1/jobs/{id}", get(get_job::<S>))
        .route("/v1/streams", get(list_streams::<S>))
        .route("/v1/streams/{id}/stop", post(stop_stream::<S>))
        .route("/v1/index/delete", post(delete_moments::<S>))
        .route(
            "/v1/index/reindex",
            get(reindex_status::<S>).post(start_reindex::<S>),
        )
        .layer(axum::middleware::from_fn_with_state(
            context.clone(),
            admit::<S>,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(context)
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// At most `permits` requests at once: the rest get 429 at once (a flood cannot queue).
async fn admit<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = context.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "resource_exhausted",
            "too many requests at once; retry shortly",
        )
        .into_response();
    };
    next.run(request).await
}

/// The caller's tenant from `authorization: Bearer …` (every tenant's default without tokens).
fn tenant<S>(context: &HttpContext<S>, headers: &HeaderMap) -> Result<String, ApiError> {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    Ok(context.authenticator.authenticate(&metadata)?.0)
}

fn engine<S>(context: &HttpContext<S>) -> Result<&Engine<S>, ApiError> {
    context
        .engine
        .get()
        .ok_or_else(|| ApiError::unavailable("models are still loading; retry shortly"))
}

async fn healthz<S: Send + Sync + 'static>(State(context): State<Shared<S>>) -> Response {
    match context.engine.get() {
        Some(_) => (StatusCode::OK, "serving\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "loading\n").into_response(),
    }
}

/// `POST /v1/search`: the fields of `SearchService.Search`, with times also as RFC 3339.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    #[serde(default)]
    query: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    stream_id: Option<String>,
    /// Any of these streams.
    #[serde(default)]
    stream_ids: Vec<String>,
    /// Only streams submitted with all of these labels.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    from_ms: Option<u64>,
    #[serde(default)]
    to_ms: Option<u64>,
    /// RFC 3339 (`2026-12-01T10:00:00Z`): a live stream's wall-clock time.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    /// Search by example: an image (JPEG, PNG, …) in base64.
    #[serde(default)]
    image: Option<String>,
    /// Search by example: an earlier hit's id.
    #[serde(default)]
    like_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct SearchAnswer {
    hits: Vec<SearchHit>,
    /// The hits of one stream close in time, merged.
    windows: Vec<WindowAnswer>,
    took_ms: u64,
}

#[derive(Debug, Serialize)]
struct WindowAnswer {
    stream_id: String,
    start_ms: u64,
    end_ms: u64,
    score: f64,
    caption: String,
    best_id: String,
    hits: u32,
}

fn rfc3339_ms(field: &str, text: &str) -> Result<u64, ApiError> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|error| ApiError::invalid(format!("{field}: {error} (RFC 3339 expected)")))?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .map_err(|_| ApiError::invalid(format!("{field}: before 1970")))
}

async fn search<S: IndexStore + Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let tenant = tenant(&context, &headers)?;
    let body: SearchBody = serde_json::from_slice(&body)
        .map_err(|error| ApiError::invalid(format!("request body: {error}")))?;
    let from_ms = match (&body.from, body.from_ms) {
        (Some(text), _) => Some(rfc3339_ms("from", text)?),
        (None, ms) => ms,
    };
    let to_ms = match (&body.to, body.to_ms) {
        (Some(text), _) => Some(rfc3339_ms("to", text)?),
        (None, ms) => ms,
    };
    if body.stream_id.as_deref() == Some("") {
        return Err(ApiError::invalid("stream_id: must not be empty when set"));
    }
    let image = match &body.image {
        Some(encoded) => {
            use base64::Engine as _;
            // A data URL's prefix (what a browser's FileReader gives) is allowed.
            let encoded = encoded
                .rsplit_once(";base64,")
                .map_or(encoded.as_str(), |(_, data)| data);
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|error| ApiError::invalid(format!("image: not base64 ({error})")))?
        }
        None => Vec::new(),
    };
    let like_id = body.like_id.unwrap_or_default();
    let by_example = !image.is_empty() || !like_id.trim().is_empty();
    let mut request = SearchRequest {
        text: body.query,
        filter: SearchFilter {
            tenant,
            streams: crate::query::stream_filter(body.stream_id.as_ref(), &body.stream_ids)?,
            labels: vidx_core::labels::from_map(&body.labels)
                .map_err(|reason| ApiError::invalid(format!("labels: {reason}")))?,
            from_ms,
            to_ms,
            ..SearchFilter::default()
        },
        top_k: body.top_k.unwrap_or(10) as usize,
        mode: SearchMode::parse(&body.mode).map_err(crate::status::from_pipeline)?,
        example: by_example.then(Vec::new),
    };
    request.validate().map_err(crate::status::from_pipeline)?;
    let engine = engine(&context)?;
    if by_example {
        request.example =
            crate::query::example_vector(engine, &request.filter.tenant, image, &like_id).await?;
    }
    let results = vidx_pipeline::search(engine.store.as_ref(), &engine.search, request)
        .await
        .map_err(crate::status::from_pipeline)?;
    let answer = SearchAnswer {
        hits: results.hits.iter().map(SearchHit::from).collect(),
        windows: results
            .windows
            .iter()
            .map(|window| {
                let window = crate::query::window_of(window);
                WindowAnswer {
                    stream_id: window.stream_id,
                    start_ms: window.start_ms,
                    end_ms: window.end_ms,
                    score: window.score,
                    caption: window.caption,
                    best_id: window.best_id,
                    hits: window.hits,
                }
            })
            .collect(),
        took_ms: started.elapsed().as_millis() as u64,
    };
    Ok(axum::Json(answer).into_response())
}

/// `GET /v1/subscribe?query=…[&stream_id=…][&threshold=…][&after=CURSOR]`: a standing query
/// as server-sent events, one `match` event per newly stored moment that matches (its `id`
/// is the cursor; a reconnecting `EventSource` sends it back as `Last-Event-ID`).
async fn subscribe<S: IndexStore + Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio_stream::StreamExt;
    let tenant = tenant(&context, &headers)?;
    let mut request = vidx_proto::v1::SubscribeRequest::default();
    for (key, value) in url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "query" => request.query = value.into_owned(),
            "stream_id" => request.stream_id = Some(value.into_owned()),
            "threshold" => {
                request.threshold = value
                    .parse()
                    .map_err(|_| ApiError::invalid("threshold: not a number"))?;
            }
            "after" => request.after = value.into_owned(),
            other => return Err(ApiError::invalid(format!("unknown parameter `{other}`"))),
        }
    }
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
    {
        request.after = last.to_string();
    }
    let subscription = crate::query::to_subscription(&request, tenant)?;
    let receiver =
        crate::subscribe::start(context.engine.clone(), &context.subscriptions, subscription)
            .map_err(|reason| {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", reason)
            })?;
    let events = tokio_stream::wrappers::ReceiverStream::new(receiver).map(|matched| {
        let event = match matched {
            Ok(matched) => Event::default()
                .event("match")
                .id(matched.cursor.clone())
                .json_data(serde_json::json!({
                    "hit": matched.hit,
                    "indexed_at_ms": matched.indexed_at_ms,
                    "cursor": matched.cursor,
                }))
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(reason) => Event::default().event("error").data(reason),
        };
        Ok::<_, std::convert::Infallible>(event)
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// The node's ingest and the caller's tenant.
fn desk<'c, S>(
    context: &'c HttpContext<S>,
    headers: &HeaderMap,
) -> Result<(&'c dyn crate::ingest::JobDesk, String), ApiError> {
    let tenant = tenant(context, headers)?;
    let desk = context.ingest.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "no_ingest",
            "this node has no ingest role: submit to an ingest node (vidx index --endpoint)",
        )
    })?;
    Ok((desk, tenant))
}

/// A job as JSON (`SubmitRequest`'s progress, states in lower case).
fn job_json(job: &v1::Job) -> serde_json::Value {
    let state = v1::JobState::try_from(job.state).unwrap_or(v1::JobState::Unspecified);
    let state = state
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_ascii_lowercase();
    serde_json::json!({
        "job_id": job.job_id,
        "source": job.source,
        "state": state,
        "segments_total": job.segments_total,
        "segments_done": job.segments_done,
        "segments_failed": job.segments_failed,
        "progress": job.progress,
        "error": job.error,
        "stream": job.stream.as_ref().map(stream_json),
    })
}

/// A live stream as JSON (times in epoch ms).
fn stream_json(stream: &v1::LiveStream) -> serde_json::Value {
    let state = v1::StreamState::try_from(stream.state).unwrap_or(v1::StreamState::Unspecified);
    let state = state
        .as_str_name()
        .trim_start_matches("STREAM_STATE_")
        .to_ascii_lowercase();
    serde_json::json!({
        "job_id": stream.job_id,
        "stream_id": stream.stream_id,
        "source": stream.source,
        "state": state,
        "reason": stream.reason,
        "segments": stream.segments,
        "reconnects": stream.reconnects,
        "last_end_ms": stream.last_end_ms,
    })
}

/// `POST /v1/jobs`: `SubmitRequest` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    source: String,
    #[serde(default)]
    stream_id: Option<String>,
    /// The stream's labels (site, camera group, …): stored on its points, filterable.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

async fn submit_job<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (desk, tenant) = desk(&context, &headers)?;
    let body: SubmitBody = serde_json::from_slice(&body)
        .map_err(|error| ApiError::invalid(format!("request body: {error}")))?;
    let job_id = desk
        .submit(
            &tenant,
            v1::SubmitRequest {
                source: body.source,
                stream_id: body.stream_id,
                labels: body.labels.into_iter().collect(),
            },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "job_id": job_id })),
    )
        .into_response())
}

/// `POST /v1/index/delete`: `{"stream_id": …}` or `{"before": RFC 3339 | "before_ms": …}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    before_ms: Option<u64>,
}

async fn delete_moments<S: IndexStore + Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant(&context, &headers)?;
    let body: DeleteBody = serde_json::from_slice(&body)
        .map_err(|error| ApiError::invalid(format!("request body: {error}")))?;
    let before_ms = match (&body.before, body.before_ms) {
        (Some(text), None) => Some(rfc3339_ms("before", text)?),
        (None, ms) => ms,
        (Some(_), Some(_)) => return Err(ApiError::invalid("send before or before_ms, not both")),
    };
    let scope = match (body.stream_id, before_ms) {
        (Some(stream_id), None) if !stream_id.trim().is_empty() => {
            crate::lifecycle::Scope::Stream(stream_id)
        }
        (None, Some(before_ms)) if before_ms > 0 => crate::lifecycle::Scope::Before(before_ms),
        _ => {
            return Err(ApiError::invalid(
                "send a non-empty stream_id, or a time (before, before_ms), not both",
            ));
        }
    };
    let engine = engine(&context)?;
    let media = crate::lifecycle::MediaPlaces {
        store: context.media.clone(),
        clip_dir: Some(context.clips.dir.clone()),
    };
    let removed = crate::lifecycle::delete(engine.store.as_ref(), &media, &tenant, &scope)
        .await
        .map_err(tonic::Status::from)?;
    tracing::info!(tenant, scope = ?scope, points = removed.points, "moments deleted");
    Ok(Json(serde_json::json!({
        "points": removed.points,
        "thumbnails": removed.thumbnails,
        "footage": removed.footage,
    }))
    .into_response())
}

/// The node's reindex, for the operator's tenant: a reindex rebuilds every tenant's index.
fn reindexer<'a, S>(
    context: &'a Shared<S>,
    headers: &HeaderMap,
) -> Result<&'a dyn crate::lifecycle::ReindexControl, ApiError> {
    let tenant = tenant(context, headers)?;
    if tenant != context.operator {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "a reindex rebuilds every tenant's index: only the operator's tenant (general.tenant) may run it",
        ));
    }
    context.reindex.get().map(Box::as_ref).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unimplemented",
            "reindexing runs on a node with the ingest and query roles, once its index is open",
        )
    })
}

/// `POST /v1/index/reindex`: start a reindex (or join the one running); its status.
async fn start_reindex<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let status = reindexer(&context, &headers)?.start();
    Ok((
        StatusCode::ACCEPTED,
        Json(crate::reindex::status_json(&status)),
    )
        .into_response())
}

/// `GET /v1/index/reindex`: the status of the node's reindex.
async fn reindex_status<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let status = reindexer(&context, &headers)?.status();
    Ok(Json(crate::reindex::status_json(&status)).into_response())
}

async fn list_jobs<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (desk, tenant) = desk(&context, &headers)?;
    let jobs = desk.jobs(&tenant).await?;
    let jobs: Vec<_> = jobs.iter().map(job_json).collect();
    Ok(Json(serde_json::json!({ "jobs": jobs })).into_response())
}

async fn get_job<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (desk, tenant) = desk(&context, &headers)?;
    let job = desk.job(&tenant, &id).await?;
    Ok(Json(job_json(&job)).into_response())
}

async fn list_streams<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (desk, tenant) = desk(&context, &headers)?;
    let streams: Vec<_> = desk.streams(&tenant)?.iter().map(stream_json).collect();
    Ok(Json(serde_json::json!({ "streams": streams })).into_response())
}

async fn stop_stream<S: Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (desk, tenant) = desk(&context, &headers)?;
    let stream = desk.stop_stream(&tenant, &id)?;
    tracing::info!(job_id = id, "live stream stop requested");
    Ok(Json(stream_json(&stream)).into_response())
}

/// `<uuid>.<extension>` → the point id.
fn point_id_of(file: &str, extension: &str) -> Result<uuid::Uuid, ApiError> {
    let id = file.strip_suffix(extension).unwrap_or(file);
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("no such hit: {file}")))
}

/// The caller's hit named by `<uuid><extension>`: another tenant's is a 404, as a missing one.
async fn hit_point<S: IndexStore>(
    context: &HttpContext<S>,
    headers: &HeaderMap,
    file: &str,
    extension: &str,
) -> Result<(uuid::Uuid, vidx_core::IndexPoint), ApiError> {
    let tenant = tenant(context, headers)?;
    let id = point_id_of(file, extension)?;
    let point = engine(context)?
        .store
        .point(&tenant, id)
        .await
        .map_err(|error| ApiError::unavailable(error.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no such hit: {id}")))?;
    Ok((id, point))
}

async fn thumbnail<S: IndexStore + Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    headers: HeaderMap,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (id, point) = hit_point(&context, &headers, &file, ".jpg").await?;
    let (Some(uri), Some(store)) = (point.payload.thumbnail, &context.media) else {
        return Err(ApiError::not_found(format!("hit {id} has no thumbnail")));
    };
    let jpeg = store
        .get(&uri)
        .await
        .map_err(|error| ApiError::not_found(format!("thumbnail of {id}: {error}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            // Per tenant: never in a shared cache.
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        jpeg,
    )
        .into_response())
}

/// What a clip is cut from.
enum ClipFrom {
    /// The recorded source (file or URL).
    Source(InputSource),
    /// A live segment kept by retention.
    Footage(Arc<dyn BlobStore>, (vidx_core::ports::BlobEntry, TimeRange)),
}

/// What the clip of `point` is cut from, if this node may read it: a live stream's kept
/// footage (`410 Gone` once retention deleted it), else its source.
async fn clip_from(
    context: &HttpContext<impl IndexStore>,
    point: &vidx_core::IndexPoint,
) -> Result<ClipFrom, ApiError> {
    let payload = &point.payload;
    if !crate::ingest::is_live_source(&payload.source_uri) {
        return clip_source(&context.clips, &payload.source_uri).map(ClipFrom::Source);
    }
    let Some(store) = &context.media else {
        return Err(ApiError::not_found("this node serves no live footage"));
    };
    let moment = TimeRange::new(payload.start_ms, payload.end_ms);
    match crate::footage::find(store.as_ref(), &payload.tenant, &payload.stream_id, moment).await {
        Ok(found) => Ok(ClipFrom::Footage(store.clone(), found)),
        Err(crate::footage::FootageError::Gone) => Err(gone()),
        Err(error) => Err(ApiError::unavailable(error.to_string())),
    }
}

/// `410 Gone`: retention deleted the footage.
fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "footage_gone",
        crate::footage::FootageError::Gone.to_string(),
    )
}

fn clip_failed(error: vidx_core::MediaError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "clip_failed",
        error.to_string(),
    )
}

/// The recorded source a clip is cut from, if this node may read it.
fn clip_source(settings: &ClipSettings, source_uri: &str) -> Result<InputSource, ApiError> {
    match vidx_media::stored_source(source_uri).map_err(ApiError::not_found)? {
        InputSource::Url(url) => {
            settings
                .policy
                .checked_addresses(&url)
                .map_err(|reason| ApiError::not_found(format!("source refused: {reason}")))?;
            Ok(InputSource::Url(url))
        }
        InputSource::File(path) => {
            let path = std::fs::canonicalize(path).map_err(|_| {
                ApiError::not_found("the source file is not reachable from this node")
            })?;
            if !settings.roots.is_empty()
                && !settings.roots.iter().any(|root| path.starts_with(root))
            {
                return Err(ApiError::not_found(
                    "the source file is outside server.ingest_roots",
                ));
            }
            Ok(InputSource::File(path))
        }
    }
}

/// What the cache keeps beside a clip: where it starts.
#[derive(Debug, Serialize, Deserialize)]
struct ClipMeta {
    start_ms: u64,
    end_ms: u64,
}

/// Remove hit `id`'s clip and its metadata from the cache in `dir`; whether a clip was there.
pub(crate) fn forget_cached_clip(dir: &Path, id: uuid::Uuid) -> bool {
    let removed = std::fs::remove_file(dir.join(format!("{id}.mp4"))).is_ok();
    let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
    removed
}

/// The clip of hit `id` in the cache, cut first if needed.
async fn cached_clip(
    settings: &ClipSettings,
    id: uuid::Uuid,
    from: ClipFrom,
    range: TimeRange,
) -> Result<(PathBuf, ClipMeta), ApiError> {
    let path = settings.dir.join(format!("{id}.mp4"));
    let meta_path = settings.dir.join(format!("{id}.json"));
    if let (Ok(meta), true) = (std::fs::read(&meta_path), path.is_file())
        && let Ok(meta) = serde_json::from_slice::<ClipMeta>(&meta)
    {
        return Ok((path, meta));
    }
    std::fs::create_dir_all(&settings.dir)
        .map_err(|error| ApiError::unavailable(format!("clip cache: {error}")))?;
    let partial = settings
        .dir
        .join(format!(".{id}-{}.mp4", uuid::Uuid::new_v4()));
    let options = vidx_media::ClipOptions {
        url_guard: (!settings.policy.allow_private_hosts).then(|| settings.policy.clone()),
    };
    let cut_to = partial.clone();
    let clip = match from {
        ClipFrom::Source(source) => tokio::task::spawn_blocking(move || {
            vidx_media::cut_clip(&source, range, &cut_to, &options)
        })
        .await
        .map_err(|error| ApiError::unavailable(format!("cutting the clip: {error}")))?
        .map_err(clip_failed),
        ClipFrom::Footage(store, found) => crate::footage::cut(
            store.as_ref(),
            found,
            range,
            &cut_to,
            &settings.dir,
            options,
        )
        .await
        .map_err(|error| match error {
            crate::footage::FootageError::Gone => gone(),
            crate::footage::FootageError::Store(error) => ApiError::unavailable(error.to_string()),
            crate::footage::FootageError::Media(error) => clip_failed(error),
        }),
    };
    let clip = match clip {
        Ok(clip) => clip,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    let meta = ClipMeta {
        start_ms: clip.start_ms,
        end_ms: clip.end_ms,
    };
    let written = serde_json::to_vec(&meta)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&meta_path, bytes))
        .and_then(|()| std::fs::rename(&partial, &path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(ApiError::unavailable(format!("clip cache: {error}")));
    }
    evict(&settings.dir, CLIP_CACHE_BYTES);
    Ok((path, meta))
}

/// Remove the least recently written clips until the cache holds at most `limit` bytes.
fn evict(dir: &Path, limit: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut clips: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "mp4"))
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), entry.path()))
        })
        .collect();
    let mut total: u64 = clips.iter().map(|(_, bytes, _)| bytes).sum();
    clips.sort();
    for (_, bytes, path) in clips {
        if total <= limit {
            break;
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("json"));
        total = total.saturating_sub(bytes);
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` of a `size`-byte file → the inclusive range, or
/// `None` when unsatisfiable. Several ranges: the first.
fn byte_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header
        .trim()
        .strip_prefix("bytes=")?
        .split(',')
        .next()?
        .trim();
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            if suffix == 0 {
                return None;
            }
            (size.saturating_sub(suffix), size.checked_sub(1)?)
        }
        (start, "") => (start.parse().ok()?, size.checked_sub(1)?),
        (start, end) => (
            start.parse().ok()?,
            end.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    (start <= end && start < size).then_some((start, end))
}

async fn clip<S: IndexStore + Send + Sync + 'static>(
    State(context): State<Shared<S>>,
    method: Method,
    headers: HeaderMap,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (id, point) = hit_point(&context, &headers, &file, ".mp4").await?;
    let from = match clip_from(&context, &point).await {
        Ok(from) => from,
        Err(error) => {
            if error.status == StatusCode::GONE {
                // A clip cut before retention deleted its footage goes with it.
                forget_cached_clip(&context.clips.dir, id);
            }
            return Err(error);
        }
    };
    let range = TimeRange::new(point.payload.start_ms, point.payload.end_ms);
    let (path, meta) = cached_clip(&context.clips, id, from, range).await?;
    let size = tokio::fs::metadata(&path)
        .await
        .map_err(|error| ApiError::unavailable(format!("clip cache: {error}")))?
        .len();
    let requested = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(|value| byte_range(value, size));
    let (status, start, end) = match requested {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(Some((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end.min(start + MAX_RANGE_BYTES - 1),
        ),
        Some(None) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response());
        }
    };
    let length = if size == 0 { 0 } else { end - start + 1 };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "video/mp4")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, length)
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        // Where the clip starts in the source, and where the hit starts in the clip.
        .header("x-vidx-clip-start-ms", meta.start_ms)
        .header("x-vidx-clip-end-ms", meta.end_ms)
        .header(
            "x-vidx-hit-offset-ms",
            point.payload.start_ms.saturating_sub(meta.start_ms),
        )
        .header(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "x-vidx-clip-start-ms, x-vidx-clip-end-ms, x-vidx-hit-offset-ms",
        );
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    let body = if method == Method::HEAD || length == 0 {
        Body::empty()
    } else {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|error| ApiError::unavailable(format!("clip cache: {error}")))?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|error| ApiError::unavailable(format!("clip cache: {error}")))?;
        let limited = file.take(length);
        Body::from_stream(tokio_util::io::ReaderStream::new(limited))
    };
    response
        .body(body)
        .map_err(|error| ApiError::unavailable(error.to_string()))
}

/// Serve `router` on `listener` (with TLS when `tls` is set) until `shutdown`.
pub async fn serve_http(
    router: Router,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ReloadingConfig>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    serve_router(router, listener, tls, shutdown, "HTTP listener").await
}

/// An axum `router` on `listener`, over TLS when `tls` is set, until `shutdown`; errors name
/// the listener as `what` (the HTTP API, the metrics endpoint).
pub(crate) async fn serve_router(
    router: Router,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ReloadingConfig>>,
    shutdown: watch::Receiver<bool>,
    what: &str,
) -> Result<(), ServerError> {
    let stopped = crate::stopped(shutdown.clone());
    let served = match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
        }
        Some(config) => {
            let local = listener
                .local_addr()
                .map_err(|error| ServerError::Transport(error.to_string()))?;
            let listener = crate::tls::TlsListener {
                incoming: crate::tls::accept(listener, config, shutdown),
                local,
            };
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
        }
    };
    served.map_err(|error| ServerError::Transport(format!("{what}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(byte_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(byte_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(byte_range("bytes=0-0,5-9", 1000), Some((0, 0)));
        assert_eq!(byte_range("bytes=1000-", 1000), None);
        assert_eq!(byte_range("bytes=-0", 1000), None);
        assert_eq!(byte_range("bytes=9-3", 1000), None);
        assert_eq!(byte_range("items=0-1", 1000), None);
        assert_eq!(byte_range("bytes=0-", 0), None);
    }
}
