//! The index's life cycle: deleting what a tenant no longer wants indexed — every moment of
//! one stream ("forget this camera"), or every moment indexed before a time — with what
//! belongs to those moments: their thumbnails, the stream's kept live footage and the clips
//! this node cut from them; and the sweeper that enforces `store.retention` per tenant.
//!
//! Order matters for a delete that fails half-way: the points go first (a search never
//! returns a moment whose thumbnail is gone), then the media. A retry (deletes are
//! idempotent) finds no points and no thumbnail references left, but footage and clips are
//! found by listing, so nothing is left behind once a retry succeeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vidx_core::ports::{BlobStore, IndexStore};
use vidx_core::{BlobError, SearchFilter, StoreError};
use vidx_proto::v1;

/// What to delete of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every moment of this stream, its thumbnails and all its live footage.
    Stream(String),
    /// Every moment indexed (stored) before this wall-clock time (epoch ms), their thumbnails,
    /// and live footage that ended before it.
    Before(u64),
}

/// What a delete removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub points: u64,
    pub thumbnails: u64,
    /// Live footage segments.
    pub footage: u64,
    /// Clips this node had cut and cached.
    pub clips: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("index: {0}")]
    Store(#[from] StoreError),
    #[error("media store: {0}")]
    Media(#[from] BlobError),
    #[error("{0}")]
    Invalid(String),
}

/// Where a node keeps what belongs to the points besides the index.
#[derive(Clone)]
pub struct MediaPlaces {
    /// Thumbnails and live footage; none on a node without a media store.
    pub store: Option<Arc<dyn BlobStore>>,
    /// The clip cache of this node's HTTP API.
    pub clip_dir: Option<PathBuf>,
}

/// Delete `scope` of `tenant`. Safe to retry: deleting what is gone removes nothing.
pub async fn delete<S: IndexStore>(
    store: &S,
    media: &MediaPlaces,
    tenant: &str,
    scope: &Scope,
) -> Result<Removed, DeleteError> {
    if tenant.is_empty() {
        return Err(DeleteError::Invalid("no tenant".into()));
    }
    let filter = match scope {
        Scope::Stream(stream_id) if stream_id.is_empty() => {
            return Err(DeleteError::Invalid("stream_id must not be empty".into()));
        }
        Scope::Stream(stream_id) => SearchFilter {
            tenant: tenant.to_string(),
            streams: vec![stream_id.clone()],
            ..SearchFilter::default()
        },
        Scope::Before(before_ms) => SearchFilter {
            tenant: tenant.to_string(),
            indexed_before_ms: Some(*before_ms),
            ..SearchFilter::default()
        },
    };
    let deleted = store.delete(filter).await?;
    let mut removed = Removed {
        points: deleted.ids.len() as u64,
        ..Removed::default()
    };
    if let Some(clip_dir) = &media.clip_dir {
        removed.clips = remove_clips(clip_dir, &deleted.ids);
    }
    let Some(blobs) = &media.store else {
        return Ok(removed);
    };
    for uri in &deleted.thumbnails {
        blobs.delete(uri).await?;
        removed.thumbnails += 1;
    }
    let footage = match scope {
        Scope::Stream(stream_id) => blobs
            .list(&crate::footage::stream_prefix(tenant, stream_id))
            .await?
            .into_iter()
            .collect::<Vec<_>>(),
        Scope::Before(before_ms) => blobs
            .list(&crate::footage::tenant_prefix(tenant))
            .await?
            .into_iter()
            .filter(|entry| crate::footage::ended_before(&entry.key, *before_ms))
            .collect(),
    };
    for entry in footage {
        blobs.delete(&entry.uri).await?;
        removed.footage += 1;
    }
    Ok(removed)
}

/// Remove the cached clips of `ids`; how many clips went.
fn remove_clips(clip_dir: &Path, ids: &[uuid::Uuid]) -> u64 {
    ids.iter()
        .filter(|id| crate::web::forget_cached_clip(clip_dir, **id))
        .count() as u64
}

/// `store.retention`: how long each tenant's moments are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreRetention {
    /// Every tenant's bound; `None` keeps moments forever.
    pub default_max_age: Option<Duration>,
    /// Tenants with their own bound (`None`: forever).
    pub tenants: BTreeMap<String, Option<Duration>>,
}

impl StoreRetention {
    pub fn from_config(config: &vidx_config::StoreRetentionConfig) -> Self {
        let bound = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
        Self {
            default_max_age: bound(config.max_age_secs),
            tenants: config
                .tenants
                .iter()
                .map(|(tenant, secs)| (tenant.clone(), bound(*secs)))
                .collect(),
        }
    }

