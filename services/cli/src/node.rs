//! The in-process node that `vidx index`, `vidx serve` and `vidx reindex` start: the ingest
//! and the workers of `vidx run`, over the in-process queue and the local index, with the
//! ingest's dead-letter and blob tasks. Jobs are not journaled: they end with the process
//! (the next run segments its inputs again; segment ids make that idempotent).

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use vidx_bus::InProcessQueue;
use vidx_core::ErrorCode;
use vidx_core::ports::{IndexStore, SegmentQueue};
use vidx_pipeline::WorkerEvent;
use vidx_server::{Engine, Ingest, Metrics, NodeSettings, ServerError, start_workers};

use crate::app::{AppContext, cli_error};

pub struct InProcessNode {
    pub settings: NodeSettings,
    pub ingest: Arc<Ingest<InProcessQueue>>,
    pub queue: Arc<InProcessQueue>,
    pub workers: JoinSet<Result<(), ServerError>>,
    /// What the workers did with each segment (unread until taken).
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    background: [JoinHandle<()>; 2],
    /// Segments go to the workers as files in a spool that this node owns.
    _spool: tempfile::TempDir,
}

/// The embedded node's settings, mapped from the config as `vidx run` maps them, and the
/// spool its segments are written to.
pub fn settings(context: &AppContext) -> anyhow::Result<(NodeSettings, tempfile::TempDir)> {
    let spool = tempfile::Builder::new().prefix("vidx-spool-").tempdir()?;
    let settings = NodeSettings::embedded(&context.config, spool.path(), &context.data_dir)
        .map_err(|error| cli_error(ErrorCode::InvalidInput, error.to_string()))?;
    Ok((settings, spool))
}

/// A batch that does not fit the device fails here, before any segment is taken.
pub async fn warm_up<S>(engine: &Engine<S>, settings: &NodeSettings) -> anyhow::Result<()> {
    if settings.worker.max_batch > 1 {
        vidx_server::warm_up(engine.models.clone(), &settings.worker, settings.frame_size)
            .await
            .map_err(|error| cli_error(ErrorCode::Unavailable, error.to_string()))?;
    }
    Ok(())
}

impl InProcessNode {
    /// Start the ingest and `settings.concurrency` workers over `engine`'s index; all of
    /// them stop when `shutdown` turns true (or the queue is closed).
    pub fn start<S: IndexStore + 'static>(
        (settings, spool): (NodeSettings, tempfile::TempDir),
        engine: &Engine<S>,
        queue_capacity: usize,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let queue = Arc::new(InProcessQueue::new(queue_capacity));
        let metrics = Arc::new(
            Metrics::new(Arc::new(OnceLock::new()))
                .map_err(|error| cli_error(ErrorCode::Internal, error.to_string()))?,
        );
        let ingest = Arc::new(Ingest::new(
            settings.ingest.clone(),
            queue.clone(),
            queue.clone(),
            Arc::new(vidx_server::ingest::NoJournal),
            metrics,
            shutdown.clone(),
        ));
        let (workers, events) = start_workers(
            queue.clone(),
            engine,
            &settings.worker,
            settings.concurrency,
            shutdown,
        );
        let background = [
            tokio::spawn({
                let ingest = ingest.clone();
                async move {
                    if let Err(error) = ingest.follow_dead_letters().await {
                        tracing::warn!(%error, "dead letters no longer followed");
                    }
                }
            }),
            tokio::spawn({
                let ingest = ingest.clone();
                async move { ingest.collect_blobs().await }
            }),
        ];
        Ok(Self {
            settings,
            ingest,
            queue,
            workers,
            events,
            background,
            _spool: spool,
        })
    }

    /// What the workers do with each segment, as they do it.
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<WorkerEvent> {
        std::mem::replace(&mut self.events, mpsc::unbounded_channel().1)
    }

    /// Log each segment that the workers could not index (for a caller that does not
    /// follow the events itself).
    pub fn log_failures(&mut self) {
        let mut events = self.take_events();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let WorkerEvent::Failed {
                    stream_id,
                    segment_seq,
                    error,
                    ..
                } = event
                {
                    tracing::warn!(stream_id, segment_seq, error, "segment not indexed");
                }
            }
        });
    }

    /// Close the queue and wait for the workers to end, at most `limit`; then stop the
    /// ingest's background tasks.
    pub async fn stop(&mut self, limit: std::time::Duration) {
        self.queue.close();
        let wait = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::warn!("workers still busy {limit:?} after the stop: leaving them");
        }
        for task in &self.background {
            task.abort();
        }
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}
