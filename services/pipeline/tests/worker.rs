//! Pipeline logic: retries, dead letters, acks and idempotency, with the real Qdrant Edge
//! store (wrapped to inject outages) and the in-process queue. The text embedder is a fake:
//! these tests are about the stages, not the model.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{FakeEmbedder, FlakyStore, NoFrames, release_hung, task};
use tokio::sync::{mpsc, watch};
use vidx_blob::ObjectBlobStore;
use vidx_bus::InProcessQueue;
use vidx_core::ports::{BlobStore, FrameSampler, IndexStore, SegmentQueue};
use vidx_core::{Frame, MediaError, SearchFilter, SegmentMedia, SegmentTask, TimeRange};
use vidx_pipeline::captioners::SubtitleCaptioner;
use vidx_pipeline::{DependencyHealth, Models, WorkerEvent, WorkerOptions, run_worker};

/// How the workers see segment media.
struct Media {
    sampler: Arc<dyn FrameSampler>,
    frames_per_segment: usize,
    blobs: Option<Arc<dyn BlobStore>>,
}

/// A sampler that records the bytes of every file it is asked to decode and returns no
/// frames (the subtitles still make points).
#[derive(Default)]
struct RecordingSampler {
    opened: Mutex<Vec<(PathBuf, Vec<u8>)>>,
}

impl FrameSampler for RecordingSampler {
    fn sample(&self, path: &Path, _: TimeRange, _: usize) -> Result<Vec<Frame>, MediaError> {
        let bytes = std::fs::read(path).map_err(|error| MediaError::Io {
            input: path.display().to_string(),
            reason: error.to_string(),
        })?;
        if let Ok(mut opened) = self.opened.lock() {
            opened.push((path.to_path_buf(), bytes));
        }
        Ok(Vec::new())
    }
    fn sample_bytes(
        &self,
        media: vidx_core::ports::SharedBytes,
        _: TimeRange,
        _: usize,
    ) -> Result<Vec<Frame>, MediaError> {
        // Read in memory: recorded without a path.
        if let Ok(mut opened) = self.opened.lock() {
            opened.push((PathBuf::new(), (*media).as_ref().to_vec()));
        }
        Ok(Vec::new())
    }
}

struct Harness {
    store: Arc<FlakyStore>,
    queue: Arc<InProcessQueue>,
    health: Arc<DependencyHealth>,
    // Dropped last: Qdrant Edge flushes into its directory when the store drops.
    _directory: tempfile::TempDir,
}

impl Harness {
    fn new(outages: usize) -> anyhow::Result<Self> {
        let directory = tempfile::tempdir()?;
        Ok(Self {
            store: Arc::new(FlakyStore::open(directory.path(), outages)?),
            _directory: directory,
            queue: Arc::new(InProcessQueue::new(4)),
            health: Arc::new(DependencyHealth::new()),
        })
    }

    /// Publish the tasks, close the queue, run `workers` workers to completion.
    async fn run(
        &self,
        tasks: Vec<SegmentTask>,
        workers: usize,
        max_attempts: u32,
    ) -> anyhow::Result<Vec<WorkerEvent>> {
        self.run_with(tasks, workers, max_attempts, None).await
    }

    async fn run_with(
        &self,
        tasks: Vec<SegmentTask>,
        workers: usize,
        max_attempts: u32,
        outage_limit: Option<Duration>,
    ) -> anyhow::Result<Vec<WorkerEvent>> {
        let media = Media {
            sampler: Arc::new(NoFrames),
            frames_per_segment: 0,
            blobs: None,
        };
        self.run_media(tasks, workers, max_attempts, outage_limit, media)
            .await
    }

    async fn run_media(
        &self,
        tasks: Vec<SegmentTask>,
        workers: usize,
        max_attempts: u32,
        outage_limit: Option<Duration>,
        media: Media,
    ) -> anyhow::Result<Vec<WorkerEvent>> {
        let models = Arc::new(Models {
            captioners: vec![Arc::new(SubtitleCaptioner)],
            text_embedder: Arc::new(FakeEmbedder),
            visual_embedder: None,
            regions: None,
        });
        let options = WorkerOptions {
            frames_per_segment: media.frames_per_segment,
            max_attempts,
            retry_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            outage_limit,
            segment_timeout: Some(Duration::from_millis(1500)),
            health: self.health.clone(),
            blobs: media.blobs,
            max_batch: 1,
            max_batch_wait: Duration::from_millis(0),
            shutdown_grace: Duration::from_secs(5),
            thumbnails: None,
        };
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for _ in 0..workers {
            handles.push(tokio::spawn(run_worker(
                self.queue.clone(),
                self.store.clone(),
                media.sampler.clone(),
                models.clone(),
                options.clone(),
                events_tx.clone(),
                shutdown_rx.clone(),
            )));
        }
        drop(events_tx);
        for task in tasks {
            self.queue.publish(task).await?;
        }
        self.queue.close();
        for handle in handles {
            handle.await??;
        }
        let mut events = Vec::new();
        while let Some(event) = events_rx.recv().await {
            events.push(event);
        }
        Ok(events)
    }

