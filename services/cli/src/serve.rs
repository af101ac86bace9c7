//! `vidx serve`: the web UI and the HTTP/JSON API over the local index (Qdrant Edge in the
//! data dir), on one machine, with the in-process ingest and workers of `vidx index`: files,
//! URLs and live cameras submitted from the page (or `POST /v1/jobs`) are indexed while it
//! serves. The process owns the index while it runs (`vidx index` waits for it to stop).

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use vidx_core::ErrorCode;
use vidx_server::auth::Authenticator;
use vidx_server::ingest::JobDesk;
use vidx_server::web::{ClipSettings, HttpContext, router, serve_http};

use crate::app::{AppContext, EXIT_OK, cli_error, spawn_signal_handler};
use crate::node::InProcessNode;

pub async fn run(context: AppContext) -> anyhow::Result<u8> {
    let config = &context.config;
    if config.server.http_listen.is_empty() {
        return Err(cli_error(
            ErrorCode::InvalidInput,
            "vidx serve: server.http_listen is empty; pass --listen ADDR",
        ));
    }
    let listener = vidx_server::bind_http(&config.server.http_listen)
        .await
        .map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?
        .ok_or_else(|| cli_error(ErrorCode::InvalidInput, "no listen address"))?;
    let address = listener.local_addr()?;
    let authenticator = Authenticator::new(&config.server.tokens, &config.general.tenant)
        .map_err(|reason| cli_error(ErrorCode::InvalidInput, format!("server.tokens: {reason}")))?;
    if authenticator.is_open() && !address.ip().is_loopback() {
        tracing::warn!("no server.tokens configured: anyone who reaches {address} sees the index");
    }
    let policy = vidx_server::url_policy(config)
        .map_err(|error| cli_error(ErrorCode::InvalidInput, error.to_string()))?;
    let tls = match &config.server.tls.cert {
        cert if cert.is_empty() => None,
        _ => Some(Arc::new(
            vidx_server::tls::ReloadingConfig::open(
                vidx_server::tls::TlsFiles {
                    cert: config.server.tls.cert.clone().into(),
                    key: config.server.tls.key.clone().into(),
                    client_ca: (!config.server.tls.client_ca.is_empty())
                        .then(|| config.server.tls.client_ca.clone().into()),
                },
                &[b"http/1.1"],
            )
            .map_err(|error| cli_error(ErrorCode::InvalidInput, error.to_string()))?,
        )),
    };
    eprintln!(
        "loading the models and the index in {}…",
        context.data_dir.display()
    );
    let loaded = context.load_models().await?;
    let store = context
        .open_any_store(loaded.text_dimension, loaded.visual_dimension)
        .await?;
    let engine = context.engine(loaded, store);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (mut node, reindex) = start_node(&context, &engine, address, &shutdown_rx)?;
    let cell = Arc::new(OnceLock::new());
    let _ = cell.set(engine);
    vidx_server::alerts::spawn(
        vidx_server::configured_alerts(config),
        cell.clone(),
        &policy,
        context.data_dir.join("alerts"),
        shutdown_rx.clone(),
    );
    let media = vidx_blob::ObjectBlobStore::open(
        &context.data_dir.display().to_string(),
        &Default::default(),
    )
    .map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?;
    let media: Arc<dyn vidx_core::ports::BlobStore> = Arc::new(media);
    // `store.retention` over the local index, its thumbnails and footage.
    let _retention = match cell.get() {
        Some(engine) => vidx_server::lifecycle::spawn_retention_sweeper(
            engine.store.clone(),
            vidx_server::lifecycle::MediaPlaces {
                store: Some(media.clone()),
                clip_dir: Some(context.data_dir.join("clips")),
            },
            vidx_server::lifecycle::StoreRetention::from_config(&config.store.retention),
            vidx_server::lifecycle::known_tenants(config),
            shutdown_rx.clone(),
        ),
        None => None,
    };
    let http = Arc::new(HttpContext {
        engine: cell,
        authenticator: Arc::new(authenticator),
        ingest: Some(node.ingest.clone() as Arc<dyn JobDesk>),
        reindex,
        operator: config.general.tenant.clone(),
        subscriptions: vidx_server::subscribe::Slots::new(
            config.server.max_subscriptions_per_tenant,
            shutdown_rx.clone(),
        ),
        media: Some(media),
        clips: ClipSettings {
            dir: context.data_dir.join("clips"),
            roots: Vec::new(),
            policy,
        },
        max_request_bytes: config.server.max_request_bytes,
        permits: Arc::new(tokio::sync::Semaphore::new(
            config.server.max_concurrent_requests,
        )),
    });
    spawn_signal_handler(shutdown_tx);
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("vidx serve: {scheme}://{address}/ (Ctrl-C stops)");
    let served = serve_http(router(http.clone()), listener, tls, shutdown_rx).await;
    // The workers stop with the same signal; what they stored is optimized before exit.
    node.stop(std::time::Duration::from_secs(30)).await;
    if let Some(engine) = http.engine.get()
        && let vidx_store::AnyStore::Edge(edge) = engine.store.as_ref()
    {
        let edge = edge.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || edge.finish_blocking()).await? {
            tracing::warn!(error = %error, "the index was not optimized at exit");
        }
    }
    served.map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?;
    Ok(EXIT_OK)
}

