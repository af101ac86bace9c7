//! Workers on Kafka: a real Kafka-protocol broker (`tansu`, started on loopback), the real
//! Qdrant Edge store, the worker loop. docs/reliability.md faults 1, 2, 11 and 12: after every
//! fault the store holds exactly the expected points and every expected id.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{FakeEmbedder, FlakyStore, NoFrames, task};
use tokio::sync::{mpsc, watch};
use vidx_bus::kafka::ensure_topics;
use vidx_bus::{KafkaQueue, KafkaSettings};
use vidx_core::ports::{FrameSampler, IndexStore, SegmentQueue};
use vidx_core::{SearchFilter, SegmentTask};
use vidx_pipeline::captioners::SubtitleCaptioner;
use vidx_pipeline::{Models, WorkerEvent, WorkerOptions, build_points, run_worker};
use vidx_testkit::LocalBroker;

const SEGMENTS: u64 = 6;

fn tasks() -> Vec<SegmentTask> {
    (0..SEGMENTS)
        .map(|seq| task(seq, &["a dog runs", "a cat sleeps"]))
        .collect()
}

fn models() -> Arc<Models> {
    Arc::new(Models {
        captioners: vec![Arc::new(SubtitleCaptioner)],
        text_embedder: Arc::new(FakeEmbedder),
        visual_embedder: None,
        regions: None,
    })
}

/// Every point id the tasks must produce.
fn expected_ids() -> anyhow::Result<BTreeSet<String>> {
    let models = models();
    let mut ids = BTreeSet::new();
    for task in tasks() {
        for point in build_points(&task, &NoFrames, &models, 0)? {
            ids.insert(point.id.to_string());
        }
    }
    Ok(ids)
}

/// The ids in the store, read back through a search that matches everything of the tenant.
async fn stored_ids(store: &FlakyStore) -> anyhow::Result<BTreeSet<String>> {
    let query = vidx_core::VectorQuery {
        vector_name: "text".into(),
        vector: vec![1.0; common::DIMENSION],
        filter: SearchFilter {
            tenant: "acme".into(),
            ..Default::default()
        },
        top_k: 1000,
        caption_words: None,
    };
    Ok(store
        .search(query)
        .await?
        .into_iter()
        .map(|hit| hit.id.to_string())
        .collect())
}

struct Worker {
    queue: Arc<KafkaQueue>,
    handle: tokio::task::JoinHandle<Result<(), vidx_pipeline::PipelineError>>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    shutdown: watch::Sender<bool>,
}

fn start_worker(settings: &KafkaSettings, store: &Arc<FlakyStore>) -> anyhow::Result<Worker> {
    start_worker_with(settings, store, models(), 1)
}

fn start_worker_with(
    settings: &KafkaSettings,
    store: &Arc<FlakyStore>,
    models: Arc<Models>,
    max_batch: usize,
) -> anyhow::Result<Worker> {
    let queue = Arc::new(KafkaQueue::worker(settings.clone())?);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let options = WorkerOptions {
        frames_per_segment: 0,
        max_attempts: 3,
        retry_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        outage_limit: None,
        segment_timeout: None,
        health: Default::default(),
        blobs: None,
        max_batch,
        max_batch_wait: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(5),
        thumbnails: None,
    };
    let handle = tokio::spawn(run_worker(
        queue.clone(),
        store.clone(),
        Arc::new(NoFrames) as Arc<dyn FrameSampler>,
        models,
        options,
        events_tx,
        shutdown_rx,
    ));
    Ok(Worker {
        queue,
        handle,
        events,
        shutdown,
    })
}

impl Worker {
    /// Wait for `count` indexed segments, then stop the worker gracefully.
    async fn finish_after(mut self, count: usize) -> anyhow::Result<Arc<KafkaQueue>> {
        let mut indexed = 0;
        while indexed < count {
            let event = tokio::time::timeout(Duration::from_secs(60), self.events.recv())
                .await
                .map_err(|_| anyhow::anyhow!("only {indexed} of {count} segments indexed"))?
                .ok_or_else(|| anyhow::anyhow!("worker stopped after {indexed} segments"))?;
            match event {
                WorkerEvent::Indexed { .. } => indexed += 1,
                WorkerEvent::Failed { error, .. } => anyhow::bail!("segment failed: {error}"),
            }
        }
        let _ = self.shutdown.send(true);
        self.handle.await??;
        Ok(self.queue)
    }