    async fn points(&self) -> anyhow::Result<u64> {
        Ok(self.store.count(None).await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_is_retried_then_acked() -> anyhow::Result<()> {
    let harness = Harness::new(2)?;
    let events = harness
        .run(vec![task(0, &["a dog runs", "a cat sleeps"])], 1, 3)
        .await?;
    let [
        WorkerEvent::Indexed {
            stream_id,
            segment_seq: 0,
            points: 2,
            media_ms: 10_000,
            batch: 1,
            timings,
        },
    ] = &events[..]
    else {
        panic!("one indexed segment expected: {events:?}");
    };
    assert_eq!(stream_id, "cam-1");
    assert!(timings.store > Duration::ZERO, "{timings:?}");
    assert_eq!(
        harness.store.upsert_calls.load(Ordering::SeqCst),
        3,
        "two failures, one success"
    );
    assert_eq!(harness.points().await?, 2);
    assert!(harness.queue.dead_letters().is_empty());
    assert_eq!(harness.queue.in_flight(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_store_outage_is_waited_out_without_dead_letters() -> anyhow::Result<()> {
    // docs/reliability.md fault 11: the store stays down for more tries than max_attempts allows;
    // the worker waits (acking nothing) instead of dead-lettering, then indexes everything.
    let harness = Harness::new(12)?;
    let events = harness
        .run_with(vec![task(0, &["first"]), task(1, &["second"])], 1, 3, None)
        .await?;
    assert!(harness.queue.dead_letters().is_empty(), "{events:?}");
    assert!(
        events
            .iter()
            .all(|event| matches!(event, WorkerEvent::Indexed { .. })),
        "{events:?}"
    );
    assert_eq!(harness.points().await?, 2);
    assert!(harness.store.upsert_calls.load(Ordering::SeqCst) >= 13);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter_and_the_queue_moves_on() -> anyhow::Result<()> {
    // docs/reliability.md fault 6: a segment that runs out of device memory every time.
    let harness = Harness::new(0)?;
    let events = harness
        .run(vec![task(0, &["BUSY first"]), task(1, &["second"])], 1, 3)
        .await?;
    let letters = harness.queue.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].segment_seq, letters[0].attempts), (0, 3));
    assert!(
        letters[0].reason.contains("out of device memory"),
        "{}",
        letters[0].reason
    );
    assert!(
        matches!(&events[0], WorkerEvent::Failed { attempts: 3, .. }),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], WorkerEvent::Indexed { segment_seq: 1, .. }),
        "{events:?}"
    );
    assert_eq!(
        harness.points().await?,
        1,
        "nothing of the failed segment, all of the next"
    );
    Ok(())
}

/// docs/reliability.md fault 21: whatever the store answers (unreachable, internal error,
/// credentials refused, collection missing, disk full), for longer than `max_attempts` tries
/// allow, nothing is dead-lettered or acked while it lasts, the node reports the outage with
/// its reason, and everything is indexed once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_waited_out_never_dead_lettered_and_reported() -> anyhow::Result<()> {
    for kind in 0..5 {
        let harness = Arc::new(Harness::new(0)?);
        harness.store.failure_kind.store(kind, Ordering::SeqCst);
        harness.store.down.store(true, Ordering::SeqCst);
        let run = tokio::spawn({
            let harness = harness.clone();
            async move {
                harness
                    .run(vec![task(0, &["first"]), task(1, &["second"])], 2, 2)
                    .await
            }
        });
        // Well past max_attempts (2) tries at 5-20 ms each.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while harness.store.upsert_calls.load(Ordering::SeqCst) < 10 {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no retries");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outage = harness.health.outage();
        assert!(
            outage
                .as_deref()
                .is_some_and(|reason| reason.contains("injected outage")),
            "kind {kind}: {outage:?}"
        );
        assert!(harness.queue.dead_letters().is_empty(), "kind {kind}");
        let in_flight = harness.queue.in_flight();
        assert!(
            (1..=2).contains(&in_flight),
            "kind {kind}: {in_flight} in flight"
        );
        harness.store.down.store(false, Ordering::SeqCst);
        let events = run.await??;
        assert!(
            events
                .iter()
                .all(|event| matches!(event, WorkerEvent::Indexed { .. })),
            "kind {kind}: {events:?}"
        );
        assert_eq!(harness.points().await?, 2, "kind {kind}");
        assert_eq!(harness.health.outage(), None, "kind {kind}: recovered");
        assert!(harness.queue.dead_letters().is_empty(), "kind {kind}");
    }
    Ok(())
}

/// An embedded run (`vidx index`) does not wait for a local store: the worker stops with the
/// store's error, and the segment is neither acked nor dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_with_an_outage_limit_stops_the_worker_unsettled() -> anyhow::Result<()> {
    let harness = Harness::new(0)?;
    harness.store.failure_kind.store(4, Ordering::SeqCst);
    harness.store.down.store(true, Ordering::SeqCst);
    let error = harness
        .run_with(vec![task(0, &["first"])], 1, 3, Some(Duration::ZERO))
        .await
        .expect_err("the worker stops");
    assert!(error.to_string().contains("injected outage"), "{error}");
    assert!(harness.queue.dead_letters().is_empty());
    assert_eq!(harness.queue.in_flight(), 1);
    Ok(())
}

