//! The services of `vidx run`: ingest, worker and query, each a role a node can take (one
//! process may take several). One gRPC server per node hosts the roles' services next to
//! grpc.health.v1 (SERVING once a role is ready: Kafka reached, models loaded) and server
//! reflection, behind bearer-token auth and request limits.
//!
//! [`serve`] runs a node until `shutdown` turns true: the server stops taking requests and
//! finishes those in flight, workers stop polling and finish the batch they are computing
//! within `pipeline.shutdown_grace_ms` (stored and committed), or abandon it uncommitted past
//! that (it is redelivered; its ids make the replay idempotent), and the consumer leaves its
//! group.

pub mod alerts;
pub mod auth;
pub mod footage;
pub mod ingest;
pub mod lifecycle;
mod limits;
pub mod metrics;
pub mod query;
pub mod reindex;
mod settings;
mod status;
pub mod subscribe;
pub mod tls;
pub mod web;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use vidx_bus::{GroupProgress, KafkaQueue};
use vidx_core::QueueError;
use vidx_core::ports::{FrameSampler, IndexStore, QueueStatus, SegmentQueue};
use vidx_pipeline::{
    DependencyHealth, Models, PipelineError, SearchModels, WorkerEvent, WorkerOptions, run_worker,
};
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_server::IngestServiceServer;
use vidx_proto::v1::search_service_server::SearchServiceServer;
use vidx_proto::v1::worker_service_server::WorkerServiceServer;

pub use auth::{Authenticator, Tenant};
pub use ingest::{Ingest, IngestApi, IngestSettings, Jobs};
pub use metrics::Metrics;
pub use query::QueryApi;
pub use settings::{
    ModelSettings, NodeSettings, StoreSettings, alerts as configured_alerts, kafka_settings,
    url_policy,
};
pub use worker::{WorkerApi, WorkerStats};

/// Service names as health checks and reflection know them.
pub mod service_names {
    pub const SEARCH: &str = "vidx.v1.SearchService";
    pub const INGEST: &str = "vidx.v1.IngestService";
    pub const WORKER: &str = "vidx.v1.WorkerService";
    pub const INDEX: &str = "vidx.v1.IndexService";
}

/// Room left in a Kafka message for everything besides the inline segment bytes.
const INLINE_HEADROOM_BYTES: u64 = 64 * 1024;

/// How long a reindex waits after creating the new generation before it lists the sources:
/// past the Qdrant server store's `GENERATIONS_TTL`, so that every node's upserts write to it.
fn vidx_store_settle() -> Duration {
    vidx_store::GENERATIONS_TTL + Duration::from_secs(1)
}

/// What the worker and query roles run on, available once the models are loaded.
pub struct Engine<S> {
    pub store: Arc<S>,
    /// The query-side models of the search role.
    pub search: SearchModels,
    pub models: Arc<Models>,
    pub sampler: Arc<dyn FrameSampler>,
}

/// The roles one node takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub worker: bool,
    pub query: bool,
}