    /// SIGKILL, as far as the queue and the store can tell: the task stops where it is and
    /// the consumer goes away without committing anything more.
    async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
        drop(self.queue);
    }
}

async fn committed(queue: &Arc<KafkaQueue>) -> anyhow::Result<Option<i64>> {
    let queue = queue.clone();
    Ok(tokio::task::spawn_blocking(move || queue.committed_offset(0)).await??)
}

async fn publish_all(settings: &KafkaSettings) -> anyhow::Result<()> {
    ensure_topics(settings).await?;
    let producer = KafkaQueue::producer(settings.clone())?;
    for task in tasks() {
        producer.publish(task).await?;
    }
    Ok(())
}

/// Faults 1 and 2: a worker killed after an upsert but before its commit, and one killed
/// before its upsert. The next worker replays from the last commit; the ids are the same, so
/// nothing is missing, duplicated or phantom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_leave_every_segment_indexed_exactly_once() -> anyhow::Result<()> {
    let broker = LocalBroker::start()?;
    let settings = broker.fresh_settings(1);
    publish_all(&settings).await?;
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let expected = expected_ids()?;

    // Fault 1: the third upsert lands, then the worker dies before acking it.
    store.hang_at.store(3, Ordering::SeqCst);
    let first = start_worker(&settings, &store)?;
    tokio::time::timeout(Duration::from_secs(60), store.hung.notified()).await?;
    let committed_before_kill = committed(&first.queue).await?;
    first.kill().await;
    assert_eq!(
        store.count(None).await?,
        6,
        "three segments of two points each"
    );
    // Segments 0 and 1 (offsets 0 and 1 of the fresh topic) are acked; segment 2 is not.
    let base = 0;
    assert_eq!(committed_before_kill, Some(base + 2));

    // Fault 2: the next worker dies inside its second upsert, before writing.
    store.hang_at.store(
        store.upsert_calls.load(Ordering::SeqCst) + 2,
        Ordering::SeqCst,
    );
    store.hang_before_write.store(true, Ordering::SeqCst);
    let second = start_worker(&settings, &store)?;
    tokio::time::timeout(Duration::from_secs(60), store.hung.notified()).await?;
    second.kill().await;

    // A healthy worker finishes the rest from the last commit.
    store.hang_at.store(usize::MAX, Ordering::SeqCst);
    let third = start_worker(&settings, &store)?;
    let remaining = SEGMENTS as i64 - (committed(&third.queue).await?.unwrap_or(base) - base);
    let queue = third.finish_after(remaining as usize).await?;
    assert_eq!(committed(&queue).await?, Some(base + SEGMENTS as i64));
    assert_eq!(store.count(None).await?, expected.len() as u64);
    assert_eq!(
        stored_ids(&store).await?,
        expected,
        "no missing or phantom ids"
    );
    Ok(())
}

/// Fault 11: the store is down; nothing is committed while it is, and once it is back every
/// segment is indexed once. Fault 12: the whole topic replayed by a new group (offsets reset)
/// rewrites the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_and_full_replay_keep_counts_exact() -> anyhow::Result<()> {
    let broker = LocalBroker::start()?;
    let settings = broker.fresh_settings(1);
    publish_all(&settings).await?;
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let expected = expected_ids()?;

    store.down.store(true, Ordering::SeqCst);
    let worker = start_worker(&settings, &store)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.upsert_calls.load(Ordering::SeqCst) < 4 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no upsert attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first delivery's count is committed at offset 0 (nothing done before it); nothing
    // past it while the store is down.
    assert_eq!(
        committed(&worker.queue).await?.unwrap_or(0),
        0,
        "no commit past the first segment while the store is down"
    );
    assert_eq!(store.count(None).await?, 0);
    store.down.store(false, Ordering::SeqCst);
    let queue = worker.finish_after(SEGMENTS as usize).await?;
    let end = committed(&queue).await?;
    assert!(end.is_some());
    drop(queue);
    assert_eq!(stored_ids(&store).await?, expected);

    // Replay everything under a new group: same ids, same count.
    let replay = KafkaSettings {
        group_id: format!("{}-replay", settings.group_id),
        ..settings.clone()
    };
    start_worker(&replay, &store)?
        .finish_after(SEGMENTS as usize)
        .await?;
    assert_eq!(store.count(None).await?, expected.len() as u64);
    assert_eq!(stored_ids(&store).await?, expected);
    Ok(())
}

