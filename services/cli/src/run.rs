//! `vidx run ingest|worker|query`: one node of the distributed mode (see `vidx-server`).

use tokio::sync::watch;
use vidx_server::{Engine, NodeSettings, Roles, ServerError};
use vidx_store::AnyStore;

use crate::app::{AppContext, EXIT_OK, cli_error, spawn_signal_handler};
use crate::args::{Role, RunArgs};

pub async fn run(context: AppContext, args: &RunArgs) -> anyhow::Result<u8> {
    let roles = Roles {
        ingest: args.roles.contains(&Role::Ingest),
        worker: args.roles.contains(&Role::Worker),
        query: args.roles.contains(&Role::Query),
    };
    let settings = NodeSettings::from_config(&context.config, roles, &context.data_dir)
        .map_err(server_error)?;
    let listener = vidx_server::bind(&context.config.server.listen)
        .await
        .map_err(server_error)?;
    let metrics_listener = vidx_server::bind_metrics(&context.config.server.metrics_listen)
        .await
        .map_err(server_error)?;
    // The web UI and HTTP API belong to the query role.
    let http_listener = if roles.query {
        vidx_server::bind_http(&context.config.server.http_listen)
            .await
            .map_err(server_error)?
    } else {
        None
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_signal_handler(shutdown_tx);
    let engine = async {
        load_engine(&context)
            .await
            .map_err(|error| ServerError::Startup(format!("{error:#}")))
    };
    vidx_server::serve_all::<AnyStore, _>(
        settings,
        vidx_server::Listeners {
            grpc: listener,
            metrics: metrics_listener,
            http: http_listener,
        },
        engine,
        shutdown_rx,
    )
    .await
    .map_err(server_error)?;
    eprintln!("stopped");
    Ok(EXIT_OK)
}

/// Models and the store: a Qdrant server collection (`store.kind = "qdrant"`, the cluster
/// setup), or the embedded Qdrant Edge index in the data dir, which one process owns — then
/// the worker and query roles that share it run in one process.
async fn load_engine(context: &AppContext) -> anyhow::Result<Engine<AnyStore>> {
    let loaded = context.load_models().await?;
    let store = context
        .open_any_store(loaded.text_dimension, loaded.visual_dimension)
        .await?;
    Ok(context.engine(loaded, store))
}

fn server_error(error: ServerError) -> anyhow::Error {
    let code = match &error {
        ServerError::Config { .. } => vidx_core::ErrorCode::InvalidInput,
        _ => vidx_core::ErrorCode::Unavailable,
    };
    cli_error(code, error.to_string())
}