/// docs/reliability.md fault 20: a segment whose models panic and one whose models hang are
/// tried `max_attempts` times each and dead-lettered; the worker survives both, and the
/// segments around them are indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_and_hanging_segments_are_dead_lettered_and_the_worker_goes_on()
-> anyhow::Result<()> {
    let harness = Harness::new(0)?;
    let events = harness
        .run(
            vec![
                task(0, &["before"]),
                task(1, &["PANIC here"]),
                task(2, &["HANG here"]),
                task(3, &["after"]),
            ],
            1,
            2,
        )
        .await;
    release_hung();
    let events = events?;
    let mut letters: Vec<(u64, u32, String)> = harness
        .queue
        .dead_letters()
        .into_iter()
        .map(|letter| (letter.segment_seq, letter.attempts, letter.reason))
        .collect();
    letters.sort();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!((letters[0].0, letters[0].1), (1, 2), "{letters:?}");
    assert!(letters[0].2.contains("injected panic"), "{letters:?}");
    assert_eq!((letters[1].0, letters[1].1), (2, 2), "{letters:?}");
    assert!(letters[1].2.contains("segment_timeout_ms"), "{letters:?}");
    let indexed: Vec<u64> = events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::Indexed { segment_seq, .. } => Some(*segment_seq),
            _ => None,
        })
        .collect();
    assert_eq!(indexed, vec![0, 3]);
    assert_eq!(harness.points().await?, 2);
    Ok(())
}

