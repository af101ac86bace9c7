//! `vidx reindex`: build the index again with the configured models as a new generation —
//! in-process over the local index (the ingest and workers of `vidx index`), or on a node
//! (`--endpoint`) — following its progress; searches answer from the old generation until
//! the switch. Run again after an interruption, it takes up where it was.

use std::time::Duration;

use tokio::sync::watch;
use vidx_core::ErrorCode;
use vidx_proto::v1;
use vidx_server::reindex::{ReindexError, ReindexSettings, Reindexer};

use crate::app::{
    AppContext, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, cli_error, spawn_signal_handler,
};
use crate::args::ReindexArgs;
use crate::node::InProcessNode;

pub async fn run(context: AppContext, args: &ReindexArgs) -> anyhow::Result<u8> {
    if let Some(endpoint) = &args.remote.endpoint {
        return crate::remote::reindex(endpoint, &args.remote, args).await;
    }
    if !context.index_dir().exists() {
        return Err(cli_error(
            ErrorCode::NotFound,
            format!(
                "no index at {}: nothing to reindex",
                context.index_dir().display()
            ),
        ));
    }
    let (settings, spool) = crate::node::settings(&context)?;
    let loaded = context.load_models().await?;
    let store = context
        .open_store_for_reindex(loaded.text_dimension, loaded.visual_dimension)
        .await?;
    let engine = context.engine(loaded, store);
    crate::node::warm_up(&engine, &settings).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut node = InProcessNode::start(
        (settings, spool),
        &engine,
        context.config.pipeline.queue_capacity,
        &shutdown_rx,
    )?;
    node.log_failures();
    spawn_signal_handler(shutdown_tx.clone());
    let reindexer = Reindexer::new(
        node.ingest.clone(),
        engine.store.clone(),
        ReindexSettings {
            state_file: node.settings.reindex_state.clone(),
            // Nothing else searches this index while the command owns it.
            grace: Duration::ZERO,
            jobs_in_flight: 1,
            settle: Duration::ZERO,
            local_files_anywhere: true,
        },
        shutdown_rx.clone(),
    );
    let progress = tokio::spawn(print_progress(reindexer.subscribe(), args.common.json));
    let outcome = tokio::select! {
        outcome = reindexer.run() => outcome,
        failed = node.workers.join_next() => match failed {
            Some(Ok(Err(error))) => Err(ReindexError::Ingest(error.to_string())),
            Some(Err(error)) => Err(ReindexError::Ingest(error.to_string())),
            _ => Err(ReindexError::Ingest("the workers stopped".into())),
        },
    };
    let _ = shutdown_tx.send(true);
    node.stop(Duration::MAX).await;
    progress.abort();
    match outcome {
        Ok(status) => {
            print_status(&status, args.common.json);
            Ok(if status.sources_skipped > 0 {
                EXIT_PARTIAL
            } else {
                EXIT_OK
            })
        }
        Err(ReindexError::Interrupted) => {
            eprintln!("reindex interrupted; run `vidx reindex` again to resume it");
            Ok(EXIT_INTERRUPTED)
        }
        Err(error) => Err(cli_error(ErrorCode::Unavailable, error.to_string())),
    }
}

/// One line on stderr per change of the sources done (never with `--json`).
async fn print_progress(mut status: watch::Receiver<v1::ReindexStatus>, json: bool) {
    let mut last = None;
    while status.changed().await.is_ok() {
        let now = status.borrow().clone();
        let key = (now.state, now.sources_done, now.sources_skipped);
        if json || last == Some(key) || now.generation == 0 {
            continue;
        }
        last = Some(key);
        eprintln!("{}", progress_line(&now));
    }
}

pub fn progress_line(status: &v1::ReindexStatus) -> String {
    format!(
        "reindex {}: generation {} -> {}{}, {}/{} sources done, {} skipped, {} segments",
        vidx_server::reindex::state_name(status.state),
        status.from_generation,
        status.generation,
        if status.resumed { " (resumed)" } else { "" },
        status.sources_done,
        status.sources_total,
        status.sources_skipped,
        status.segments,
    )
}

/// The final status, as text or JSON.
pub fn print_status(status: &v1::ReindexStatus, json: bool) {
    if json {
        println!("{}", vidx_server::reindex::status_json(status));
    } else {
        println!(
            "reindexed into generation {} in {:.1} s: {} of {} sources, {} segments ({} failed)",
            status.generation,
            status.elapsed_ms as f64 / 1000.0,
            status.sources_done,
            status.sources_total,
            status.segments,
            status.segments_failed,
        );
        for skipped in &status.skipped {
            println!("  skipped {skipped}");
        }
    }
}