/// Wait until a rebalance gave `worker` at least one partition.
async fn wait_for_partitions(worker: &Worker, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while worker.queue.assigned_partitions().is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{name} got no partition within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Fault 4: members join and leave the group while it works (one leaves gracefully, one is
/// killed); rebalances move partitions around, and in the end every segment is indexed with
/// no missing, duplicated or phantom points and nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_churn_loses_nothing() -> anyhow::Result<()> {
    let broker = LocalBroker::start()?;
    let settings = broker.fresh_settings(4);
    ensure_topics(&settings).await?;
    // Six streams, so the segments spread over the partitions.
    let tasks: Vec<SegmentTask> = (0..24u64)
        .map(|seq| {
            let mut task = task(seq, &["a dog runs", "a cat sleeps"]);
            task.stream_id = format!("cam-{}", seq % 6);
            task
        })
        .collect();
    let models = models();
    let mut expected = BTreeSet::new();
    for task in &tasks {
        for point in build_points(task, &NoFrames, &models, 0)? {
            expected.insert(point.id.to_string());
        }
    }
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);

    store.delay_ms.store(200, Ordering::SeqCst);
    let mut steady = start_worker(&settings, &store)?;
    let producer = KafkaQueue::producer(settings.clone())?;
    for task in tasks {
        producer.publish(task).await?;
    }
    // A member joins and takes partitions over, then leaves gracefully; another joins and
    // is killed once it holds partitions.
    let joiner = start_worker(&settings, &store)?;
    wait_for_partitions(&joiner, "the second member").await?;
    let crasher = start_worker(&settings, &store)?;
    wait_for_partitions(&crasher, "the third member").await?;
    let _ = joiner.shutdown.send(true);
    joiner.handle.await??;
    drop(joiner.queue);
    crasher.kill().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        while let Ok(event) = steady.events.try_recv() {
            if let WorkerEvent::Failed { error, .. } = event {
                anyhow::bail!("segment failed: {error}");
            }
        }
        if stored_ids(&store).await? == expected {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} of {} points after 90 s",
            store.count(None).await?,
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.count(None).await?, expected.len() as u64);
    let _ = steady.shutdown.send(true);
    steady.handle.await??;
    Ok(())
}

/// A GPU captioner whose device breaks (a sticky CUDA error) on the batch holding segment 3;
/// it adds no moments of its own, so the points are the subtitle ones either way.
struct BreaksOnSegment3;

impl vidx_core::ports::Captioner for BreaksOnSegment3 {
    fn name(&self) -> &str {
        "breaks-on-3"
    }
    fn revision(&self) -> &str {
        "breaks-on-3-1"
    }
    fn needs_frames(&self) -> bool {
        false
    }
    fn caption(
        &self,
        segment: vidx_core::ports::SegmentInput<'_>,
    ) -> Result<Vec<vidx_core::Moment>, vidx_core::ModelError> {
        if segment.task.segment_seq == 3 {
            return Err(vidx_core::ModelError::DeviceFailed {
                model: "breaks-on-3".into(),
                reason: "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")".into(),
            });
        }
        Ok(Vec::new())
    }
}

