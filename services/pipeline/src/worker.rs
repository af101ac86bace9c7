//! The worker loop: receive a task, build its points on a blocking thread, upsert them,
//! and only then ack. What happens to a failure depends on whose it is ([`Failure`]): the
//! segment's is retried with exponential backoff up to `max_attempts` and then nacked (which
//! dead-letters it); a dependency's is waited out with jittered backoff, the node reporting
//! NOT_SERVING meanwhile, and never settles the segment; the device's stops the worker.
//! A batch whose models panic or hang is run again segment by segment, so that only the
//! segment that panics or hangs fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vidx_core::ports::{BlobStore, Delivery, DeliveryTag, FrameSampler, IndexStore, SegmentQueue};
use vidx_core::{BlobError, Failure, SegmentMedia, SegmentTask};

use tracing::Instrument;

use crate::{DependencyHealth, Models, PipelineError, StageTimings, TaskPoints};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub frames_per_segment: usize,
    /// Tries per segment for retryable failures before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub retry_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a failing dependency (the store, the blob store) is waited out before the
    /// worker gives up with the error, which stops the node; the segment is never settled
    /// for it (not acked, not dead-lettered). `None`: until it is back, the default of a
    /// cluster node, where dead-lettering every segment of an outage would leave them
    /// unindexed.
    pub outage_limit: Option<Duration>,
    /// How long the models may take over one batch. A batch past it is abandoned (its
    /// blocking thread cannot be stopped and is left to finish) and its segments are run
    /// again one by one; a single segment past it fails as the segment's fault.
    pub segment_timeout: Option<Duration>,
    /// Where the workers report a dependency outage (the node's health and metrics read it).
    pub health: Arc<DependencyHealth>,
    /// Where blob segments are read from. Only URIs of this store are read; a task naming a
    /// blob without one, or outside it, fails without retries (and is dead-lettered).
    pub blobs: Option<Arc<dyn BlobStore>>,
    /// Where the points' thumbnails go (keys `thumbnails/<uuid>.jpg`); `None`: none are kept.
    pub thumbnails: Option<Arc<dyn BlobStore>>,
    /// Segments captioned together (a GPU batches them); 1 on the CPU.
    pub max_batch: usize,
    /// How long a batch waits to fill once its first segment arrived.
    pub max_batch_wait: Duration,
    /// At shutdown, how long the batch being computed may take to finish (its segments are
    /// then stored and acked); past it the batch is abandoned, not acked, and redelivered.
    pub shutdown_grace: Duration,
}

impl WorkerOptions {
    /// The delay before retry number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        self.retry_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff)
    }
}

/// The longest wait between two probes of a failing dependency (before jitter): a store that
/// comes back is used again within seconds, and a probe is one small write.
const OUTAGE_MAX_BACKOFF: Duration = Duration::from_secs(4);

/// `delay` scaled by a random factor in [0.5, 1.5): workers (and nodes) that failed together
/// do not retry together.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    delay.mul_f64(0.5 + (random % 1024) as f64 / 1024.0)
}

/// What a worker reports per task.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    Indexed {
        stream_id: String,
        segment_seq: u64,
        points: usize,
        media_ms: u64,
        /// Segments in the model batch this one was captioned in (1 for a retry, which runs
        /// alone).
        batch: usize,
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

