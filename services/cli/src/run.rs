//! `vidx run ingest|worker|query`: one node of the distributed mode (see `vidx-server`).

use std::sync::Arc;

use tokio::sync::watch;
use vidx_core::ports::{Captioner, FrameSampler, VisualEmbedder};
use vidx_core::regions::RegionSettings;
use vidx_media::FfmpegFrameSampler;
use vidx_pipeline::Models;
use vidx_pipeline::captioners::SubtitleCaptioner;
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
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_signal_handler(shutdown_tx);
    let frame_size = context.config.media.frame_size;
    let engine = async {
        load_engine(&context, frame_size)
            .await
            .map_err(|error| ServerError::Startup(format!("{error:#}")))
    };
    vidx_server::serve_with_metrics::<AnyStore, _>(
        settings,
        listener,
        metrics_listener,
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
async fn load_engine(context: &AppContext, frame_size: u32) -> anyhow::Result<Engine<AnyStore>> {
    let text_embedder = context.text_embedder().await?;
    let plm = context.plm_captioner().await?;
    let visual = context.visual_embedder().await?;
    let store = Arc::new(
        context
            .open_any_store(
                text_embedder.dimension(),
                visual.as_ref().map(|visual| visual.dimension()),
            )
            .await?,
    );
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(frame_size));
    let models = Arc::new(Models {
        captioners: plm
            .into_iter()
            .chain([Arc::new(SubtitleCaptioner) as Arc<dyn Captioner>])
            .collect(),
        text_embedder: text_embedder.clone(),
        visual_embedder: visual
            .clone()
            .map(|visual| visual as Arc<dyn VisualEmbedder>),
        regions: (visual.is_some() && context.config.models.regions).then(RegionSettings::default),
    });
    Ok(Engine {
        store,
        search: context.search_models(text_embedder, visual.as_ref()),
        models,
        sampler,
    })
}

fn server_error(error: ServerError) -> anyhow::Error {
    let code = match &error {
        ServerError::Config { .. } => vidx_core::ErrorCode::InvalidInput,
        _ => vidx_core::ErrorCode::Unavailable,
    };
    cli_error(code, error.to_string())
}
