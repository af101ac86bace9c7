//! `SearchService`: validate, confine to the caller's tenant, embed the query, search.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tonic::{Request, Response, Status};
use vidx_core::SearchFilter;
use vidx_core::fusion::SearchHit;
use vidx_core::ports::IndexStore;
use vidx_pipeline::{SearchMode, SearchRequest};
use vidx_proto::v1;

use crate::auth::tenant_of;
use crate::status::{from_pipeline, invalid};
use crate::{Engine, Metrics};

pub struct QueryApi<S> {
    engine: Arc<OnceLock<Engine<S>>>,
    metrics: Arc<Metrics>,
    subscriptions: Arc<crate::subscribe::Slots>,
}

impl<S> QueryApi<S> {
    /// `subscriptions`: the standing queries' slots, shared with the HTTP API's.
    pub fn new(
        engine: Arc<OnceLock<Engine<S>>>,
        metrics: Arc<Metrics>,
        subscriptions: Arc<crate::subscribe::Slots>,
    ) -> Self {
        Self {
            engine,
            metrics,
            subscriptions,
        }
    }
}

/// The example vector of a search by example: an image embedded by the node's PE-Core model,
/// or the stored visual (else region) vector of the caller's hit `like_id`; `None` for a
/// text search.
pub async fn example_vector<S: IndexStore>(
    engine: &Engine<S>,
    tenant: &str,
    image: Vec<u8>,
    like_id: &str,
) -> Result<Option<Vec<f32>>, Status> {
    match (image.is_empty(), like_id.trim().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Err(invalid("like_id", "send an image or a like_id, not both")),
        (false, true) => {
            let Some(visual) = engine.models.visual_embedder.clone() else {
                return Err(Status::failed_precondition(
                    "search by image needs a PE-Core model on the query node (models.visual_embedder)",
                ));
            };
            let sampler = engine.sampler.clone();
            let embedded = tokio::task::spawn_blocking(move || {
                let bytes: vidx_core::ports::SharedBytes = Arc::new(image);
                let frames = sampler
                    .sample_bytes(bytes, vidx_core::TimeRange::new(0, 1000), 1)
                    .map_err(|error| invalid("image", format!("not a readable image ({error})")))?;
                let mut vectors = visual
                    .embed_frames(&frames)
                    .map_err(|error| Status::internal(format!("embedding the image: {error}")))?;
                vectors
                    .pop()
                    .ok_or_else(|| Status::internal("no image embedding"))
            })
            .await
            .map_err(|error| Status::internal(error.to_string()))??;
            Ok(Some(embedded))
        }
        (true, false) => {
            let id = uuid::Uuid::parse_str(like_id.trim())
                .map_err(|_| invalid("like_id", "not a hit id"))?;
            let point = engine
                .store
                .point(tenant, id)
                .await
                .map_err(|error| Status::unavailable(error.to_string()))?
                .ok_or_else(|| Status::not_found(format!("like_id: no hit {id}")))?;
            let vector = [
                vidx_core::types::vector_names::VISUAL,
                vidx_core::types::vector_names::REGION,
            ]
            .iter()
            .find_map(|name| point.vectors.get(*name).cloned())
            .ok_or_else(|| {
                invalid(
                    "like_id",
                    format!(
                        "this {} has no visual or region vector (indexed without a visual model)",
                        point.payload.kind.as_str()
                    ),
                )
            })?;
            Ok(Some(vector))
        }
    }
}

/// A merged window as the API returns it.
pub fn window_of(window: &vidx_core::fusion::MomentWindow) -> v1::Window {
    v1::Window {
        stream_id: window.stream_id.clone(),
        start_ms: window.start_ms,
        end_ms: window.end_ms,
        score: window.score,
        caption: window.best.payload.caption.clone(),
        best_id: window.best.id.to_string(),
        hits: window.members.len() as u32,
    }
}

/// The search request in core terms. The tenant comes from authentication, never from the
/// request: whatever filter a caller sends, it only ever sees its own tenant's points.
pub fn to_search_request(
    request: &v1::SearchRequest,
    tenant: String,
) -> Result<SearchRequest, Status> {
    let mode = SearchMode::parse(&request.mode).map_err(from_pipeline)?;
    let streams = stream_filter(request.stream_id.as_ref(), &request.stream_ids)?;
    let labels =
        vidx_core::labels::from_map(&request.labels).map_err(|reason| invalid("labels", reason))?;
    let example = (!request.image.is_empty() || !request.like_id.trim().is_empty()).then(Vec::new);
    let search = SearchRequest {
        text: request.query.clone(),
        filter: SearchFilter {
            tenant,
            streams,
            labels,
            from_ms: request.from_ms,
            to_ms: request.to_ms,
            ..SearchFilter::default()
        },
        top_k: request.top_k as usize,
        mode,
        // A placeholder until the example is embedded (validation sees a search by example).
        example,
    };
    search.validate().map_err(from_pipeline)?;
    Ok(search)
}