    /// The bound of `tenant`.
    pub fn max_age(&self, tenant: &str) -> Option<Duration> {
        match self.tenants.get(tenant) {
            Some(bound) => *bound,
            None => self.default_max_age,
        }
    }

    /// Whether any tenant's moments expire.
    pub fn is_active(&self) -> bool {
        self.default_max_age.is_some() || self.tenants.values().any(Option::is_some)
    }

    /// How often the sweeper runs: a tenth of the shortest bound, between 1 s and 10 min.
    pub fn sweep_interval(&self) -> Duration {
        self.tenants
            .values()
            .flatten()
            .chain(self.default_max_age.as_ref())
            .min()
            .map_or(Duration::from_secs(600), |shortest| *shortest / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(600))
    }
}

/// One sweep as of `now_ms`: each of `tenants` loses what is older than its bound.
pub async fn sweep<S: IndexStore>(
    store: &S,
    media: &MediaPlaces,
    retention: &StoreRetention,
    tenants: &[String],
    now_ms: u64,
) -> Result<BTreeMap<String, Removed>, DeleteError> {
    let mut swept = BTreeMap::new();
    for tenant in tenants {
        let Some(max_age) = retention.max_age(tenant) else {
            continue;
        };
        let horizon = now_ms.saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
        let removed = delete(store, media, tenant, &Scope::Before(horizon)).await?;
        swept.insert(tenant.clone(), removed);
    }
    Ok(swept)
}

/// The tenants a node knows: its tokens' and the default one, and those `store.retention`
/// names. Every point a node writes belongs to one of its tokens' tenants (or the default
/// without tokens), so these are the tenants whose moments can expire.
pub fn known_tenants(config: &vidx_config::Config) -> Vec<String> {
    let mut tenants: Vec<String> = config
        .server
        .tokens
        .iter()
        .map(|token| token.tenant.clone())
        .chain(std::iter::once(config.general.tenant.clone()))
        .chain(config.store.retention.tenants.keys().cloned())
        .collect();
    tenants.sort();
    tenants.dedup();
    tenants
}