/// Start the ingest and the workers of `vidx index` over `engine`'s index. Local files are
/// read from `server.ingest_roots` when set; else from anywhere when the page is on
/// loopback (one user's machine), and only from `<data-dir>/inbox` when it is reachable
/// from elsewhere.
fn start_node(
    context: &AppContext,
    engine: &vidx_server::Engine<vidx_store::AnyStore>,
    address: std::net::SocketAddr,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<(InProcessNode, vidx_server::lifecycle::ReindexCell)> {
    let config = &context.config;
    let (mut settings, spool) = crate::node::settings(context)?;
    let mut roots = Vec::new();
    for root in &config.server.ingest_roots {
        roots.push(std::fs::canonicalize(root).map_err(|error| {
            cli_error(
                ErrorCode::InvalidInput,
                format!("server.ingest_roots: {root}: {error}"),
            )
        })?);
    }
    if roots.is_empty() && address.ip().is_loopback() {
        // One user's machine: any file of theirs (absolute paths, as the page asks).
        roots.push(std::path::PathBuf::from("/"));
    } else if roots.is_empty() {
        let inbox = context.data_dir.join("inbox");
        std::fs::create_dir_all(&inbox)?;
        tracing::warn!(
            inbox = %inbox.display(),
            "no server.ingest_roots: files are indexed only from the inbox"
        );
        roots.push(std::fs::canonicalize(inbox)?);
    }
    settings.ingest.roots = roots;
    // A server: each tenant within the limits a node applies.
    settings.ingest.limits = vidx_server::ingest::TenantLimits {
        jobs: config.server.max_jobs_per_tenant,
        running_jobs: config.server.max_running_jobs_per_tenant,
        live_streams: config.server.max_live_streams_per_tenant,
    };
    let mut node = InProcessNode::start(
        (settings, spool),
        engine,
        config.pipeline.queue_capacity,
        shutdown,
    )?;
    node.log_failures();
    let reindexer = Arc::new(vidx_server::reindex::Reindexer::new(
        node.ingest.clone(),
        engine.store.clone(),
        vidx_server::reindex::ReindexSettings {
            state_file: node.settings.reindex_state.clone(),
            grace: std::time::Duration::from_secs(config.store.reindex_grace_secs),
            jobs_in_flight: vidx_server::reindex::JOBS_IN_FLIGHT,
            // Other nodes writing to a shared Qdrant server learn of the new generation.
            settle: match engine.store.as_ref() {
                vidx_store::AnyStore::Server(_) => {
                    vidx_store::GENERATIONS_TTL + std::time::Duration::from_secs(1)
                }
                vidx_store::AnyStore::Edge(_) => std::time::Duration::ZERO,
            },
            local_files_anywhere: false,
        },
        shutdown.clone(),
    ));
    // A reindex an earlier `vidx serve` (or `vidx reindex`) left unfinished goes on.
    if node.settings.reindex_state.exists() {
        tracing::info!(state = %node.settings.reindex_state.display(), "resuming the reindex");
        reindexer.start();
    }
    let reindex: vidx_server::lifecycle::ReindexCell = Arc::new(OnceLock::new());
    let _ = reindex.set(Box::new(reindexer));
    Ok((node, reindex))
}
