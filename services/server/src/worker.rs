//! `WorkerService.Status`: what a worker node runs and holds right now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status};
use vidx_core::ports::QueueStatus;
use vidx_pipeline::{DependencyHealth, WorkerEvent};
use vidx_proto::v1;

use crate::Engine;
use crate::auth::tenant_of;

/// Counters of one worker node.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub indexed: AtomicU64,
    pub failed: AtomicU64,
}

impl WorkerStats {
    pub fn record(&self, event: &WorkerEvent) {
        match event {
            WorkerEvent::Indexed { .. } => self.indexed.fetch_add(1, Ordering::Relaxed),
            WorkerEvent::Failed { .. } => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

pub struct WorkerApi<S> {
    pub(crate) worker_id: String,
    /// Segments captioned together (`pipeline.max_batch`).
    pub(crate) max_batch: usize,
    pub(crate) engine: Arc<OnceLock<Engine<S>>>,
    pub(crate) queue: Arc<OnceLock<Arc<dyn QueueStatus>>>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) health: Arc<DependencyHealth>,
}

#[tonic::async_trait]
impl<S: Send + Sync + 'static> v1::worker_service_server::WorkerService for WorkerApi<S> {
    async fn status(
        &self,
        request: Request<v1::WorkerStatusRequest>,
    ) -> Result<Response<v1::WorkerStatusResponse>, Status> {
        tenant_of(&request)?;
        let models = self
            .engine
            .get()
            .map(|engine| {
                engine
                    .models
                    .captioners
                    .iter()
                    .map(|captioner| captioner.revision().to_string())
                    .chain([engine.models.text_embedder.revision().to_string()])
                    .chain(
                        engine
                            .models
                            .visual_embedder
                            .iter()
                            .map(|visual| visual.revision().to_string()),
                    )
                    .collect()
            })
            .unwrap_or_default();
        let queue = self.queue.get();
        let (queue_depth, partitions) = queue.map_or((0, Vec::new()), |queue| {
            (queue.in_flight() as u64, queue.assigned_partitions())
        });
        Ok(Response::new(v1::WorkerStatusResponse {
            worker_id: self.worker_id.clone(),
            models,
            max_batch_size: self.max_batch as u32,
            queue_depth,
            partitions,
            segments_indexed: self.stats.indexed.load(Ordering::Relaxed),
            segments_failed: self.stats.failed.load(Ordering::Relaxed),
            fetching_paused: queue.is_some_and(|queue| queue.is_paused()),
            partitions_revoked: queue.map_or(0, |queue| queue.revocations()),
            outage: self.health.outage().unwrap_or_default(),
            commit_failures: queue.map_or(0, |queue| queue.commit_failures()),
        }))
    }
}