/// A segment the queue has delivered more than `max_attempts` times (each delivery crashed
/// or hung a worker before it settled) is dead-lettered without running the models again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_delivered_more_than_max_attempts_times_is_dead_lettered_untried()
-> anyhow::Result<()> {
    let harness = Harness::new(0)?;
    let mut crashed = task(0, &["would index fine"]);
    crashed.attempt = 4;
    let events = harness.run(vec![crashed, task(1, &["next"])], 1, 3).await?;
    let letters = harness.queue.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].segment_seq, letters[0].attempts), (0, 3));
    assert!(
        letters[0].reason.contains("3 deliveries"),
        "{}",
        letters[0].reason
    );
    assert_eq!(harness.store.upsert_calls.load(Ordering::SeqCst), 1);
    assert!(
        matches!(
            &events[..],
            [
                WorkerEvent::Failed { segment_seq: 0, .. },
                WorkerEvent::Indexed { segment_seq: 1, .. }
            ]
        ),
        "{events:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_errors_and_unknown_schema_are_not_retried() -> anyhow::Result<()> {
    let harness = Harness::new(0)?;
    let mut future_version = task(2, &["from the future"]);
    future_version.schema_version = 99;
    let events = harness
        .run(
            vec![
                task(0, &["fine"]),
                task(1, &["a POISON caption"]),
                future_version,
            ],
            1,
            5,
        )
        .await?;
    let letters = harness.queue.dead_letters();
    let reasons: Vec<(u64, &str)> = letters
        .iter()
        .map(|letter| (letter.segment_seq, letter.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].0 == 1 && reasons[0].1.contains("bad tensor"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0 == 2 && reasons[1].1.contains("schema version 99"),
        "{reasons:?}"
    );
    for event in &events {
        if let WorkerEvent::Failed { attempts, .. } = event {
            assert_eq!(
                *attempts, 1,
                "non-retryable errors fail on the first attempt"
            );
        }
    }
    assert_eq!(harness.points().await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_and_replays_index_each_moment_once() -> anyhow::Result<()> {
    let harness = Harness::new(0)?;
    let captions: Vec<String> = (0..3)
        .map(|index| format!("caption number {index}"))
        .collect();
    let caption_refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let tasks: Vec<SegmentTask> = (0..20).map(|seq| task(seq, &caption_refs)).collect();
    let events = harness.run(tasks.clone(), 3, 3).await?;
    assert_eq!(events.len(), 20);
    assert_eq!(harness.points().await?, 60);
    // A replay of everything (offsets reset, or the same input indexed again): same ids, same count.
    let replay = Harness {
        _directory: tempfile::tempdir()?,
        store: harness.store.clone(),
        queue: Arc::new(InProcessQueue::new(4)),
        health: Arc::new(DependencyHealth::new()),
    };
    replay.run(tasks, 2, 3).await?;
    assert_eq!(replay.points().await?, 60);
    let by_stream = replay
        .store
        .count(Some(SearchFilter {
            tenant: "acme".into(),
            streams: vec!["cam-1".into()],
            from_ms: Some(0),
            to_ms: Some(19_999),
            ..SearchFilter::default()
        }))
        .await?;
    assert_eq!(by_stream, 6, "segments 0 and 1 hold 3 moments each");
    Ok(())
}

/// Blob segments: a local store's file is decoded in place, a remote store's bytes arrive
/// intact, and a message naming anything outside the store (a forged `file:///etc/passwd`,
/// another bucket) is dead-lettered at once, without retries and without opening the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_segments_are_read_only_from_the_blob_store() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let local: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::open(
        &directory.path().join("blobs").display().to_string(),
        &Default::default(),
    )?);
    let secret = directory.path().join("secret.txt");
    std::fs::write(&secret, b"not a segment")?;
    let with_media = |seq: u64, media: SegmentMedia| SegmentTask {
        generation: None,
        media,
        ..task(seq, &["a caption"])
    };
    let inside = local
        .put("job/000000.mkv", b"local segment".to_vec())
        .await?;
    let tasks = vec![
        with_media(0, SegmentMedia::Blob(inside.clone())),
        with_media(
            1,
            SegmentMedia::Blob(format!("file://{}", secret.display())),
        ),
        with_media(2, SegmentMedia::Blob("file:///etc/passwd".into())),
        with_media(
            3,
            SegmentMedia::Blob(format!("{}/../secret.txt", local.location())),
        ),
    ];
    let harness = Harness::new(0)?;
    let sampler = Arc::new(RecordingSampler::default());
    let media = Media {
        sampler: sampler.clone(),
        frames_per_segment: 2,
        blobs: Some(local.clone()),
    };
    let events = harness.run_media(tasks, 1, 3, None, media).await?;
    let opened = sampler
        .opened
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    assert_eq!(opened.len(), 1, "only the blob inside the store is opened");
    assert_eq!(opened[0].0, local.local_path(&inside)?.unwrap_or_default());
    assert_eq!(opened[0].1, b"local segment");
    let failed: Vec<(u64, u32, String)> = events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::Failed {
                segment_seq,
                attempts,
                error,
                ..
            } => Some((*segment_seq, *attempts, error.clone())),
            WorkerEvent::Indexed { .. } => None,
        })
        .collect();
    assert_eq!(failed.len(), 3, "{events:?}");
    for (seq, attempts, error) in &failed {
        assert_eq!(*attempts, 1, "segment {seq}: a refusal is not retried");
        assert!(error.contains("refused"), "segment {seq}: {error}");
    }
    assert_eq!(harness.queue.dead_letters().len(), 3);
    assert_eq!(harness.points().await?, 1);

    // A remote store (object_store's in-memory store: the S3/GCS code path): bytes intact;
    // a worker without any blob store refuses blob segments.
    let remote: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::open(
        "memory:///segments",
        &Default::default(),
    )?);
    let uri = remote.put("job/000004.mkv", vec![9; 70_000]).await?;
    let harness = Harness::new(0)?;
    let sampler = Arc::new(RecordingSampler::default());
    let media = Media {
        sampler: sampler.clone(),
        frames_per_segment: 2,
        blobs: Some(remote),
    };
    let events = harness
        .run_media(
            vec![with_media(4, SegmentMedia::Blob(uri.clone()))],
            1,
            3,
            None,
            media,
        )
        .await?;
    assert!(
        matches!(events[..], [WorkerEvent::Indexed { .. }]),
        "{events:?}"
    );
    let opened = sampler
        .opened
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].1, vec![9; 70_000]);
    assert_eq!(
        opened[0].0,
        PathBuf::new(),
        "a fetched remote blob is decoded from memory, not written to a file first"
    );

    let harness = Harness::new(0)?;
    let media = Media {
        sampler: Arc::new(RecordingSampler::default()),
        frames_per_segment: 2,
        blobs: None,
    };
    let events = harness
        .run_media(
            vec![with_media(5, SegmentMedia::Blob(uri))],
            1,
            3,
            None,
            media,
        )
        .await?;
    assert!(
        matches!(&events[..], [WorkerEvent::Failed { error, .. }] if error.contains("no blob store")),
        "{events:?}"
    );
    Ok(())
}

