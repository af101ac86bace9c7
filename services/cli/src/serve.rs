//! `vidx serve`: the web UI and the HTTP/JSON API over the local index (Qdrant Edge in the
//! data dir), on one machine. The process owns the index while it runs (`vidx index` waits
//! for it to stop).

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use vidx_core::ErrorCode;
use vidx_server::auth::Authenticator;
use vidx_server::web::{ClipSettings, HttpContext, router, serve_http};

use crate::app::{AppContext, EXIT_OK, cli_error, spawn_signal_handler};

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
    let engine = OnceLock::new();
    let _ = engine.set(context.engine(loaded, store));
    let media = vidx_blob::ObjectBlobStore::open(
        &context.data_dir.display().to_string(),
        &Default::default(),
    )
    .map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?;
    let http = Arc::new(HttpContext {
        engine: Arc::new(engine),
        authenticator: Arc::new(authenticator),
        media: Some(Arc::new(media)),
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
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_signal_handler(shutdown_tx);
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("vidx serve: {scheme}://{address}/ (Ctrl-C stops)");
    serve_http(router(http), listener, tls, shutdown_rx)
        .await
        .map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?;
    Ok(EXIT_OK)
}
