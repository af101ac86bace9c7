//! GPU worker behaviour with injected device errors: batches across queue messages, the
//! warm-up on the largest batch, out-of-memory split-and-retry, and the sticky-error exit.
//! The real Qdrant Edge store and the in-process queue; the captioner is a fake "device"
//! with a memory limit in segments per call (these tests are about the worker, not a model).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{FakeEmbedder, FlakyStore, NoFrames, task};
use tokio::sync::{mpsc, watch};
use vidx_bus::InProcessQueue;
use vidx_core::ports::{Captioner, IndexStore, SegmentInput, SegmentQueue};
use vidx_core::{ModelError, Moment, RecordKind, SegmentTask, TimeRange};
use vidx_pipeline::{Models, PipelineError, WorkerEvent, WorkerOptions, build_points, run_worker};

/// A captioner on a pretend device that holds `fits` segments per call: a larger batch runs
/// out of memory, as do segments of a stream named "huge" even alone; a stream named
/// "sticky" breaks the device. Records the size of every call.
struct Device {
    fits: usize,
    calls: Mutex<Vec<usize>>,
}

impl Device {
    fn new(fits: usize) -> Arc<Self> {
        Arc::new(Self {
            fits,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<usize> {
        self.calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default()
    }
}

impl Captioner for Device {
    fn name(&self) -> &str {
        "device"
    }
    fn revision(&self) -> &str {
        "device-1"
    }
    fn needs_frames(&self) -> bool {
        true
    }
    fn caption(&self, segment: SegmentInput<'_>) -> Result<Vec<Moment>, ModelError> {
        Ok(self.caption_batch(&[segment])?.remove(0))
    }
    fn caption_batch(&self, segments: &[SegmentInput<'_>]) -> Result<Vec<Vec<Moment>>, ModelError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(segments.len());
        }
        if segments.iter().any(|s| s.task.stream_id == "sticky") {
            return Err(ModelError::DeviceFailed {
                model: "device".into(),
                reason: "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")".into(),
            });
        }
        if segments.len() > self.fits || segments.iter().any(|s| s.task.stream_id == "huge") {
            return Err(ModelError::OutOfMemory {
                model: "device".into(),
                reason: "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
            });
        }
        Ok(segments
            .iter()
            .map(|segment| {
                let range = segment.task.range;
                vec![Moment {
                    range: TimeRange::new(range.start_ms, range.start_ms + 2_000),
                    caption: format!(
                        "a person crosses the yard in segment {}",
                        segment.task.segment_seq
                    ),
                    kind: RecordKind::Caption,
                    region: None,
                }]
            })
            .collect())
    }
}

fn models(device: Arc<Device>) -> Arc<Models> {
    Arc::new(Models {
        captioners: vec![device],
        text_embedder: Arc::new(FakeEmbedder),
        visual_embedder: None,
        regions: None,
    })
}

fn segment(stream: &str, seq: u64) -> SegmentTask {
    SegmentTask {
        generation: None,
        stream_id: stream.into(),
        ..task(seq, &[])
    }
}

struct Run {
    events: Vec<WorkerEvent>,
    result: Result<(), PipelineError>,
    queue: Arc<InProcessQueue>,
}

/// Publish `tasks` (all before the worker starts, so batches fill), close the queue and run
/// one worker with `max_batch` to completion.
async fn run(
    store: Arc<FlakyStore>,
    device: Arc<Device>,
    tasks: Vec<SegmentTask>,
    max_batch: usize,
    max_attempts: u32,
) -> anyhow::Result<Run> {
    let queue = Arc::new(InProcessQueue::new(tasks.len().max(1)));
    for task in tasks {
        queue.publish(task).await?;
    }
    queue.close();
    let options = WorkerOptions {
        frames_per_segment: 0,
        max_attempts,
        retry_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        outage_limit: Some(Duration::ZERO),
        segment_timeout: None,
        health: Default::default(),
        blobs: None,
        max_batch,
        max_batch_wait: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        thumbnails: None,
    };
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (_shutdown_tx, shutdown_rx) = watch::channel(false);
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        run_worker(
            queue.clone(),
            store,
            Arc::new(NoFrames),
            models(device),
            options,
            events_tx,
            shutdown_rx,
        ),
    )
    .await?;
    let mut events = Vec::new();
    while let Ok(event) = events_rx.try_recv() {
        events.push(event);
    }
    Ok(Run {
        events,
        result,
        queue,
    })
}

fn indexed(events: &[WorkerEvent]) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::Indexed {
                stream_id,
                segment_seq,
                ..
            } => Some((stream_id.clone(), *segment_seq)),
            WorkerEvent::Failed { .. } => None,
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_batch_writes_the_same_points_as_single_runs() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let device = Device::new(8);
    let tasks: Vec<SegmentTask> = (0..6).map(|seq| segment("cam-1", seq)).collect();
    let run = run(store.clone(), device.clone(), tasks.clone(), 4, 3).await?;
    run.result?;
    assert_eq!(indexed(&run.events).len(), 6, "{:?}", run.events);
    // Queue messages were captioned together: a batch of 4, then the other 2.
    assert_eq!(device.calls(), vec![4, 2]);