/// Most streams one search may name.
pub const MAX_STREAMS_PER_SEARCH: usize = 64;

/// The streams a search is restricted to: `stream_id` and `stream_ids` together, each
/// non-empty, at most [`MAX_STREAMS_PER_SEARCH`]; empty: every stream.
pub fn stream_filter(
    stream_id: Option<&String>,
    stream_ids: &[String],
) -> Result<Vec<String>, Status> {
    if stream_id.is_some_and(|stream_id| stream_id.is_empty()) {
        return Err(invalid("stream_id", "must not be empty when set"));
    }
    if stream_ids.iter().any(String::is_empty) {
        return Err(invalid("stream_ids", "an empty stream id"));
    }
    let mut streams: Vec<String> = stream_id.into_iter().chain(stream_ids).cloned().collect();
    streams.sort();
    streams.dedup();
    if streams.len() > MAX_STREAMS_PER_SEARCH {
        return Err(invalid(
            "stream_ids",
            format!("at most {MAX_STREAMS_PER_SEARCH} streams per search"),
        ));
    }
    Ok(streams)
}

/// A standing query's settings from its request, confined to `tenant`.
pub fn to_subscription(
    request: &v1::SubscribeRequest,
    tenant: String,
) -> Result<crate::subscribe::Subscription, Status> {
    if request.query.trim().is_empty() {
        return Err(invalid("query", "must not be empty"));
    }
    if request.query.chars().count() > vidx_pipeline::MAX_QUERY_CHARS {
        return Err(invalid(
            "query",
            format!("longer than {} characters", vidx_pipeline::MAX_QUERY_CHARS),
        ));
    }
    if !(0.0..=1.0).contains(&request.threshold) {
        return Err(invalid("threshold", "must be between 0 and 1"));
    }
    if request.stream_id.as_deref() == Some("") {
        return Err(invalid("stream_id", "must not be empty when set"));
    }
    let after = crate::subscribe::parse_cursor(&request.after, crate::subscribe::now_ms())
        .map_err(|reason| invalid("after", reason))?;
    Ok(crate::subscribe::Subscription {
        tenant,
        query: request.query.clone(),
        stream_id: request.stream_id.clone(),
        threshold: if request.threshold == 0.0 {
            crate::subscribe::DEFAULT_THRESHOLD
        } else {
            request.threshold
        },
        after,
    })
}

type MatchStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::Match, Status>> + Send>>;

#[tonic::async_trait]
impl<S: IndexStore> v1::search_service_server::SearchService for QueryApi<S> {
    type SubscribeStream = MatchStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use tokio_stream::StreamExt;
        let tenant = tenant_of(&request)?;
        let subscription = to_subscription(request.get_ref(), tenant)?;
        let receiver =
            crate::subscribe::start(self.engine.clone(), &self.subscriptions, subscription)
                .map_err(Status::resource_exhausted)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver).map(|matched| {
            matched
                .map(|matched| v1::Match {
                    hit: Some(v1::Hit::from(&matched.hit)),
                    indexed_at_ms: matched.indexed_at_ms,
                    cursor: matched.cursor,
                })
                .map_err(Status::unavailable)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        let started = Instant::now();
        let tenant = tenant_of(&request)?;
        let mut message = request.into_inner();
        let like_id = message.like_id.clone();
        // Checked with the image's presence, then taken out (it is embedded below).
        let mut search = to_search_request(&message, tenant)?;
        let image = std::mem::take(&mut message.image);
        let engine = self
            .engine
            .get()
            .ok_or_else(|| Status::unavailable("models are still loading; retry shortly"))?;
        if search.example.is_some() {
            search.example = example_vector(engine, &search.filter.tenant, image, &like_id).await?;
        }
        let results = vidx_pipeline::search(engine.store.as_ref(), &engine.search, search)
            .await
            .map_err(|error| {
                self.metrics.search_errors.inc();
                from_pipeline(error)
            })?;
        self.metrics
            .search_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::new(v1::SearchResponse {
            hits: results
                .hits
                .iter()
                .map(|hit| v1::Hit::from(&SearchHit::from(hit)))
                .collect(),
            took_ms: started.elapsed().as_millis() as u64,
            windows: results.windows.iter().map(window_of).collect(),
        }))
    }
}