/// Process tasks until the queue is closed and drained or `shutdown` turns true. At shutdown
/// the batch being computed gets `shutdown_grace` to finish (then it is stored and acked as
/// usual); a batch past it, or a segment waiting for a retry, is neither acked nor nacked: it
/// is redelivered (Kafka) or re-segmented on the next run (embedded), and its deterministic
/// ids make the replay idempotent.
///
/// Tasks are taken in batches of up to `max_batch` (waiting at most `max_batch_wait` for a
/// batch to fill) and captioned together; each task is then acked or retried on its own.
/// Returns `Err` when the queue breaks or the device fails (a sticky GPU error): the tasks in
/// flight are then neither acked nor nacked, and the process must restart.
pub async fn run_worker<Q: SegmentQueue, S: IndexStore>(
    queue: Arc<Q>,
    store: Arc<S>,
    sampler: Arc<dyn FrameSampler>,
    models: Arc<Models>,
    options: WorkerOptions,
    events: mpsc::UnboundedSender<WorkerEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let context = Context {
        store,
        sampler,
        models,
        options,
    };
    loop {
        // While another worker waits out a dependency outage, take nothing new: the queue
        // pauses the partitions once every worker is busy or waiting here.
        if !outage_over(&context.options.health, &mut shutdown).await {
            return Ok(());
        }
        let Some(batch) = next_batch(queue.as_ref(), &context.options, &mut shutdown).await? else {
            return Ok(());
        };
        // A segment delivered more than `max_attempts` times (the queue counts deliveries
        // durably, across process restarts) crashed or hung a worker each time: it is
        // dead-lettered without being tried again, and the rest of its partition goes on.
        let mut batch = batch;
        let mut index = 0;
        while index < batch.len() {
            let deliveries = batch[index].task.attempt;
            if deliveries <= context.options.max_attempts {
                index += 1;
                continue;
            }
            let delivery = batch.remove(index);
            let task = delivery.task;
            let span = tracing::info_span!(
                "segment.index",
                stream_id = %task.stream_id,
                segment_seq = task.segment_seq,
                error = tracing::field::Empty,
            );
            let outcome = (
                Err(PipelineError::Abandoned(deliveries - 1)),
                deliveries - 1,
            );
            report(
                queue.as_ref(),
                delivery.tag,
                &task,
                &span,
                outcome,
                1,
                &events,
            )
            .await?;
        }
        if batch.is_empty() {
            continue;
        }
        // The tasks move out of their deliveries: a segment's bytes are never copied here.
        let (tags, tasks): (Vec<DeliveryTag>, Vec<Arc<SegmentTask>>) = batch
            .into_iter()
            .map(|delivery| (delivery.tag, Arc::new(delivery.task)))
            .unzip();
        let size = tasks.len();
        // One span per segment, continuing the trace the ingest started (Kafka headers).
        let spans: Vec<tracing::Span> = tasks
            .iter()
            .map(|task| {
                let span = tracing::info_span!(
                    "segment.index",
                    stream_id = %task.stream_id,
                    segment_seq = task.segment_seq,
                    batch = size,
                    points = tracing::field::Empty,
                    error = tracing::field::Empty,
                    trace_id = tracing::field::Empty,
                );
                vidx_telemetry::set_parent(&span, &task.trace_context);
                span
            })
            .collect();
        let work = index_tasks(&tasks, &spans, &context);
        tokio::pin!(work);
        let first = tokio::select! {
            biased;
            results = &mut work => results?,
            _ = stopped(&mut shutdown) => {
                // Shutdown while the models run: finish this batch within the grace period
                // (then store and ack it below); past it, abandon it unacked.
                let grace = context.options.shutdown_grace;
                tracing::info!(batch = size, ?grace, "shutdown: finishing the batch in flight");
                match tokio::time::timeout(grace, &mut work).await {
                    Ok(results) => results?,
                    Err(_) => {
                        tracing::warn!(batch = size, "shutdown: the batch in flight did not finish within the grace period; it is not acked and will be redelivered");
                        return Ok(());
                    }
                }
            }
        };
        for (((tag, task), span), result) in tags.iter().zip(&tasks).zip(&spans).zip(first) {
            // A segment that succeeded is stored and acked even after shutdown was asked
            // for; one that failed is not retried then (it stays unacked and is redelivered).
            let Some(outcome) = settle(task, span, result, &context, &mut shutdown).await? else {
                continue;
            };
            report(queue.as_ref(), *tag, task, span, outcome, size, &events).await?;
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

/// What the steps of a worker share.
struct Context<S> {
    store: Arc<S>,
    sampler: Arc<dyn FrameSampler>,
    models: Arc<Models>,
    options: WorkerOptions,
}

/// The next batch: waits for one task, then takes what else arrives within `max_batch_wait`,
/// up to `max_batch`. `None` at shutdown, or once the queue is closed and drained.
async fn next_batch<Q: SegmentQueue>(
    queue: &Q,
    options: &WorkerOptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<Delivery>>, PipelineError> {
    let first = tokio::select! {
        biased;
        _ = stopped(shutdown) => return Ok(None),
        delivery = queue.receive() => delivery?,
    };
    let Some(first) = first else {
        return Ok(None);
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + options.max_batch_wait;
    while batch.len() < options.max_batch.max(1) {
        let next = tokio::select! {
            biased;
            _ = stopped(shutdown) => return Ok(None),
            next = tokio::time::timeout_at(deadline, queue.receive()) => next,
        };
        match next {
            Ok(Ok(Some(delivery))) => batch.push(delivery),
            // The wait is over, or the queue is closed: run what there is.
            Err(_) | Ok(Ok(None)) => break,
            Ok(Err(error)) => return Err(error.into()),
        }
    }
    Ok(Some(batch))
}

/// Retry one task until it is indexed or has failed for good. `Ok(None)` at shutdown; `Err`
/// when the device failed, or a dependency stayed down past `outage_limit` (the task is not
/// settled then).
async fn settle<S: IndexStore>(
    task: &Arc<SegmentTask>,
    span: &tracing::Span,
    mut result: Result<(usize, StageTimings), PipelineError>,
    context: &Context<S>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<(Result<(usize, StageTimings), PipelineError>, u32)>, PipelineError> {
    let options = &context.options;
    let (stream_id, segment_seq) = (task.stream_id.as_str(), task.segment_seq);
    let mut attempt = task.attempt.max(1);
    // Since when a dependency has been failing for this task, and how many retries it got.
    let mut outage: Option<(std::time::Instant, u32)> = None;
    loop {
        let failure = result.as_ref().err().map(PipelineError::failure);
        if failure != Some(Failure::Infrastructure) && outage.take().is_some() {
            options.health.recovered();
        }
        let backoff = match (&result, failure) {
            (Ok(_), _) | (Err(_), None) => break,
            (Err(_), Some(Failure::Device)) => return result.map(|_| None),
            (Err(error), Some(Failure::Infrastructure)) => {
                // Nothing is settled while a dependency is down: the segment waits, and with
                // it the queue's commit; the other workers take nothing new meanwhile.
                let (since, retries) = outage.get_or_insert_with(|| (std::time::Instant::now(), 0));
                *retries += 1;
                options
                    .health
                    .failing(error.outage_kind(), &error.to_string());
                if options
                    .outage_limit
                    .is_some_and(|limit| since.elapsed() >= limit)
                {
                    return result.map(|_| None);
                }
                let backoff = jittered(options.backoff(*retries).min(OUTAGE_MAX_BACKOFF));
                tracing::warn!(stream_id, segment_seq, error = %error, ?backoff, "dependency failing, waiting");
                backoff
            }
            (Err(error), Some(Failure::Data))
                if error.is_retryable() && attempt < options.max_attempts =>
            {
                let backoff = jittered(options.backoff(attempt));
                tracing::warn!(stream_id, segment_seq, attempt, error = %error, ?backoff, "segment failed, retrying");
                attempt += 1;
                backoff
            }
            (Err(_), Some(Failure::Data)) => break,
        };
        tokio::select! {
            biased;
            _ = stopped(shutdown) => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        // A retry runs the segment alone.
        let retried = tokio::select! {
            biased;
            _ = stopped(shutdown) => return Ok(None),
            results = index_tasks(std::slice::from_ref(task), std::slice::from_ref(span), context) => results?,
        };
        result = retried.into_iter().next().unwrap_or_else(|| {
            Err(PipelineError::Task(
                "no result for a retried segment".into(),
            ))
        });
    }
    Ok(Some((result, attempt)))
}

/// Ack an indexed task, or nack (dead-letter) a failed one, and report it.
async fn report<Q: SegmentQueue>(
    queue: &Q,
    tag: DeliveryTag,
    task: &SegmentTask,
    span: &tracing::Span,
    (outcome, attempts): (Result<(usize, StageTimings), PipelineError>, u32),
    batch: usize,
    events: &mpsc::UnboundedSender<WorkerEvent>,
) -> Result<(), PipelineError> {
    let stream_id = task.stream_id.clone();
    let segment_seq = task.segment_seq;
    match outcome {
        Ok((points, timings)) => {
            span.record("points", points);
            queue.ack(tag).await?;
            tracing::info!(stream_id, segment_seq, points, "segment indexed");
            let _ = events.send(WorkerEvent::Indexed {
                stream_id,
                segment_seq,
                points,
                media_ms: task.range.duration_ms(),
                batch: if attempts > 1 { 1 } else { batch },
                timings,
            });
        }
        Err(error) => {
            span.record("error", tracing::field::display(&error));
            tracing::warn!(stream_id, segment_seq, attempts, error = %error, "segment failed");
            queue.nack(tag, error.to_string(), attempts).await?;
            let _ = events.send(WorkerEvent::Failed {
                stream_id,
                segment_seq,
                attempts,
                error: error.to_string(),
                cause: error.cause(),
            });
        }
    }
    Ok(())
}

/// Waits until no dependency outage goes on. `false` when shutdown came first.
async fn outage_over(health: &DependencyHealth, shutdown: &mut watch::Receiver<bool>) -> bool {
    let mut outage = health.subscribe();
    tokio::select! {
        biased;
        _ = stopped(shutdown) => false,
        over = outage.wait_for(Option::is_none) => over.is_ok(),
    }
}

/// Resolves once shutdown is requested; never, when the sender is gone without asking.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One attempt at a batch of tasks: fetch their media, build their points together on a
/// blocking thread, upsert each task's points. One result per task; `Err` for a device
/// failure (nothing of the batch may be committed then).
async fn index_tasks<S: IndexStore>(
    tasks: &[Arc<SegmentTask>],
    spans: &[tracing::Span],
    context: &Context<S>,
) -> Result<Vec<Result<(usize, StageTimings), PipelineError>>, PipelineError> {
    let frames_per_segment = context.options.frames_per_segment;
    // Without frames the media is never opened, so there is nothing to fetch.
    let mut resolved = Vec::with_capacity(tasks.len());
    for (task, span) in tasks.iter().zip(spans) {
        let started = std::time::Instant::now();
        let media = if frames_per_segment > 0 {
            resolve_media(task, context.options.blobs.as_ref())
                .instrument(span.clone())
                .await
        } else {
            Ok(task.clone())
        };
        resolved.push(media.map(|task| (task, started.elapsed())));
    }
    let ready: Vec<Arc<SegmentTask>> = resolved
        .iter()
        .filter_map(|media| media.as_ref().ok().map(|(task, _)| task.clone()))
        .collect();
    let parent = spans.first().cloned().unwrap_or_else(tracing::Span::none);
    let built = run_models(ready, context, &parent).await?;

    let mut built = built.into_iter();
    let mut results = Vec::with_capacity(tasks.len());
    for (media, span) in resolved.into_iter().zip(spans) {
        let outcome = match media {
            Err(error) => Err(error),
            Ok((task, fetch)) => match built.next() {
                None => Err(PipelineError::Task(
                    "no result for a segment of the batch".into(),
                )),
                Some(Err(error)) => Err(error),
                Some(Ok((mut points, mut timings))) => {
                    timings.fetch = fetch;
                    let count = points.len();
                    // When the points are stored: standing queries follow it.
                    let indexed_at_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |since| since.as_millis() as u64);
                    for point in &mut points {
                        point.payload.indexed_at_ms = indexed_at_ms;
                    }
                    // Thumbnails first: a point never names one that is not stored.
                    let started = std::time::Instant::now();
                    if let Err(error) =
                        store_thumbnails(&mut points, context.options.thumbnails.as_ref()).await
                    {
                        results.push(Err(error));
                        continue;
                    }
                    timings.store += started.elapsed();
                    // The upsert returns once the points are durable; only then may the
                    // task be acked.
                    let started = std::time::Instant::now();
                    // A reindex's segment goes to the generation it builds.
                    let upsert = async {
                        match task.generation {
                            Some(generation) => context.store.upsert_to(generation, points).await,
                            None => context.store.upsert(points).await,
                        }
                    };
                    let stored = upsert
                        .instrument(
                            tracing::info_span!(parent: span, "store.upsert", points = count),
                        )
                        .await;
                    timings.store += started.elapsed();
                    stored
                        .map(|()| (count, timings))
                        .map_err(PipelineError::from)
                }
            },
        };
        results.push(outcome);
    }
    Ok(results)
}

/// Store the points' thumbnails, each key once, and name them in the payloads; without a
/// thumbnail store they are dropped.
async fn store_thumbnails(
    points: &mut [vidx_core::IndexPoint],
    store: Option<&Arc<dyn BlobStore>>,
) -> Result<(), PipelineError> {
    let mut stored: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for point in points.iter_mut() {
        let Some(thumbnail) = point.thumbnail.take() else {
            continue;
        };
        let Some(store) = store else {
            continue;
        };
        let uri = match stored.get(&thumbnail.key) {
            Some(uri) => uri.clone(),
            None => {
                let uri = store.put(&thumbnail.key, thumbnail.jpeg.to_vec()).await?;
                stored.insert(thumbnail.key, uri.clone());
                uri
            }
        };
        point.payload.thumbnail = Some(uri);
    }
    Ok(())
}

/// How one run of the models over a batch ended.
enum ModelRun {
    /// One result per task; `Err` for a device failure.
    Finished(Result<Vec<TaskPoints>, PipelineError>),
    /// The run panicked or outlasted `segment_timeout`: why.
    Aborted(PipelineError),
}

/// The models over `tasks`, on a blocking thread. A batch that panics or hangs is run again
/// one segment at a time, so that the segment that panics or hangs fails alone (a data
/// failure, retried and dead-lettered like any other) and the worker goes on.
async fn run_models<S>(
    tasks: Vec<Arc<SegmentTask>>,
    context: &Context<S>,
    parent: &tracing::Span,
) -> Result<Vec<TaskPoints>, PipelineError> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let failure = match run_models_once(tasks.clone(), context, parent).await {
        ModelRun::Finished(results) => return results,
        ModelRun::Aborted(failure) if tasks.len() == 1 => return Ok(vec![Err(failure)]),
        ModelRun::Aborted(failure) => failure,
    };
    tracing::warn!(batch = tasks.len(), error = %failure, "model batch aborted; running its segments one by one");
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        match run_models_once(vec![task], context, parent).await {
            ModelRun::Finished(result) => results.extend(result?),
            ModelRun::Aborted(failure) => results.push(Err(failure)),
        }
    }
    Ok(results)
}

async fn run_models_once<S>(
    tasks: Vec<Arc<SegmentTask>>,
    context: &Context<S>,
    parent: &tracing::Span,
) -> ModelRun {
    let (sampler, models) = (context.sampler.clone(), context.models.clone());
    let frames_per_segment = context.options.frames_per_segment;
    let parent = parent.clone();
    let run = tokio::task::spawn_blocking(move || {
        let _span =
            tracing::info_span!(parent: &parent, "segment.models", batch = tasks.len()).entered();
        crate::build_points_batch(&tasks, sampler.as_ref(), &models, frames_per_segment)
    });
    let joined = match context.options.segment_timeout {
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(joined) => joined,
            Err(_) => return ModelRun::Aborted(PipelineError::TimedOut(limit)),
        },
        None => run.await,
    };
    match joined {
        Ok(results) => ModelRun::Finished(results),
        Err(error) if error.is_panic() => {
            let payload = error.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            ModelRun::Aborted(PipelineError::Panicked(message))
        }
        Err(error) => ModelRun::Aborted(PipelineError::Task(error.to_string())),
    }
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
        generation: None,
        media,
        ..SegmentTask::clone(task)
    }))
}