    // Each stored point is exactly what a single run of its segment builds.
    let single = Device::new(1);
    let models = models(single.clone());
    let mut expected = 0;
    for task in &tasks {
        for point in build_points(task, &NoFrames, &models, 0)? {
            let stored = store.point("acme", point.id).await?.ok_or_else(|| {
                anyhow::anyhow!("point {} of segment {} missing", point.id, task.segment_seq)
            })?;
            assert_eq!(stored.vectors, point.vectors);
            // The worker stamps the time of the upsert; the rest is the single run's.
            assert!(stored.payload.indexed_at_ms > 0);
            let stamped = vidx_core::PointPayload {
                indexed_at_ms: stored.payload.indexed_at_ms,
                ..point.payload.clone()
            };
            assert_eq!(stored.payload, stamped);
            expected += 1;
        }
    }
    assert!(single.calls().iter().all(|size| *size == 1));
    assert_eq!(store.count(None).await?, expected as u64);
    Ok(())
}

#[tokio::test]
async fn a_batch_that_runs_out_of_memory_is_split_in_halves_and_retried() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let device = Device::new(2);
    let tasks: Vec<SegmentTask> = (0..5).map(|seq| segment("cam-1", seq)).collect();
    let run = run(store.clone(), device.clone(), tasks, 5, 3).await?;
    run.result?;
    assert_eq!(indexed(&run.events).len(), 5, "{:?}", run.events);
    assert!(run.queue.dead_letters().is_empty());
    // 5 does not fit -> 2 + 3; 3 does not fit -> 1 + 2.
    assert_eq!(device.calls(), vec![5, 2, 3, 1, 2]);
    assert_eq!(store.count(None).await?, 5);
    Ok(())
}

#[tokio::test]
async fn a_segment_that_never_fits_is_retried_then_dead_lettered_and_the_rest_indexed()
-> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let device = Device::new(4);
    let tasks = vec![
        segment("cam-1", 0),
        segment("huge", 1),
        segment("cam-1", 2),
        segment("cam-1", 3),
    ];
    let run = run(store.clone(), device.clone(), tasks, 4, 3).await?;
    run.result?;
    assert_eq!(
        indexed(&run.events),
        vec![
            ("cam-1".into(), 0),
            ("cam-1".into(), 2),
            ("cam-1".into(), 3)
        ]
    );
    let letters = run.queue.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].stream_id.as_str(), letters[0].segment_seq),
        ("huge", 1)
    );
    // Out of memory is retryable: the batch try, then the retries alone, up to max_attempts.
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].reason.contains("out of device memory"),
        "{}",
        letters[0].reason
    );
    let failed = run
        .events
        .iter()
        .find_map(|event| match event {
            WorkerEvent::Failed { cause, .. } => Some(*cause),
            WorkerEvent::Indexed { .. } => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no failure reported"))?;
    assert_eq!(failed, "model");
    // 4 -> 2 + 2 -> (1 + 1) + 2; then 2 retries of the huge segment alone.
    assert_eq!(device.calls(), vec![4, 2, 1, 1, 2, 1, 1]);
    assert_eq!(store.count(None).await?, 3);
    assert_eq!(run.queue.in_flight(), 0);
    Ok(())
}

#[tokio::test]
async fn a_sticky_device_error_stops_the_worker_and_settles_nothing_in_flight() -> anyhow::Result<()>
{
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let device = Device::new(8);
    let tasks = vec![
        segment("cam-1", 0),
        segment("sticky", 1),
        segment("cam-1", 2),
    ];
    let run = run(store.clone(), device.clone(), tasks, 3, 3).await?;
    let error = match run.result {
        Err(error) => error,
        Ok(()) => anyhow::bail!("the worker went on after a sticky device error"),
    };
    assert!(vidx_pipeline::device_failed(&error), "{error}");
    assert!(
        error.to_string().contains("CUDA_ERROR_ILLEGAL_ADDRESS"),
        "{error}"
    );
    // Nothing of the batch was acked, nacked or written: all three are redelivered after
    // the restart.
    assert_eq!(run.queue.in_flight(), 3);
    assert!(run.queue.dead_letters().is_empty());
    assert!(run.events.is_empty(), "{:?}", run.events);
    assert_eq!(store.count(None).await?, 0);
    // No split, no retry on a broken device.
    assert_eq!(device.calls(), vec![3]);
    Ok(())
}

#[test]
fn warm_up_refuses_a_batch_that_does_not_fit() {
    let device = Device::new(4);
    let models = models(device.clone());
    let error = match models.warm_up(8, 4, (32, 32)) {
        Err(error) => error,
        Ok(()) => panic!("a batch of 8 warmed up on a device that holds 4"),
    };
    assert!(error.is_out_of_memory(), "{error}");
    assert!(
        error
            .to_string()
            .contains("a batch of 8 segments x 4 frames does not fit"),
        "{error}"
    );
    assert!(error.to_string().contains("pipeline.max_batch"), "{error}");
    assert!(models.warm_up(4, 4, (32, 32)).is_ok());
    // The warm-up runs the whole batch at once, once per size asked.
    assert_eq!(device.calls(), vec![8, 4]);
}