/// docs/reliability.md fault 21 on a GPU, through a real broker: a sticky device error stops the
/// worker with an error, the batch in flight (segments 2 and 3) is not committed, and the
/// next worker of the group indexes it: every segment once, none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_device_error_commits_nothing_of_its_batch_and_the_next_worker_indexes_it()
-> anyhow::Result<()> {
    let broker = LocalBroker::start()?;
    let settings = broker.fresh_settings(1);
    publish_all(&settings).await?;
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let expected = expected_ids()?;

    let breaking = Arc::new(Models {
        captioners: vec![Arc::new(SubtitleCaptioner), Arc::new(BreaksOnSegment3)],
        ..(*models()).clone()
    });
    let first = start_worker_with(&settings, &store, breaking, 2)?;
    let error = match tokio::time::timeout(Duration::from_secs(60), first.handle).await?? {
        Err(error) => error,
        Ok(()) => anyhow::bail!("the worker went on after a sticky device error"),
    };
    assert!(vidx_pipeline::device_failed(&error), "{error}");
    // Batches of up to two (usually [0, 1] then [2, 3]): what came before the broken batch is
    // committed, segment 3 is not, and nothing of the broken batch was written.
    let committed_first = committed(&first.queue).await?.unwrap_or(0);
    assert!(committed_first <= 3, "committed through {committed_first}");
    assert_eq!(
        store.count(None).await?,
        2 * committed_first as u64,
        "only the committed segments' points (two each) are in the store"
    );
    drop(first.queue);

    let second = start_worker(&settings, &store)?;
    assert_eq!(committed(&second.queue).await?, Some(committed_first));
    let queue = second
        .finish_after(SEGMENTS as usize - committed_first as usize)
        .await?;
    assert_eq!(committed(&queue).await?, Some(SEGMENTS as i64));
    assert_eq!(
        stored_ids(&store).await?,
        expected,
        "no missing or phantom ids"
    );
    Ok(())
}

/// docs/reliability.md fault 20: a segment that takes down every worker that gets it (each
/// owner goes away without settling it, as a crash or an abort does) is delivered
/// `max_attempts` times, the count surviving each owner (it travels in the group's offset
/// commits), and then dead-lettered without being run; the segment after it is indexed. On
/// librdkafka's mock cluster, which keeps commit metadata and evicts members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_crashes_every_owner_is_dead_lettered_after_max_attempts_deliveries()
-> anyhow::Result<()> {
    let broker =
        vidx_testkit::MockBroker::start(&[("crashes", 1), ("crashes.dlq", 1), ("crashes.jobs", 1)])
            .map_err(anyhow::Error::msg)?;
    let settings = broker.settings("crashes", 1);
    ensure_topics(&settings).await?;
    let producer = KafkaQueue::producer(settings.clone())?;
    producer
        .publish(task(0, &["takes the worker down"]))
        .await?;
    producer.publish(task(1, &["a cat sleeps"])).await?;
    for delivery in 1..=3 {
        let owner = KafkaQueue::worker(settings.clone())?;
        let taken = tokio::time::timeout(Duration::from_secs(60), owner.receive())
            .await??
            .ok_or_else(|| anyhow::anyhow!("queue closed"))?;
        assert_eq!(
            (taken.task.segment_seq, taken.task.attempt),
            (0, delivery),
            "delivery {delivery}"
        );
        // The owner dies with the segment in hand: nothing acked, nothing dead-lettered.
        drop(owner);
    }
    let directory = tempfile::tempdir()?;
    let store = Arc::new(FlakyStore::open(directory.path(), 0)?);
    let mut worker = start_worker(&settings, &store)?;
    let mut events = Vec::new();
    while events.len() < 2 {
        events.push(
            tokio::time::timeout(Duration::from_secs(60), worker.events.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("worker stopped"))?,
        );
    }
    assert!(
        matches!(&events[0], WorkerEvent::Failed { segment_seq: 0, attempts: 3, error, .. } if error.contains("3 deliveries")),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], WorkerEvent::Indexed { segment_seq: 1, .. }),
        "{events:?}"
    );
    assert_eq!(
        store.upsert_calls.load(Ordering::SeqCst),
        1,
        "the crashing segment was not run again"
    );
    let queue = worker.finish_after(0).await?;
    assert_eq!(
        committed(&queue).await?,
        Some(2),
        "the partition moved past both"
    );
    Ok(())
}

/// The environment a [`worker_process`] child reads: the mock cluster's address and the
/// store directory.
const CHILD_BROKERS: &str = "VIDX_TEST_CHILD_BROKERS";
const CHILD_STORE: &str = "VIDX_TEST_CHILD_STORE";

