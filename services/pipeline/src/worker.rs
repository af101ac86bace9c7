//! The worker loop: receive a task, build its points on a blocking thread, upsert them,
//! and only then ack. Retryable failures are retried with exponential backoff; the rest (and
//! retries exhausted) are nacked, which dead-letters the task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vidx_core::ports::{Delivery, FrameSampler, IndexStore, SegmentQueue};

use crate::{Models, PipelineError, build_points};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub frames_per_segment: usize,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
}

/// What a worker reports per task.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    Indexed {
        stream_id: String,
        segment_seq: u64,
        points: usize,
        media_ms: u64,
    },
    Failed {
        stream_id: String,
        segment_seq: u64,
        attempts: u32,
        error: String,
    },
}

/// Process tasks until the queue is closed and drained or `shutdown` turns true. A task in
/// flight at shutdown is neither acked nor nacked: it is redelivered (Kafka) or re-segmented
/// on the next run (embedded), and its deterministic ids make the replay idempotent.
pub async fn run_worker<Q: SegmentQueue, S: IndexStore>(
    queue: Arc<Q>,
    store: Arc<S>,
    sampler: Arc<dyn FrameSampler>,
    models: Arc<Models>,
    options: WorkerOptions,
    events: mpsc::UnboundedSender<WorkerEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return Ok(()),
            delivery = queue.receive() => delivery?,
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        let Delivery { tag, task } = delivery;
        let stream_id = task.stream_id.clone();
        let segment_seq = task.segment_seq;
        let media_ms = task.range.duration_ms();
        let task = Arc::new(task);
        let mut attempt = task.attempt.max(1);
        let outcome = loop {
            let result = tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return Ok(()),
                result = index_once(&task, &store, &sampler, &models, options.frames_per_segment) => result,
            };
            match result {
                Ok(points) => break Ok(points),
                Err(error) if error.code().is_retryable() && attempt < options.max_attempts => {
                    let backoff = options.retry_backoff * 2u32.saturating_pow(attempt - 1);
                    tracing::warn!(stream_id, segment_seq, attempt, error = %error, ?backoff, "segment failed, retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                Err(error) => break Err(error),
            }
        };
        match outcome {
            Ok(points) => {
                queue.ack(tag).await?;
                tracing::info!(stream_id, segment_seq, points, "segment indexed");
                let _ = events.send(WorkerEvent::Indexed {
                    stream_id,
                    segment_seq,
                    points,
                    media_ms,
                });
            }
            Err(error) => {
                tracing::warn!(stream_id, segment_seq, attempt, error = %error, "segment failed");
                queue.nack(tag, error.to_string()).await?;
                let _ = events.send(WorkerEvent::Failed {
                    stream_id,
                    segment_seq,
                    attempts: attempt,
                    error: error.to_string(),
                });
            }
        }
    }
}

/// Resolves once shutdown is requested; never, when the sender is gone without asking.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn index_once<S: IndexStore>(
    task: &Arc<vidx_core::SegmentTask>,
    store: &Arc<S>,
    sampler: &Arc<dyn FrameSampler>,
    models: &Arc<Models>,
    frames_per_segment: usize,
) -> Result<usize, PipelineError> {
    let (task_ref, sampler_ref, models_ref) = (task.clone(), sampler.clone(), models.clone());
    let points = tokio::task::spawn_blocking(move || {
        build_points(
            &task_ref,
            sampler_ref.as_ref(),
            &models_ref,
            frames_per_segment,
        )
    })
    .await
    .map_err(|error| PipelineError::Task(error.to_string()))??;
    let count = points.len();
    // The upsert returns once the points are durable; only then may the task be acked.
    store.upsert(points).await?;
    Ok(count)
}
