//! The worker loop: receive a task, build its points on a blocking thread, upsert them,
//! and only then ack. Retryable failures are retried with exponential backoff; the rest (and
//! retries exhausted) are nacked, which dead-letters the task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vidx_core::ports::{BlobStore, Delivery, FrameSampler, IndexStore, SegmentQueue};
use vidx_core::{BlobError, SegmentMedia, SegmentTask};

use tracing::Instrument;

use crate::{Models, PipelineError, StageTimings, build_points_timed};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub frames_per_segment: usize,
    /// Tries per segment for retryable failures before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub retry_backoff: Duration,
    pub max_backoff: Duration,
    /// How long an unavailable store is waited for before the segment counts as failed.
    /// `None`: until it is back — a down store is not the segment's fault, and
    /// dead-lettering every segment during an outage would leave them unindexed.
    pub store_outage_limit: Option<Duration>,
    /// Where blob segments are read from. Only URIs of this store are read; a task naming a
    /// blob without one, or outside it, fails without retries (and is dead-lettered).
    pub blobs: Option<Arc<dyn BlobStore>>,
}

impl WorkerOptions {
    /// The delay before retry number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        self.retry_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff)
    }
}

/// Whether `error` is the store being unreachable, as opposed to a problem of the segment.
fn store_unavailable(error: &PipelineError) -> bool {
    matches!(error, PipelineError::Store(store) if store.code() == vidx_core::ErrorCode::Unavailable)
}

/// What a worker reports per task.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    Indexed {
        stream_id: String,
        segment_seq: u64,
        points: usize,
        media_ms: u64,
        /// The stages of the successful attempt.
        timings: StageTimings,
    },
    Failed {
        stream_id: String,
        segment_seq: u64,
        attempts: u32,
        error: String,
        /// Which stage failed ([`PipelineError::cause`]).
        cause: &'static str,
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
        // One span per segment, continuing the trace the ingest started (Kafka headers).
        let span = tracing::info_span!(
            "segment.index",
            stream_id = %stream_id,
            segment_seq,
            points = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        vidx_telemetry::set_parent(&span, &task.trace_context);
        let task = Arc::new(task);
        let mut attempt = task.attempt.max(1);
        let mut outage_since: Option<std::time::Instant> = None;
        let outcome = loop {
            let result = tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return Ok(()),
                result = index_once(&task, &store, &sampler, &models, options.frames_per_segment, options.blobs.as_ref()).instrument(span.clone()) => result,
            };
            match result {
                Ok(points) => break Ok(points),
                Err(error)
                    if store_unavailable(&error) && {
                        let since = *outage_since.get_or_insert_with(std::time::Instant::now);
                        options
                            .store_outage_limit
                            .is_none_or(|limit| since.elapsed() < limit)
                    } =>
                {
                    // Nothing is acked while the store is down: the segment waits, and with it
                    // the queue's commit.
                    let backoff = options.backoff(attempt);
                    tracing::warn!(stream_id, segment_seq, attempt, error = %error, ?backoff, "store unavailable, waiting");
                    tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    attempt += 1;
                }
                Err(error) if error.code().is_retryable() && attempt < options.max_attempts => {
                    let backoff = options.backoff(attempt);
                    tracing::warn!(stream_id, segment_seq, attempt, error = %error, ?backoff, "segment failed, retrying");
                    tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    attempt += 1;
                }
                Err(error) => break Err(error),
            }
        };
        match outcome {
            Ok((points, timings)) => {
                span.record("points", points);
                queue.ack(tag).await?;
                tracing::info!(stream_id, segment_seq, points, "segment indexed");
                let _ = events.send(WorkerEvent::Indexed {
                    stream_id,
                    segment_seq,
                    points,
                    media_ms,
                    timings,
                });
            }
            Err(error) => {
                span.record("error", tracing::field::display(&error));
                tracing::warn!(stream_id, segment_seq, attempt, error = %error, "segment failed");
                queue.nack(tag, error.to_string(), attempt).await?;
                let _ = events.send(WorkerEvent::Failed {
                    stream_id,
                    segment_seq,
                    attempts: attempt,
                    error: error.to_string(),
                    cause: error.cause(),
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
    blobs: Option<&Arc<dyn BlobStore>>,
) -> Result<(usize, StageTimings), PipelineError> {
    // Without frames the media is never opened, so there is nothing to fetch.
    let started = std::time::Instant::now();
    let task = if frames_per_segment > 0 {
        resolve_media(task, blobs).await?
    } else {
        task.clone()
    };
    let fetch = started.elapsed();
    let (task_ref, sampler_ref, models_ref) = (task, sampler.clone(), models.clone());
    let parent = tracing::Span::current();
    let (points, mut timings) = tokio::task::spawn_blocking(move || {
        let _span = tracing::info_span!(parent: &parent, "segment.models").entered();
        let mut timings = StageTimings::default();
        build_points_timed(
            &task_ref,
            sampler_ref.as_ref(),
            &models_ref,
            frames_per_segment,
            &mut timings,
        )
        .map(|points| (points, timings))
    })
    .await
    .map_err(|error| PipelineError::Task(error.to_string()))??;
    timings.fetch = fetch;
    let count = points.len();
    // The upsert returns once the points are durable; only then may the task be acked.
    let started = std::time::Instant::now();
    store
        .upsert(points)
        .instrument(tracing::info_span!("store.upsert", points = count))
        .await?;
    timings.store = started.elapsed();
    Ok((count, timings))
}

/// Make a blob task's media readable by the decoder: the file in place for a local blob
/// store, the bytes inline for a remote one. A URI outside the store is refused here, before
/// anything is opened.
async fn resolve_media(
    task: &Arc<SegmentTask>,
    blobs: Option<&Arc<dyn BlobStore>>,
) -> Result<Arc<SegmentTask>, PipelineError> {
    let SegmentMedia::Blob(uri) = &task.media else {
        return Ok(task.clone());
    };
    let Some(blobs) = blobs else {
        return Err(BlobError::Refused {
            uri: uri.clone(),
            reason: "this worker has no blob store".into(),
        }
        .into());
    };
    let media = match blobs.local_path(uri)? {
        Some(path) => SegmentMedia::Blob(format!("file://{}", path.display())),
        None => SegmentMedia::Inline(blobs.get(uri).await?),
    };
    Ok(Arc::new(SegmentTask {
        media,
        ..SegmentTask::clone(task)
    }))
}