/// docs/reliability.md fault 20 with real processes: a segment whose model aborts the worker
/// process (SIGABRT, no unwinding, nothing settled) is delivered to a fresh worker process
/// after each abort; the delivery count survives every abort (it travels in the group's
/// offset commits, written before the segment runs), so after `max_attempts` aborted
/// processes the next one dead-letters the segment without running it, indexes the segment
/// after it and commits past both. The exact ids in the store: the second segment's, nothing
/// of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_aborts_its_worker_process_is_dead_lettered_after_max_attempts_processes()
-> anyhow::Result<()> {
    use std::os::unix::process::ExitStatusExt;

    let broker =
        vidx_testkit::MockBroker::start(&[("aborts", 1), ("aborts.dlq", 1), ("aborts.jobs", 1)])
            .map_err(anyhow::Error::msg)?;
    let settings = broker.settings("aborts", 1);
    ensure_topics(&settings).await?;
    let poison = task(0, &["ABORT the worker process"]);
    let healthy = task(1, &["a cat sleeps"]);
    let producer = KafkaQueue::producer(settings.clone())?;
    producer.publish(poison).await?;
    producer.publish(healthy.clone()).await?;
    let progress = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || vidx_bus::GroupProgress::connect(settings)).await??
    };
    let directory = tempfile::tempdir()?;
    let test_binary = std::env::current_exe()?;
    // Three processes abort (max_attempts = 3); the fourth settles both segments and exits.
    for process in 1..=4 {
        let mut child = std::process::Command::new(&test_binary)
            .args(["--exact", "worker_process", "--ignored", "--nocapture"])
            .env(CHILD_BROKERS, broker.bootstrap())
            .env(CHILD_STORE, directory.path())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("worker process {process} ran past 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if process <= 3 {
            assert_eq!(
                status.signal(),
                Some(6),
                "worker process {process} was to abort on the segment: {status}"
            );
        } else {
            assert!(status.success(), "worker process {process}: {status}");
        }
    }
    let dead = tokio::time::timeout(Duration::from_secs(30), progress.next_dead_letter())
        .await
        .map_err(|_| anyhow::anyhow!("no dead letter"))??;
    assert_eq!((dead.source.partition, dead.source.offset), (0, 0));
    assert_eq!(dead.attempts, 3, "{dead:?}");
    assert!(dead.error.contains("3 deliveries"), "{}", dead.error);
    let committed = tokio::task::spawn_blocking(move || progress.committed()).await??;
    assert_eq!(committed.get(&0), Some(&2), "the partition moved past both");

    let store = FlakyStore::open(directory.path(), 0)?;
    let expected: BTreeSet<String> = build_points(&healthy, &NoFrames, &models(), 0)?
        .into_iter()
        .map(|point| point.id.to_string())
        .collect();
    assert_eq!(
        stored_ids(&store).await?,
        expected,
        "exactly the healthy segment's ids"
    );
    Ok(())
}

/// One worker process of
/// [`a_segment_that_aborts_its_worker_process_is_dead_lettered_after_max_attempts_processes`],
/// which starts it (with the cluster and store in its environment); alone it does nothing.
/// It works until both segments are settled, then stops gracefully; the model aborts the
/// whole process on the poison segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of a_segment_that_aborts_its_worker_process_…, started by it"]
async fn worker_process() -> anyhow::Result<()> {
    let (Ok(brokers), Ok(store_dir)) = (std::env::var(CHILD_BROKERS), std::env::var(CHILD_STORE))
    else {
        eprintln!("worker_process runs as a child of a test, which sets {CHILD_BROKERS}");
        return Ok(());
    };
    let settings = vidx_testkit::MockBroker::settings_at(&brokers, "aborts", 1);
    let store = Arc::new(FlakyStore::open(std::path::Path::new(&store_dir), 0)?);
    let mut worker = start_worker(&settings, &store)?;
    let mut settled = BTreeSet::new();
    while settled.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(90), worker.events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("settled only {settled:?}"))?
            .ok_or_else(|| anyhow::anyhow!("worker stopped"))?;
        match event {
            WorkerEvent::Indexed { segment_seq, .. } | WorkerEvent::Failed { segment_seq, .. } => {
                settled.insert(segment_seq)
            }
        };
    }
    let _ = worker.shutdown.send(true);
    worker.handle.await??;
    Ok(())
}