/// A captioner that takes `millis` per batch and adds no moments (the subtitles make the
/// points).
struct SlowCaptioner {
    millis: u64,
}

impl vidx_core::ports::Captioner for SlowCaptioner {
    fn name(&self) -> &str {
        "slow"
    }
    fn revision(&self) -> &str {
        "slow-1"
    }
    fn needs_frames(&self) -> bool {
        false
    }
    fn caption(
        &self,
        _: vidx_core::ports::SegmentInput<'_>,
    ) -> Result<Vec<vidx_core::Moment>, vidx_core::ModelError> {
        std::thread::sleep(Duration::from_millis(self.millis));
        Ok(Vec::new())
    }
    fn caption_batch(
        &self,
        segments: &[vidx_core::ports::SegmentInput<'_>],
    ) -> Result<Vec<Vec<vidx_core::Moment>>, vidx_core::ModelError> {
        std::thread::sleep(Duration::from_millis(self.millis));
        Ok(segments.iter().map(|_| Vec::new()).collect())
    }
}

/// Shut a worker down while its batch of two runs in the models, with `grace` to finish:
/// the events, the points stored, and the deliveries left unsettled.
async fn shutdown_mid_batch(grace: Duration) -> anyhow::Result<(Vec<WorkerEvent>, u64, usize)> {
    let harness = Harness::new(0)?;
    let models = Arc::new(Models {
        captioners: vec![
            Arc::new(SlowCaptioner { millis: 800 }),
            Arc::new(SubtitleCaptioner),
        ],
        text_embedder: Arc::new(FakeEmbedder),
        visual_embedder: None,
        regions: None,
    });
    let options = WorkerOptions {
        frames_per_segment: 0,
        max_attempts: 3,
        retry_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        outage_limit: Some(Duration::ZERO),
        segment_timeout: None,
        health: Default::default(),
        blobs: None,
        max_batch: 2,
        max_batch_wait: Duration::from_millis(100),
        shutdown_grace: grace,
        thumbnails: None,
    };
    for seq in 0..2 {
        harness.queue.publish(task(seq, &["a dog runs"])).await?;
    }
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let worker = tokio::spawn(run_worker(
        harness.queue.clone(),
        harness.store.clone(),
        Arc::new(NoFrames) as Arc<dyn FrameSampler>,
        models,
        options,
        events_tx,
        shutdown_rx,
    ));
    // The batch is in the models by now (it waited 100 ms to fill, then runs for 800 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    shutdown_tx.send(true)?;
    worker.await??;
    let mut events = Vec::new();
    while let Some(event) = events_rx.recv().await {
        events.push(event);
    }
    Ok((events, harness.points().await?, harness.queue.in_flight()))
}

#[tokio::test]
async fn shutdown_finishes_the_batch_in_flight_within_the_grace_period() -> anyhow::Result<()> {
    let (events, points, in_flight) = shutdown_mid_batch(Duration::from_secs(10)).await?;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|event| matches!(event, WorkerEvent::Indexed { batch: 2, .. })),
        "both segments indexed in one batch of two: {events:?}"
    );
    assert_eq!(points, 2, "the finished batch is stored");
    assert_eq!(in_flight, 0, "and acked");
    Ok(())
}

#[tokio::test]
async fn shutdown_abandons_a_batch_that_outlasts_the_grace_period() -> anyhow::Result<()> {
    let (events, points, in_flight) = shutdown_mid_batch(Duration::from_millis(50)).await?;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(points, 0, "nothing of the abandoned batch is stored");
    assert_eq!(in_flight, 2, "neither acked nor nacked: it is redelivered");
    Ok(())
}