/// Sweep every [`StoreRetention::sweep_interval`] until `shutdown`; a failed sweep is
/// logged and tried again at the next one.
pub fn spawn_retention_sweeper<S: IndexStore>(
    store: Arc<S>,
    media: MediaPlaces,
    retention: StoreRetention,
    tenants: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !retention.is_active() {
        return None;
    }
    Some(tokio::spawn(async move {
        let interval = retention.sweep_interval();
        tracing::info!(
            interval_secs = interval.as_secs_f64(),
            tenants = tenants.len(),
            "index retention sweeper started"
        );
        loop {
            let now_ms = crate::subscribe::now_ms();
            match sweep(store.as_ref(), &media, &retention, &tenants, now_ms).await {
                Ok(swept) => {
                    for (tenant, removed) in swept {
                        if removed.points > 0 || removed.footage > 0 {
                            tracing::info!(
                                tenant,
                                points = removed.points,
                                thumbnails = removed.thumbnails,
                                footage = removed.footage,
                                "expired moments deleted (store.retention)"
                            );
                        }
                    }
                }
                Err(error) => tracing::warn!(error = %error, "index retention sweep failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }))
}

impl DeleteError {
    pub fn code(&self) -> vidx_core::ErrorCode {
        match self {
            DeleteError::Store(error) => error.code(),
            DeleteError::Media(_) => vidx_core::ErrorCode::Unavailable,
            DeleteError::Invalid(_) => vidx_core::ErrorCode::InvalidInput,
        }
    }
}

impl From<DeleteError> for tonic::Status {
    fn from(error: DeleteError) -> Self {
        match error.code() {
            vidx_core::ErrorCode::InvalidInput | vidx_core::ErrorCode::Unsupported => {
                tonic::Status::invalid_argument(error.to_string())
            }
            vidx_core::ErrorCode::Internal => {
                tracing::error!(error = %error, "delete failed");
                tonic::Status::internal("internal error (see the server log)")
            }
            // Nothing is half-done for good: the same request again finishes the delete.
            _ => tonic::Status::unavailable(format!("{error}; retry the delete")),
        }
    }
}

/// Starts and reports a node's reindex (a [`crate::reindex::Reindexer`] of any queue).
pub trait ReindexControl: Send + Sync {
    fn start(&self) -> v1::ReindexStatus;
    fn status(&self) -> v1::ReindexStatus;
}

impl<Q: vidx_core::ports::SegmentQueue, T: IndexStore> ReindexControl
    for Arc<crate::reindex::Reindexer<Q, T>>
{
    fn start(&self) -> v1::ReindexStatus {
        crate::reindex::Reindexer::start(self)
    }
    fn status(&self) -> v1::ReindexStatus {
        crate::reindex::Reindexer::status(self)
    }
}

/// Where a node's reindex control is, once its engine is loaded (nodes with the ingest and
/// query roles only).
pub type ReindexCell = Arc<std::sync::OnceLock<Box<dyn ReindexControl>>>;

/// `IndexService` on a query node: deletes confined to the caller's tenant; reindexes (of
/// the whole index) for the operator's tenant only.
pub struct IndexApi<S> {
    engine: Arc<std::sync::OnceLock<crate::Engine<S>>>,
    media: MediaPlaces,
    reindex: ReindexCell,
    operator: String,
}

impl<S> IndexApi<S> {
    pub fn new(
        engine: Arc<std::sync::OnceLock<crate::Engine<S>>>,
        media: MediaPlaces,
        reindex: ReindexCell,
        operator: String,
    ) -> Self {
        Self {
            engine,
            media,
            reindex,
            operator,
        }
    }

    /// The node's reindex, for the operator's tenant.
    fn reindexer<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<&dyn ReindexControl, tonic::Status> {
        let tenant = crate::auth::tenant_of(request)?;
        if tenant != self.operator {
            return Err(tonic::Status::permission_denied(
                "a reindex rebuilds every tenant's index: only the operator's tenant (general.tenant) may run it",
            ));
        }
        self.reindex.get().map(Box::as_ref).ok_or_else(|| {
            tonic::Status::failed_precondition(
                "reindexing runs on a node with the ingest and query roles, once its index is open",
            )
        })
    }
}

impl<S: IndexStore> IndexApi<S> {
    async fn run(&self, tenant: &str, scope: Scope) -> Result<v1::DeleteResponse, tonic::Status> {
        let engine = self.engine.get().ok_or_else(|| {
            tonic::Status::unavailable("the index is still opening; retry shortly")
        })?;
        let removed = delete(engine.store.as_ref(), &self.media, tenant, &scope).await?;
        tracing::info!(
            tenant,
            scope = ?scope,
            points = removed.points,
            thumbnails = removed.thumbnails,
            footage = removed.footage,
            "moments deleted"
        );
        Ok(v1::DeleteResponse {
            points: removed.points,
            thumbnails: removed.thumbnails,
            footage: removed.footage,
        })
    }
}

#[tonic::async_trait]
impl<S: IndexStore> v1::index_service_server::IndexService for IndexApi<S> {
    async fn delete_stream(
        &self,
        request: tonic::Request<v1::DeleteStreamRequest>,
    ) -> Result<tonic::Response<v1::DeleteResponse>, tonic::Status> {
        let tenant = crate::auth::tenant_of(&request)?;
        let stream_id = request.into_inner().stream_id;
        if stream_id.trim().is_empty() {
            return Err(crate::status::invalid("stream_id", "must not be empty"));
        }
        Ok(tonic::Response::new(
            self.run(&tenant, Scope::Stream(stream_id)).await?,
        ))
    }

    async fn delete_before(
        &self,
        request: tonic::Request<v1::DeleteBeforeRequest>,
    ) -> Result<tonic::Response<v1::DeleteResponse>, tonic::Status> {
        let tenant = crate::auth::tenant_of(&request)?;
        let before_ms = request.into_inner().before_ms;
        if before_ms == 0 {
            return Err(crate::status::invalid(
                "before_ms",
                "must be a time (Unix epoch ms)",
            ));
        }
        Ok(tonic::Response::new(
            self.run(&tenant, Scope::Before(before_ms)).await?,
        ))
    }

    async fn reindex(
        &self,
        request: tonic::Request<v1::ReindexRequest>,
    ) -> Result<tonic::Response<v1::ReindexStatus>, tonic::Status> {
        Ok(tonic::Response::new(self.reindexer(&request)?.start()))
    }

    async fn get_reindex_status(
        &self,
        request: tonic::Request<v1::ReindexStatusRequest>,
    ) -> Result<tonic::Response<v1::ReindexStatus>, tonic::Status> {
        Ok(tonic::Response::new(self.reindexer(&request)?.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_bound_overrides_the_default_and_zero_keeps_forever() {
        let config = vidx_config::StoreRetentionConfig {
            max_age_secs: 3600,
            tenants: BTreeMap::from([("acme".to_string(), 60), ("keep".to_string(), 0)]),
        };
        let retention = StoreRetention::from_config(&config);
        assert_eq!(retention.max_age("acme"), Some(Duration::from_secs(60)));
        assert_eq!(retention.max_age("keep"), None);
        assert_eq!(retention.max_age("other"), Some(Duration::from_secs(3600)));
        assert_eq!(retention.sweep_interval(), Duration::from_secs(6));
        assert!(!StoreRetention::default().is_active());
    }
}
