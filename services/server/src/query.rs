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
}

impl<S> QueryApi<S> {
    pub fn new(engine: Arc<OnceLock<Engine<S>>>, metrics: Arc<Metrics>) -> Self {
        Self { engine, metrics }
    }
}

/// The search request in core terms. The tenant comes from authentication, never from the
/// request: whatever filter a caller sends, it only ever sees its own tenant's points.
pub fn to_search_request(
    request: v1::SearchRequest,
    tenant: String,
) -> Result<SearchRequest, Status> {
    let mode = SearchMode::parse(&request.mode).map_err(from_pipeline)?;
    if let Some(stream_id) = &request.stream_id
        && stream_id.is_empty()
    {
        return Err(invalid("stream_id", "must not be empty when set"));
    }
    let search = SearchRequest {
        text: request.query,
        filter: SearchFilter {
            tenant,
            stream_id: request.stream_id,
            from_ms: request.from_ms,
            to_ms: request.to_ms,
        },
        top_k: request.top_k as usize,
        mode,
        example: None,
    };
    search.validate().map_err(from_pipeline)?;
    Ok(search)
}

#[tonic::async_trait]
impl<S: IndexStore> v1::search_service_server::SearchService for QueryApi<S> {
    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        let started = Instant::now();
        let tenant = tenant_of(&request)?;
        let search = to_search_request(request.into_inner(), tenant)?;
        let engine = self
            .engine
            .get()
            .ok_or_else(|| Status::unavailable("models are still loading; retry shortly"))?;
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
        }))
    }
}