impl Roles {
    /// Whether the node needs models and the store.
    pub fn needs_engine(&self) -> bool {
        self.worker || self.query
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("config `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("cannot listen on {address}: {reason}")]
    Bind { address: String, reason: String },
    #[error("gRPC server: {0}")]
    Transport(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot start: {0}")]
    Startup(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Start `concurrency` workers on `queue` (they end when it is closed and drained, or at
/// shutdown); their events arrive on the returned channel. The same for every queue.
pub fn start_workers<Q: SegmentQueue, S: IndexStore>(
    queue: Arc<Q>,
    engine: &Engine<S>,
    options: &WorkerOptions,
    concurrency: usize,
    shutdown: &watch::Receiver<bool>,
) -> (
    JoinSet<Result<(), ServerError>>,
    mpsc::UnboundedReceiver<WorkerEvent>,
) {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (queue, store, sampler, models) = (
            queue.clone(),
            engine.store.clone(),
            engine.sampler.clone(),
            engine.models.clone(),
        );
        let (options, events, shutdown) = (options.clone(), events_tx.clone(), shutdown.clone());
        workers.spawn(async move {
            run_worker(queue, store, sampler, models, options, events, shutdown)
                .await
                .map_err(ServerError::from)
        });
    }
    (workers, events_rx)
}

/// Warm the models up on the largest batch, before any segment is taken: a batch that does
/// not fit the device fails here (the node is not ready and exits with the error).
pub async fn warm_up(
    models: Arc<Models>,
    options: &WorkerOptions,
    frame_size: u32,
) -> Result<(), ServerError> {
    let (batch, frames) = (options.max_batch, options.frames_per_segment);
    tokio::task::spawn_blocking(move || models.warm_up(batch, frames, (frame_size, frame_size)))
        .await
        .map_err(|error| ServerError::Startup(format!("warm-up: {error}")))?
        .map_err(|error| ServerError::Startup(format!("warm-up: {error}")))
}

/// The server span of a gRPC request, a child of the caller's W3C trace context when the
/// request carries one (`traceparent`, `tracestate`).
fn request_span(request: &http::Request<()>) -> tracing::Span {
    let carrier: std::collections::BTreeMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = request.headers().get(name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    vidx_telemetry::request_span(request.uri().path(), &carrier)
}

/// Bind the configured address (for `vidx run`; tests bind port 0 themselves).
pub async fn bind(address: &str) -> Result<TcpListener, ServerError> {
    bind_as(address, "server.listen").await
}

/// Bind `server.metrics_listen` when it is set.
pub async fn bind_metrics(address: &str) -> Result<Option<TcpListener>, ServerError> {
    if address.is_empty() {
        return Ok(None);
    }
    bind_as(address, "server.metrics_listen").await.map(Some)
}

/// Bind `server.http_listen` when it is set.
pub async fn bind_http(address: &str) -> Result<Option<TcpListener>, ServerError> {
    if address.is_empty() {
        return Ok(None);
    }
    bind_as(address, "server.http_listen").await.map(Some)
}

async fn bind_as(address: &str, key: &str) -> Result<TcpListener, ServerError> {
    let parsed: SocketAddr = address.parse().map_err(|_| ServerError::Config {
        key: key.into(),
        reason: format!("`{address}` is not an address"),
    })?;
    TcpListener::bind(parsed)
        .await
        .map_err(|error| ServerError::Bind {
            address: address.to_string(),
            reason: error.to_string(),
        })
}

/// Every service name a node reports on, the whole server (`""`) included.
const HEALTH_NAMES: [&str; 5] = [
    "",
    service_names::SEARCH,
    service_names::INGEST,
    service_names::WORKER,
    service_names::INDEX,
];

async fn set_all(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in HEALTH_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// Resolves once shutdown is requested; never when the sender is gone without asking.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Run a node on `listener` until `shutdown`. `engine` loads the models and opens the store
/// (awaited only by worker and query nodes, while the server already answers health checks
/// with NOT_SERVING).
pub async fn serve<S, F>(
    settings: NodeSettings,
    listener: TcpListener,
    engine: F,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError>
where
    S: IndexStore,
    F: Future<Output = Result<Engine<S>, ServerError>> + Send,
{
    serve_with_metrics(settings, listener, None, engine, shutdown).await
}

/// [`serve`], with Prometheus text metrics on `GET /metrics` of `metrics_listener`.
pub async fn serve_with_metrics<S, F>(
    settings: NodeSettings,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    engine: F,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError>
where
    S: IndexStore + Send + Sync + 'static,
    F: Future<Output = Result<Engine<S>, ServerError>> + Send,
{
    serve_all(
        settings,
        Listeners {
            grpc: listener,
            metrics: metrics_listener,
            http: None,
        },
        engine,
        shutdown,
    )
    .await
}

/// The listeners of a node.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC services.
    pub grpc: TcpListener,
    /// `GET /metrics`.
    pub metrics: Option<TcpListener>,
    /// The web UI and HTTP API (query role only).
    pub http: Option<TcpListener>,
}

/// Run a node on its `listeners` until `shutdown` (see [`serve`]).
pub async fn serve_all<S, F>(
    settings: NodeSettings,
    listeners: Listeners,
    engine: F,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError>
where
    S: IndexStore + Send + Sync + 'static,
    F: Future<Output = Result<Engine<S>, ServerError>> + Send,
{
    let Listeners {
        grpc: listener,
        metrics: metrics_listener,
        http: http_listener,
    } = listeners;
    let roles = settings.roles;
    let authenticator = Arc::new(
        Authenticator::new(&settings.tokens, &settings.default_tenant).map_err(|reason| {
            ServerError::Config {
                key: "server.tokens".into(),
                reason,
            }
        })?,
    );
    if authenticator.is_open() && listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!("no server.tokens configured: every caller acts as the default tenant");
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    set_all(&health, ServingStatus::NotServing).await;
    // Reflection in both versions: grpc.reflection.v1 and v1alpha, which Python's
    // grpcio-reflection, Postman and older grpcurl speak only.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vidx_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|error| ServerError::Startup(format!("reflection: {error}")))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|error| ServerError::Startup(format!("reflection: {error}")))?;

    // TLS files are read now: a node does not start on files that do not load.
    let (grpc_tls, metrics_tls, http_tls) = match &settings.tls {
        None => (None, None, None),
        Some(files) => (
            Some(Arc::new(tls::ReloadingConfig::open(
                files.clone(),
                &[b"h2"],
            )?)),
            Some(Arc::new(tls::ReloadingConfig::open(
                files.clone(),
                &[b"http/1.1"],
            )?)),
            Some(Arc::new(tls::ReloadingConfig::open(
                files.clone(),
                &[b"http/1.1"],
            )?)),
        ),
    };

    let queue_cell: Arc<OnceLock<Arc<dyn QueueStatus>>> = Arc::new(OnceLock::new());
    let metrics = Arc::new(Metrics::new(queue_cell.clone())?);
    let _metrics_server = match metrics_listener {
        Some(metrics_listener) => {
            let address = metrics_listener
                .local_addr()
                .map_err(|error| ServerError::Transport(error.to_string()))?;
            tracing::info!(%address, tls = metrics_tls.is_some(), "metrics on GET /metrics");
            Some(tokio::spawn(metrics::serve_metrics(
                metrics.clone(),
                metrics_listener,
                metrics_tls,
                shutdown.clone(),
            )))
        }
        None => None,
    };

    // The ingest role talks only to Kafka: ready as soon as the brokers answer.
    // The topics, once, for every role that talks to Kafka.
    if roles.ingest || roles.worker {
        vidx_bus::ensure_topics(&settings.kafka).await?;
    }
    let ingest = if roles.ingest {
        let producer = Arc::new(KafkaQueue::producer(settings.kafka.clone())?);
        let kafka = settings.kafka.clone();
        let progress = Arc::new(
            tokio::task::spawn_blocking(move || GroupProgress::connect(kafka))
                .await
                .map_err(|error| ServerError::Startup(error.to_string()))??,
        );
        let journal = Arc::new(vidx_bus::JobTopic::connect(settings.kafka.clone())?);
        let ingest = Arc::new(Ingest::new(
            settings.ingest.clone(),
            producer,
            progress,
            journal,
            metrics.clone(),
            shutdown.clone(),
        ));
        // The jobs this node (or the one it replaces) had: answered for, finished, resumed.
        for work in ingest.restore().await? {
            tokio::spawn(work);
        }
        Some(ingest)
    } else {
        None
    };

    let subscriptions =
        subscribe::Slots::new(settings.max_subscriptions_per_tenant, shutdown.clone());
    let engine_cell: Arc<OnceLock<Engine<S>>> = Arc::new(OnceLock::new());
    let reindex_cell: lifecycle::ReindexCell = Arc::new(OnceLock::new());
    let stats = Arc::new(WorkerStats::default());
    // The web UI and HTTP API of the query role: the same engine, tokens and limits.
    let _http_server = match (roles.query, http_listener) {
        (true, Some(http_listener)) => {
            let address = http_listener
                .local_addr()
                .map_err(|error| ServerError::Transport(error.to_string()))?;
            let context = Arc::new(web::HttpContext {
                engine: engine_cell.clone(),
                authenticator: authenticator.clone(),
                media: settings.worker.thumbnails.clone(),
                ingest: ingest
                    .clone()
                    .map(|ingest| ingest as Arc<dyn ingest::JobDesk>),
                subscriptions: subscriptions.clone(),
                reindex: reindex_cell.clone(),
                operator: settings.default_tenant.clone(),
                clips: web::ClipSettings {
                    dir: settings.clip_dir.clone(),
                    roots: settings.ingest.roots.clone(),
                    policy: settings.ingest.policy.clone(),
                },
                max_request_bytes: settings.max_request_bytes,
                permits: Arc::new(tokio::sync::Semaphore::new(
                    settings.max_concurrent_requests,
                )),
            });
            tracing::info!(%address, tls = http_tls.is_some(), "web UI and HTTP API");
            Some(tokio::spawn(web::serve_http(
                web::router(context),
                http_listener,
                http_tls,
                shutdown.clone(),
            )))
        }
        _ => None,
    };
    let intercept = auth::interceptor(authenticator);
    let limit = settings.max_request_bytes;

    if roles.query {
        alerts::spawn(
            settings.alerts.clone(),
            engine_cell.clone(),
            &settings.ingest.policy,
            settings.alert_dir.clone(),
            shutdown.clone(),
        );
    }
    let media_places = lifecycle::MediaPlaces {
        store: settings.worker.thumbnails.clone(),
        clip_dir: Some(settings.clip_dir.clone()),
    };
    let index_service = roles.query.then(|| {
        InterceptedService::new(
            v1::index_service_server::IndexServiceServer::new(lifecycle::IndexApi::new(
                engine_cell.clone(),
                media_places.clone(),
                reindex_cell.clone(),
                settings.default_tenant.clone(),
            ))
            .max_decoding_message_size(limit),
            intercept.clone(),
        )
    });
    let search_service = roles.query.then(|| {
        InterceptedService::new(
            SearchServiceServer::new(QueryApi::new(
                engine_cell.clone(),
                metrics.clone(),
                subscriptions.clone(),
            ))
            .max_decoding_message_size(limit),
            intercept.clone(),
        )
    });
    let ingest_service = ingest.as_ref().map(|ingest| {
        InterceptedService::new(
            IngestServiceServer::new(IngestApi::new(ingest.clone()))
                .max_decoding_message_size(limit),
            intercept.clone(),
        )
    });
    let worker_service = roles.worker.then(|| {
        InterceptedService::new(
            WorkerServiceServer::new(WorkerApi {
                worker_id: settings.worker_id.clone(),
                max_batch: settings.worker.max_batch,
                engine: engine_cell.clone(),
                queue: queue_cell.clone(),
                stats: stats.clone(),
                health: settings.worker.health.clone(),
            })
            .max_decoding_message_size(limit),
            intercept.clone(),
        )
    });
    let router = tonic::transport::Server::builder()
        .trace_fn(request_span)
        .timeout(settings.request_timeout)
        .layer(limits::LimitsLayer::new(settings.max_concurrent_requests))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_optional_service(search_service)
        .add_optional_service(index_service)
        .add_optional_service(ingest_service)
        .add_optional_service(worker_service);
    let address = listener
        .local_addr()
        .map_err(|error| ServerError::Transport(error.to_string()))?;
    let tls = grpc_tls.is_some();
    let server = match grpc_tls {
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped(shutdown.clone()),
        )),
        Some(config) => {
            use tokio_stream::StreamExt;
            let incoming = tokio_stream::wrappers::ReceiverStream::new(tls::accept(
                listener,
                config,
                shutdown.clone(),
            ))
            .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(shutdown.clone())))
        }
    };
    tracing::info!(%address, ?roles, tls, "gRPC server listening");

    // Workers end when shutdown is asked for; watchers (the dead-letter reader) never do.
    let mut background = JoinSet::new();
    let mut watchers = JoinSet::new();
    let mut kafka_queue = None;
    if let Some(ingest) = &ingest {
        watchers.spawn({
            let ingest = ingest.clone();
            async move { Ok(ingest.follow_dead_letters().await?) }
        });
        watchers.spawn({
            let ingest = ingest.clone();
            async move {
                ingest.collect_blobs().await;
                Ok(())
            }
        });
        health
            .set_service_status(service_names::INGEST, ServingStatus::Serving)
            .await;
    }

    if roles.needs_engine() {
        let loaded = tokio::select! {
            biased;
            _ = stopped(shutdown.clone()) => None,
            loaded = engine => Some(loaded?),
        };
        let Some(loaded) = loaded else {
            watchers.abort_all();
            return finish(server, background, None, Duration::ZERO).await;
        };
        let models = loaded.models.clone();
        if roles.query {
            // `store.retention` over the index just opened.
            lifecycle::spawn_retention_sweeper(
                loaded.store.clone(),
                media_places.clone(),
                settings.retention.clone(),
                settings.tenants.clone(),
                shutdown.clone(),
            );
            if let Some(ingest) = &ingest {
                let reindexer = Arc::new(reindex::Reindexer::new(
                    ingest.clone(),
                    loaded.store.clone(),
                    reindex::ReindexSettings {
                        state_file: settings.reindex_state.clone(),
                        grace: settings.reindex_grace,
                        jobs_in_flight: reindex::JOBS_IN_FLIGHT,
                        // Every node's upserts learn of the new generation meanwhile.
                        settle: vidx_store_settle(),
                        local_files_anywhere: false,
                    },
                    shutdown.clone(),
                ));
                // A reindex this node (or the one it replaces) left unfinished goes on.
                if settings.reindex_state.exists() {
                    tracing::info!(state = %settings.reindex_state.display(), "resuming the reindex");
                    reindexer.start();
                }
                let _ = reindex_cell.set(Box::new(reindexer));
            }
        }
        let _ = engine_cell.set(loaded);
        if roles.query {
            for name in [service_names::SEARCH, service_names::INDEX] {
                health
                    .set_service_status(name, ServingStatus::Serving)
                    .await;
            }
        }
        if roles.worker {
            warm_up(models.clone(), &settings.worker, settings.frame_size).await?;
            let queue = Arc::new(KafkaQueue::worker(settings.kafka.clone())?);
            let _ = queue_cell.set(queue.clone());
            kafka_queue = Some(queue.clone());
            let engine = engine_cell
                .get()
                .ok_or_else(|| ServerError::Startup("engine not set".into()))?;
            let (workers, mut events_rx) = start_workers(
                queue,
                engine,
                &settings.worker,
                settings.concurrency,
                &shutdown,
            );
            background = workers;
            tokio::spawn(report_outages(
                settings.worker.health.clone(),
                health.clone(),
                metrics.clone(),
            ));
            let (stats, metrics) = (stats.clone(), metrics.clone());
            tokio::spawn(async move {
                while let Some(event) = events_rx.recv().await {
                    stats.record(&event);
                    metrics.record(&event);
                }
            });
            health
                .set_service_status(service_names::WORKER, ServingStatus::Serving)
                .await;
        }
    }
    health.set_service_status("", ServingStatus::Serving).await;

    // Run until shutdown; a background task that fails (a worker whose queue broke, the
    // dead-letter reader) takes the node down, so that its supervisor restarts it.
    let failure = tokio::select! {
        biased;
        _ = stopped(shutdown.clone()) => None,
        Some(joined) = background.join_next() => Some(joined),
        Some(joined) = watchers.join_next() => Some(joined),
    };
    // A worker that returned because shutdown was asked for meanwhile is not a failure.
    let failure = failure.filter(|joined| !(matches!(joined, Ok(Ok(()))) && *shutdown.borrow()));
    if let Some(joined) = failure {
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let error = match joined {
            Ok(Err(error)) => error,
            Ok(Ok(())) => ServerError::Startup("a background task ended unexpectedly".into()),
            Err(error) => ServerError::Startup(format!("background task: {error}")),
        };
        tracing::error!(error = %error, "node failing");
        background.abort_all();
        watchers.abort_all();
        server.abort();
        return Err(error);
    }
    set_all(&health, ServingStatus::NotServing).await;
    let deadline = settings.worker.shutdown_grace + Duration::from_secs(10);
    finish(server, background, kafka_queue, deadline).await
}

/// Follow the workers' view of their dependencies: while one fails, the worker service and
/// the node are NOT_SERVING (a load balancer or orchestrator sees it) and the outage gauge
/// is 1 for its kind; the reason is in `WorkerService.Status` and the logs.
async fn report_outages(
    dependencies: Arc<DependencyHealth>,
    health: tonic_health::server::HealthReporter,
    metrics: Arc<Metrics>,
) {
    let mut outages = dependencies.subscribe();
    loop {
        let outage = outages.borrow_and_update().clone();
        metrics.set_outage(outage.as_ref().map(|outage| outage.kind));
        let status = if outage.is_some() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        health
            .set_service_status(service_names::WORKER, status)
            .await;
        health.set_service_status("", status).await;
        if outages.changed().await.is_err() {
            return;
        }
    }
}

/// After shutdown: let the workers return (they finish their batch within the grace period),
/// leave the consumer group, and wait for the server to finish the requests in flight.
async fn finish(
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    mut workers: JoinSet<Result<(), ServerError>>,
    queue: Option<Arc<KafkaQueue>>,
    deadline: Duration,
) -> Result<(), ServerError> {
    let limit = deadline;
    let deadline = tokio::time::sleep(deadline);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                tracing::warn!(?limit, "workers did not stop in time; abandoning them");
                workers.abort_all();
                break;
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Err(error))) => tracing::warn!(error = %error, "worker ended with an error during shutdown"),
                Some(_) => {}
            },
        }
    }
    // Dropping the last handle closes the consumer, which leaves the group.
    drop(queue);
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ServerError::Transport(error.to_string())),
        Err(error) => Err(ServerError::Transport(error.to_string())),
    }
}
