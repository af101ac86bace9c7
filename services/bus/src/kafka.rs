//! The segment queue on Kafka (rdkafka): an idempotent producer keyed by tenant/stream, and a
//! consumer-group member with at-least-once delivery.
//!
//! - Auto-commit and auto offset store are off. An offset is committed only after the worker
//!   acked the message (its points are durable in the store) or dead-lettered it, and only as
//!   the contiguous finished prefix of its partition ([`OffsetTracker`]): a message that is
//!   still in flight holds the commit of everything after it.
//! - A rebalance that revokes a partition forgets its bookkeeping: a late ack or nack for it
//!   commits nothing and dead-letters nothing; the partition's new owner replays it, and the
//!   deterministic point ids make the replay idempotent.
//! - Malformed messages and unknown schema versions never reach the worker: they go to the
//!   dead-letter topic with headers (source topic, partition, offset, error, attempts) and
//!   the partition moves on.
//! - Backpressure: a worker polls only when it is free, so while every worker is busy the
//!   queue pauses its partitions (librdkafka stops fetching and drops what it prefetched) and
//!   a keep-alive task goes on polling, which keeps the member in the group however long a
//!   segment takes (`max.poll.interval.ms`). The first worker to wait again resumes them;
//!   fetching restarts right after the last message handed out, so nothing is skipped.
//! - Deliveries are counted across processes: before a message reaches a worker, its
//!   delivery count is committed with the partition's offset (commit metadata), and the
//!   partition's next owner restores the counts from there. A segment that crashed or hung
//!   `max_attempts` workers is given up on instead of taking the next one down.
//! - Commits of a partition are sent one at a time and never go backwards; a failed commit is
//!   retried, counted (`commit_failures`), and superseded by the next one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use vidx_core::offsets::decode_deliveries;
use vidx_core::ports::{
    BoxFuture, Delivery, DeliveryTag, IngestProgress, QueueStatus, SegmentQueue,
};
use vidx_core::{OffsetTracker, QueueError, SEGMENT_TASK_SCHEMA_VERSION, SegmentTask};

/// Header names on dead-lettered messages.
pub mod dead_letter_headers {
    pub const TOPIC: &str = "vidx-source-topic";
    pub const PARTITION: &str = "vidx-source-partition";
    pub const OFFSET: &str = "vidx-source-offset";
    pub const ERROR: &str = "vidx-error";
    pub const ATTEMPTS: &str = "vidx-attempts";
}

/// How to reach the brokers and which topics and group to use.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// The compacted topic of the ingest nodes' jobs ([`JobTopic`]).
    pub jobs_topic: String,
    pub group_id: String,
    pub client_id: String,
    /// Partitions of the topics when this client creates them.
    pub partitions: i32,
    pub replication: i32,
    /// A group member that sends no heartbeat for this long is dropped from the group.
    pub session_timeout: Duration,
    /// A member that does not poll for this long leaves the group (`max.poll.interval.ms`).
    /// The queue's keep-alive polls while the workers are busy, so a slow segment does not
    /// trip it; it still catches a stuck process.
    pub max_poll_interval: Duration,
    /// How long a produce may take (retries included) before it fails.
    pub delivery_timeout: Duration,
    /// Largest message the producer sends (the brokers' `message.max.bytes`).
    pub max_message_bytes: u64,
    /// Static group membership (`group.instance.id`): a worker restarted under the same id
    /// within the session timeout gets its partitions back without a rebalance. Must be
    /// unique per worker process (a StatefulSet pod name); `None`: dynamic membership.
    pub group_instance_id: Option<String>,
    /// `partition.assignment.strategy`: `cooperative-sticky` moves only the partitions that
    /// must move when a worker joins or leaves (the others keep their batches in flight).
    pub assignment_strategy: String,
    /// More librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`, …), applied last.
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        config
    }

    fn apply_properties(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }
}

fn unavailable(what: &str, error: KafkaError) -> QueueError {
    QueueError::Unavailable(format!("kafka {what}: {error}"))
}

/// Create the segment, dead-letter and jobs topics if they do not exist yet (the jobs topic
/// compacted, with one partition). Topics that exist are left alone, and when all do nothing
/// is asked of the brokers' admin API (a cluster whose topics are provisioned by its
/// operators may deny it).
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), QueueError> {
    let mut config = settings.client_config();
    settings.apply_properties(&mut config);
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        config
            .create()
            .map_err(|error| unavailable("admin client", error))?,
    );
    let names = [
        settings.topic.clone(),
        settings.dead_letter_topic.clone(),
        settings.jobs_topic.clone(),
    ];
    let existing = {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(30))
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .filter(|topic| topic.error().is_none() && !topic.partitions().is_empty())
                        .map(|topic| topic.name().to_string())
                        .collect::<Vec<_>>()
                })
        })
        .await
        .map_err(|error| QueueError::Unavailable(format!("kafka metadata task: {error}")))?
        .map_err(|error| unavailable("metadata", error))?
    };
    if names.iter().all(|name| existing.contains(name)) {
        return Ok(());
    }
    let topics = names
        .iter()
        .filter(|name| !existing.contains(name))
        .map(|name| {
            if *name == settings.jobs_topic {
                // The latest record per job is all that is ever read.
                NewTopic::new(name, 1, TopicReplication::Fixed(settings.replication))
                    .set("cleanup.policy", "compact")
            } else {
                NewTopic::new(
                    name,
                    settings.partitions,
                    TopicReplication::Fixed(settings.replication),
                )
            }
        });
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let topics: Vec<NewTopic<'_>> = topics.collect();
    let results = admin
        .create_topics(topics.iter(), &options)
        .await
        .map_err(|error| unavailable("create topics", error))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(QueueError::Unavailable(format!(
                    "kafka create topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// How long every worker must have been busy before the partitions are paused, and how
/// often the consumer is polled while they are, or while a worker waits on an empty queue.
const KEEP_ALIVE_TICK: Duration = Duration::from_millis(500);

/// Tries of one offset commit before it is counted as failed.
const COMMIT_TRIES: u32 = 3;

/// A message taken off the consumer and not yet handed to a worker.
struct Raw {
    tag: DeliveryTag,
    received: Received,
}

/// Messages the keep-alive poll took while the workers were busy (from a partition assigned
/// during the pause), handed out before anything newer.
type Stash = Mutex<VecDeque<Raw>>;

/// Whether a worker waits for a message, and the pause state that follows from it.
#[derive(Debug)]
struct Flow {
    /// Workers inside `receive`.
    waiting: usize,
    /// Since when no worker has been waiting.
    idle_since: Instant,
    paused: bool,
}

/// Tracks rebalances for the offset bookkeeping.
struct GroupContext {
    topic: String,
    tracker: Arc<Mutex<OffsetTracker>>,
    stash: Stash,
    /// Rebalances that took partitions away from this member.
    revocations: std::sync::atomic::AtomicU64,
}

impl GroupContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition())
            .collect()
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = self.partitions(list);
            tracing::info!(?partitions, "partitions revoked");
            self.revocations.fetch_add(1, Ordering::SeqCst);
            // Their next owner replays them from the last commit.
            if let Ok(mut stash) = self.stash.lock() {
                stash.retain(|raw| !partitions.contains(&raw.tag.partition));
            }
            if let Ok(mut tracker) = self.tracker.lock() {
                tracker.revoke(partitions);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = self.partitions(list);
            tracing::info!(?partitions, "partitions assigned");
            if let Ok(mut tracker) = self.tracker.lock() {
                tracker.assign(partitions);
            }
        }
    }
}

/// What a received message needs for a later dead-letter.
#[derive(Clone)]
struct Received {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// The W3C trace-context headers of the message (`traceparent`, `tracestate`).
    trace_context: std::collections::BTreeMap<String, String>,
}

/// Message headers that carry a segment's trace context from ingest to the worker.
pub const TRACE_CONTEXT_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The consumer side shared by `receive` and the keep-alive task.
struct Consuming {
    /// Its context holds the stash and the revocation count, which rebalances update.
    consumer: StreamConsumer<GroupContext>,
    flow: Mutex<Flow>,
    /// Held by whoever polls the consumer, so the keep-alive and the workers never poll at
    /// once and the stash is always drained before the consumer is polled again.
    polling: tokio::sync::Mutex<()>,
    /// A worker started waiting: the keep-alive lets go of the consumer.
    worker_waiting: tokio::sync::Notify,
}

impl Consuming {
    fn lock_flow(&self) -> Result<std::sync::MutexGuard<'_, Flow>, QueueError> {
        self.flow
            .lock()
            .map_err(|_| QueueError::Unavailable("flow lock poisoned".into()))
    }

    fn lock_stash(&self) -> Result<std::sync::MutexGuard<'_, VecDeque<Raw>>, QueueError> {
        self.consumer
            .context()
            .stash
            .lock()
            .map_err(|_| QueueError::Unavailable("stash lock poisoned".into()))
    }

    /// Pause or resume every partition this member owns now.
    fn set_paused(&self, flow: &mut Flow, pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::warn!(error = %error, "kafka assignment unavailable");
                return;
            }
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                if flow.paused != pause {
                    tracing::debug!(
                        paused = pause,
                        partitions = assignment.count(),
                        "segment fetching {}",
                        if pause {
                            "paused: every worker is busy"
                        } else {
                            "resumed"
                        }
                    );
                }
                flow.paused = pause;
            }
            Err(error) => tracing::warn!(error = %error, pause, "kafka pause/resume failed"),
        }
    }

    /// A worker starts waiting: fetching resumes if it was paused. The wait ends when the
    /// guard drops (also when the waiting future is cancelled).
    fn enter(&self) -> Result<Waiting<'_>, QueueError> {
        let mut flow = self.lock_flow()?;
        flow.waiting += 1;
        if flow.paused {
            self.set_paused(&mut flow, false);
        }
        self.worker_waiting.notify_one();
        Ok(Waiting(self))
    }

    /// The next message: the stash first, then the consumer. Waits for one.
    /// It is registered as in flight in `tracker` before the consumer can be polled again,
    /// so a partition's offsets start in the order they were fetched and a later message that
    /// finishes first can never commit past an earlier one.
    async fn next(&self, tracker: &Mutex<OffsetTracker>) -> Result<Raw, QueueError> {
        let _polling = self.polling.lock().await;
        let start = |raw: Raw| -> Result<Raw, QueueError> {
            tracker
                .lock()
                .map_err(|_| QueueError::Unavailable("offset tracker lock poisoned".into()))?
                .start(raw.tag.partition, raw.tag.offset);
            Ok(raw)
        };
        let stashed = self.lock_stash()?.pop_front();
        if let Some(raw) = stashed {
            return start(raw);
        }
        loop {
            // A fresh poll every tick: a future parked on an empty queue polls nothing, and
            // librdkafka would count an idle worker as stuck (`max.poll.interval.ms`).
            match tokio::time::timeout(KEEP_ALIVE_TICK, self.consumer.recv()).await {
                Err(_idle) => {}
                Ok(Ok(message)) => return start(Raw::from(&message)),
                // Broker trouble (down, restarting, a transport error) surfaces here; the
                // client reconnects by itself, so the worker keeps waiting instead of dying.
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "kafka receive failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One keep-alive step: when every worker has been busy for a tick, pause the partitions
    /// and poll for a tick or until a worker waits again. Paused partitions yield nothing;
    /// the poll still counts for `max.poll.interval.ms` and serves rebalances as they come. A
    /// message from a partition assigned since the pause is stashed and its partition paused.
    async fn keep_alive(&self) -> Result<(), QueueError> {
        let _polling = self.polling.lock().await;
        {
            let mut flow = self.lock_flow()?;
            if flow.waiting > 0 || flow.idle_since.elapsed() < KEEP_ALIVE_TICK {
                return Ok(());
            }
            // Every tick: a rebalance may have assigned partitions that are not paused.
            self.set_paused(&mut flow, true);
        }
        let polled = tokio::select! {
            biased;
            _ = self.worker_waiting.notified() => None,
            polled = tokio::time::timeout(KEEP_ALIVE_TICK, self.consumer.recv()) => polled.ok(),
        };
        if let Some(Ok(message)) = polled {
            let raw = Raw::from(&message);
            drop(message);
            self.lock_stash()?.push_back(raw);
            let mut flow = self.lock_flow()?;
            self.set_paused(&mut flow, true);
        }
        Ok(())
    }
}

/// One worker inside `receive`.
struct Waiting<'a>(&'a Consuming);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut flow) = self.0.flow.lock() {
            flow.waiting = flow.waiting.saturating_sub(1);
            if flow.waiting == 0 {
                flow.idle_since = Instant::now();
            }
        }
    }
}

impl<M: Message> From<&M> for Raw {
    fn from(message: &M) -> Self {
        Self {
            tag: DeliveryTag {
                partition: message.partition(),
                offset: message.offset(),
            },
            received: Received {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                trace_context: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .filter(|header| TRACE_CONTEXT_HEADERS.contains(&header.key))
                            .filter_map(|header| {
                                let value = std::str::from_utf8(header.value?).ok()?;
                                Some((header.key.to_string(), value.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            },
        }
    }
}

/// Poll for the queue while its workers are busy, until the queue is dropped or closed.
async fn run_keep_alive(consuming: Weak<Consuming>, closed: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(KEEP_ALIVE_TICK / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(consuming) = consuming.upgrade() else {
            return;
        };
        if let Err(error) = consuming.keep_alive().await {
            tracing::warn!(error = %error, "kafka keep-alive failed");
        }
    }
}

/// The segment queue on Kafka. Publishing needs only the producer; `receive`/`ack`/`nack`
/// need the consumer ([`KafkaQueue::worker`]).
pub struct KafkaQueue {
    settings: KafkaSettings,
    producer: FutureProducer,
    consuming: Option<Arc<Consuming>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    received: Mutex<HashMap<DeliveryTag, Received>>,
    closed: Arc<AtomicBool>,
    /// Held while a commit is sent: commits go out one at a time, in order.
    committing: tokio::sync::Mutex<()>,
    commit_failures: AtomicU64,
    /// Malformed messages whose dead-lettering was interrupted (the receive that found them
    /// was cancelled): settled by the next receive, so that no offset stays in flight.
    orphans: Mutex<Vec<(DeliveryTag, Received, String)>>,
}

impl std::fmt::Debug for KafkaQueue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaQueue")
            .field("brokers", &self.settings.brokers)
            .field("topic", &self.settings.topic)
            .field("group_id", &self.settings.group_id)
            .finish_non_exhaustive()
    }
}

impl KafkaQueue {
    /// A publisher (ingest): the idempotent producer only.
    pub fn producer(settings: KafkaSettings) -> Result<Self, QueueError> {
        Self::build(settings, false)
    }

    /// A worker: a member of the consumer group, subscribed to the segment topic, plus the
    /// producer it dead-letters with. Call it inside a tokio runtime: it starts the
    /// keep-alive task.
    pub fn worker(settings: KafkaSettings) -> Result<Self, QueueError> {
        Self::build(settings, true)
    }

    fn build(settings: KafkaSettings, consume: bool) -> Result<Self, QueueError> {
        let mut producer_config = settings.client_config();
        producer_config
            // Retries never duplicate or reorder a partition's messages.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.max.bytes", settings.max_message_bytes.to_string())
            .set(
                "message.timeout.ms",
                settings.delivery_timeout.as_millis().to_string(),
            );
        settings.apply_properties(&mut producer_config);
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|error| unavailable("producer", error))?;
        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let consuming = if consume {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                QueueError::Unavailable("a kafka worker queue needs a tokio runtime".into())
            })?;
            let mut consumer_config = settings.client_config();
            consumer_config
                .set("group.id", &settings.group_id)
                // At-least-once: nothing is committed or stored behind the worker's back.
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set(
                    "session.timeout.ms",
                    settings.session_timeout.as_millis().to_string(),
                )
                .set(
                    "max.poll.interval.ms",
                    settings.max_poll_interval.as_millis().to_string(),
                )
                // Prefetch a few messages, not librdkafka's 64 MiB: a pause drops what was
                // prefetched and the resume fetches it again.
                .set(
                    "queued.max.messages.kbytes",
                    (settings.max_message_bytes.saturating_mul(4) / 1024)
                        .max(4096)
                        .to_string(),
                )
                .set("enable.partition.eof", "false")
                .set(
                    "partition.assignment.strategy",
                    &settings.assignment_strategy,
                );
            if let Some(instance) = &settings.group_instance_id {
                consumer_config.set("group.instance.id", instance);
            }
            settings.apply_properties(&mut consumer_config);
            let context = GroupContext {
                topic: settings.topic.clone(),
                tracker: tracker.clone(),
                stash: Stash::default(),
                revocations: std::sync::atomic::AtomicU64::new(0),
            };
            let consumer: StreamConsumer<GroupContext> = consumer_config
                .create_with_context(context)
                .map_err(|error| unavailable("consumer", error))?;
            consumer
                .subscribe(&[&settings.topic])
                .map_err(|error| unavailable("subscribe", error))?;
            let consuming = Arc::new(Consuming {
                consumer,
                flow: Mutex::new(Flow {
                    waiting: 0,
                    idle_since: Instant::now(),
                    paused: false,
                }),
                polling: tokio::sync::Mutex::new(()),
                worker_waiting: tokio::sync::Notify::new(),
            });
            runtime.spawn(run_keep_alive(Arc::downgrade(&consuming), closed.clone()));
            Some(consuming)
        } else {
            None
        };
        Ok(Self {
            settings,
            producer,
            consuming,
            tracker,
            received: Mutex::new(HashMap::new()),
            closed,
            committing: tokio::sync::Mutex::new(()),
            commit_failures: AtomicU64::new(0),
            orphans: Mutex::new(Vec::new()),
        })
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Partitions this member owns now.
    pub fn assigned_partitions(&self) -> Vec<i32> {
        self.consuming
            .as_ref()
            .and_then(|consuming| consuming.consumer.assignment().ok())
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|element| element.partition())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The group's committed offset of `partition` on the broker (the next offset to read),
    /// `None` when nothing was committed. Blocks for a broker round trip.
    pub fn committed_offset(&self, partition: i32) -> Result<Option<i64>, QueueError> {
        committed_at(&self.consuming()?.consumer, &self.settings.topic, partition)
            .map(|(offset, _)| offset)
            .map_err(|error| unavailable("committed offsets", error))
    }

    /// Messages received and not yet acked or nacked.
    pub fn in_flight(&self) -> usize {
        self.tracker.lock().map_or(0, |tracker| tracker.in_flight())
    }

    /// Messages waiting in each partition this member owns: the high watermark minus the
    /// group's committed offset (what lag-based autoscalers read). Blocking: broker round
    /// trips.
    pub fn lag(&self) -> Result<Vec<(i32, i64)>, QueueError> {
        let consumer = &self.consuming()?.consumer;
        let assignment = consumer
            .assignment()
            .map_err(|error| unavailable("assignment", error))?;
        if assignment.count() == 0 {
            return Ok(Vec::new());
        }
        let committed = consumer
            .committed_offsets(assignment, Duration::from_secs(5))
            .map_err(|error| unavailable("committed offsets", error))?;
        let mut lags = Vec::new();
        for element in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(5))
                .map_err(|error| unavailable("watermarks", error))?;
            let next = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            lags.push((element.partition(), (high - next).max(0)));
        }
        Ok(lags)
    }

    /// How many rebalances took partitions away from this member.
    pub fn revocations(&self) -> u64 {
        self.consuming.as_ref().map_or(0, |consuming| {
            consuming
                .consumer
                .context()
                .revocations
                .load(Ordering::SeqCst)
        })
    }

    /// Whether fetching is paused because every worker is busy.
    pub fn is_paused(&self) -> bool {
        self.consuming
            .as_ref()
            .and_then(|consuming| consuming.flow.lock().ok().map(|flow| flow.paused))
            .unwrap_or(false)
    }

    fn consuming(&self) -> Result<&Arc<Consuming>, QueueError> {
        self.consuming
            .as_ref()
            .ok_or_else(|| QueueError::Unavailable("this kafka queue has no consumer".into()))
    }

    fn lock_tracker(&self) -> Result<std::sync::MutexGuard<'_, OffsetTracker>, QueueError> {
        self.tracker
            .lock()
            .map_err(|_| QueueError::Unavailable("offset tracker lock poisoned".into()))
    }

    fn lock_received(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<DeliveryTag, Received>>, QueueError> {
        self.received
            .lock()
            .map_err(|_| QueueError::Unavailable("received lock poisoned".into()))
    }

    /// Commit where `partition` stands now ([`OffsetTracker::checkpoint`]: the next offset
    /// to read, with the delivery counts as metadata), synchronously so that it is on the
    /// broker when the call returns. Commits go out one at a time, each reading the state
    /// when its turn comes, so they never go backwards. A failed commit is retried a few
    /// times, then counted and left to the next one (which carries the same state or a later
    /// one); a partition revoked meanwhile is not committed (its new owner replays it).
    async fn commit(&self, partition: i32) -> Result<(), QueueError> {
        let consuming = self.consuming()?.clone();
        let _turn = self.committing.lock().await;
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=COMMIT_TRIES {
            let Some((next, metadata)) = self.lock_tracker()?.checkpoint(partition) else {
                return Ok(());
            };
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&self.settings.topic, partition, Offset::Offset(next))
                .map_err(|error| unavailable("commit", error))?;
            if let Some(mut element) = list.find_partition(&self.settings.topic, partition) {
                element.set_metadata(metadata);
            }
            let consuming = consuming.clone();
            let result = tokio::task::spawn_blocking(move || {
                consuming.consumer.commit(&list, CommitMode::Sync)
            })
            .await
            .map_err(|error| QueueError::Unavailable(format!("kafka commit task: {error}")))?;
            match result {
                Ok(()) => return Ok(()),
                Err(error) if attempt < COMMIT_TRIES => {
                    tracing::warn!(partition, offset = next, attempt, error = %error, ?backoff, "offset commit failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(error) => {
                    self.commit_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(partition, offset = next, error = %error, "offset commit failed; the next commit of the partition carries it");
                }
            }
        }
        Ok(())
    }

    /// Count a delivery of `tag` and commit the count before the message is worked on; the
    /// count, over every owner the partition had. The first delivery of a partition since
    /// its assignment restores the counts of its earlier owners from the last commit.
    async fn count_delivery(&self, tag: DeliveryTag) -> Result<u32, QueueError> {
        if self.lock_tracker()?.needs_restore(tag.partition) {
            let consuming = self.consuming()?.clone();
            let topic = self.settings.topic.clone();
            let restored = tokio::task::spawn_blocking(move || {
                committed_at(&consuming.consumer, &topic, tag.partition)
                    .map(|(offset, metadata)| (offset, decode_deliveries(&metadata)))
            })
            .await
            .map_err(|error| QueueError::Unavailable(format!("kafka committed task: {error}")))?;
            // A broker that cannot answer now costs the counts of earlier owners (they start
            // again from this one), not the worker.
            let (committed, deliveries) = match restored {
                Ok(restored) => restored,
                Err(error) => {
                    tracing::warn!(partition = tag.partition, error = %error, "delivery counts not restored; counting from this owner");
                    Default::default()
                }
            };
            self.lock_tracker()?
                .restore(tag.partition, committed, deliveries);
        }
        let count = self.lock_tracker()?.deliver(tag.partition, tag.offset);
        self.commit(tag.partition).await?;
        Ok(count)
    }

    /// Publish a message to the dead-letter topic with where it came from and why.
    async fn dead_letter(
        &self,
        tag: DeliveryTag,
        received: &Received,
        reason: &str,
        attempts: u32,
    ) -> Result<(), QueueError> {
        let partition = tag.partition.to_string();
        let offset = tag.offset.to_string();
        let attempts = attempts.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: dead_letter_headers::TOPIC,
                value: Some(self.settings.topic.as_str()),
            })
            .insert(Header {
                key: dead_letter_headers::PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: dead_letter_headers::OFFSET,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: dead_letter_headers::ERROR,
                value: Some(reason),
            })
            .insert(Header {
                key: dead_letter_headers::ATTEMPTS,
                value: Some(attempts.as_str()),
            });
        let mut record = FutureRecord::to(&self.settings.dead_letter_topic)
            .payload(&received.payload)
            .headers(headers);
        if let Some(key) = &received.key {
            record = record.key(key);
        }
        self.producer
            .send(record, self.settings.delivery_timeout)
            .await
            .map_err(|(error, _)| unavailable("dead-letter publish", error))?;
        tracing::warn!(
            partition = tag.partition,
            offset = tag.offset,
            attempts,
            error = reason,
            "segment dead-lettered"
        );
        Ok(())
    }

    /// Dead-letter, then let the partition move past the message.
    async fn settle_failed(
        &self,
        tag: DeliveryTag,
        received: Received,
        reason: &str,
        attempts: u32,
    ) -> Result<(), QueueError> {
        if !self.lock_tracker()?.owns(tag.partition) {
            tracing::info!(
                partition = tag.partition,
                offset = tag.offset,
                "partition revoked, not dead-lettering"
            );
            return Ok(());
        }
        self.dead_letter(tag, &received, reason, attempts).await?;
        let next = self.lock_tracker()?.finish(tag.partition, tag.offset);
        if next.is_some() {
            self.commit(tag.partition).await?;
        }
        Ok(())
    }

    /// Dead-letter malformed messages found by receives that were cancelled meanwhile.
    async fn settle_orphans(&self) -> Result<(), QueueError> {
        loop {
            let orphan = self
                .orphans
                .lock()
                .map_err(|_| QueueError::Unavailable("orphans lock poisoned".into()))?
                .pop();
            let Some((tag, received, reason)) = orphan else {
                return Ok(());
            };
            self.settle_malformed(tag, received, reason).await?;
        }
    }

    /// Dead-letter a malformed message. If the caller is cancelled before this finishes, the
    /// message is kept for the next receive instead of staying in flight for ever.
    async fn settle_malformed(
        &self,
        tag: DeliveryTag,
        received: Received,
        reason: String,
    ) -> Result<(), QueueError> {
        struct Pending<'a> {
            queue: &'a KafkaQueue,
            orphan: Option<(DeliveryTag, Received, String)>,
        }
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                if let (Some(orphan), Ok(mut orphans)) =
                    (self.orphan.take(), self.queue.orphans.lock())
                {
                    orphans.push(orphan);
                }
            }
        }
        let mut pending = Pending {
            queue: self,
            orphan: Some((tag, received.clone(), reason.clone())),
        };
        let settled = self.settle_failed(tag, received, &reason, 1).await;
        pending.orphan = None;
        settled
    }
}

/// The group's last commit of `partition` on the broker: the next offset to read (`None`
/// when nothing was committed) and the commit's metadata. Blocks for a broker round trip.
fn committed_at(
    consumer: &StreamConsumer<GroupContext>,
    topic: &str,
    partition: i32,
) -> Result<(Option<i64>, String), KafkaError> {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(committed
        .find_partition(topic, partition)
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (offset, element.metadata().to_string())
        })
        .unwrap_or_default())
}

/// `tenant/stream`: one stream's segments stay ordered within a partition.
pub fn message_key(task: &SegmentTask) -> String {
    format!("{}/{}", task.tenant, task.stream_id)
}

impl KafkaQueue {
    /// Publish a task and return where it landed (partition and offset), which is how an
    /// ingest follows the task through the workers' committed offsets.
    pub async fn publish_tagged(&self, task: &SegmentTask) -> Result<DeliveryTag, QueueError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(QueueError::Closed);
        }
        let payload = vidx_proto::encode_segment_task(task);
        let key = message_key(task);
        let mut record = FutureRecord::to(&self.settings.topic)
            .key(&key)
            .payload(&payload);
        let trace_headers: Vec<(&str, &str)> = task
            .trace_context
            .iter()
            .filter(|(name, _)| TRACE_CONTEXT_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        if !trace_headers.is_empty() {
            let headers =
                trace_headers
                    .iter()
                    .fold(OwnedHeaders::new(), |headers, (name, value)| {
                        headers.insert(Header {
                            key: name,
                            value: Some(*value),
                        })
                    });
            record = record.headers(headers);
        }
        let delivery = self
            .producer
            .send(record, self.settings.delivery_timeout)
            .await
            .map_err(|(error, _)| unavailable("publish", error))?;
        Ok(DeliveryTag {
            partition: delivery.partition,
            offset: delivery.offset,
        })
    }
}

impl SegmentQueue for KafkaQueue {
    async fn publish(&self, task: SegmentTask) -> Result<DeliveryTag, QueueError> {
        self.publish_tagged(&task).await
    }

    async fn receive(&self) -> Result<Option<Delivery>, QueueError> {
        let consuming = self.consuming()?;
        self.settle_orphans().await?;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let waiting = consuming.enter()?;
            let next = consuming.next(&self.tracker).await;
            drop(waiting);
            let Raw { tag, received } = next?;
            let decoded = vidx_proto::decode_segment_task(&received.payload).and_then(|mut task| {
                if task.schema_version == SEGMENT_TASK_SCHEMA_VERSION {
                    task.trace_context = received.trace_context.clone();
                    Ok(task)
                } else {
                    Err(QueueError::Malformed(format!(
                        "unsupported SegmentTask schema_version {} (this worker reads {SEGMENT_TASK_SCHEMA_VERSION})",
                        task.schema_version
                    )))
                }
            });
            match decoded {
                Ok(mut task) => {
                    self.lock_received()?.insert(tag, received);
                    task.attempt = self.count_delivery(tag).await?;
                    return Ok(Some(Delivery { tag, task }));
                }
                Err(error) => {
                    self.settle_malformed(tag, received, error.to_string())
                        .await?;
                }
            }
        }
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), QueueError> {
        self.lock_received()?.remove(&tag);
        let next = self.lock_tracker()?.finish(tag.partition, tag.offset);
        match next {
            Some(_) => self.commit(tag.partition).await,
            None => Ok(()),
        }
    }

    async fn nack(
        &self,
        tag: DeliveryTag,
        reason: String,
        attempts: u32,
    ) -> Result<(), QueueError> {
        let Some(received) = self.lock_received()?.remove(&tag) else {
            // Settled already, or the queue forgot it: nothing to dead-letter; the partition's
            // owner replays it if it was never settled.
            tracing::warn!(
                partition = tag.partition,
                offset = tag.offset,
                "nack for a delivery not in flight; ignored"
            );
            return Ok(());
        };
        self.settle_failed(tag, received, &reason, attempts).await
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// The workers' progress as an outsider sees it: the group's committed offsets (read without
/// joining the group) and the dead letters published from now on.
pub struct GroupProgress {
    settings: KafkaSettings,
    offsets: BaseConsumer,
    dead_letters: StreamConsumer,
}

impl std::fmt::Debug for GroupProgress {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GroupProgress")
            .field("group_id", &self.settings.group_id)
            .finish_non_exhaustive()
    }
}

/// A segment the workers gave up on, as read from the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// Where the message was on the segment topic.
    pub source: DeliveryTag,
    pub error: String,
    pub attempts: u32,
}

impl GroupProgress {
    /// Connects to the brokers and positions a reader at the current end of every
    /// dead-letter partition. Blocking (broker round trips): call from a blocking thread.
    pub fn connect(settings: KafkaSettings) -> Result<Self, QueueError> {
        let mut config = settings.client_config();
        // The group's id only to read its commits: this client never subscribes, so it never
        // joins the group or takes partitions from the workers.
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false");
        settings.apply_properties(&mut config);
        let offsets: BaseConsumer = config
            .create()
            .map_err(|error| unavailable("progress consumer", error))?;

        let mut config = settings.client_config();
        config
            .set("group.id", format!("{}-progress", settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        settings.apply_properties(&mut config);
        let dead_letters: StreamConsumer = config
            .create()
            .map_err(|error| unavailable("dead-letter reader", error))?;
        let metadata = dead_letters
            .fetch_metadata(Some(&settings.dead_letter_topic), Duration::from_secs(10))
            .map_err(|error| unavailable("dead-letter metadata", error))?;
        let mut assignment = TopicPartitionList::new();
        for topic in metadata.topics() {
            for partition in topic.partitions() {
                // From the beginning: a restarted ingest node counts the dead letters of the
                // jobs it restores too.
                assignment
                    .add_partition_offset(topic.name(), partition.id(), Offset::Beginning)
                    .map_err(|error| unavailable("dead-letter assignment", error))?;
            }
        }
        dead_letters
            .assign(&assignment)
            .map_err(|error| unavailable("dead-letter assignment", error))?;
        Ok(Self {
            settings,
            offsets,
            dead_letters,
        })
    }

    /// The group's committed offset (the next offset to process) of each partition of the
    /// segment topic that has one. Blocking.
    pub fn committed(&self) -> Result<HashMap<i32, i64>, QueueError> {
        let metadata = self
            .offsets
            .fetch_metadata(Some(&self.settings.topic), Duration::from_secs(10))
            .map_err(|error| unavailable("topic metadata", error))?;
        let mut list = TopicPartitionList::new();
        for topic in metadata.topics() {
            for partition in topic.partitions() {
                list.add_partition(&self.settings.topic, partition.id());
            }
        }
        let committed = self
            .offsets
            .committed_offsets(list, Duration::from_secs(10))
            .map_err(|error| unavailable("committed offsets", error))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((element.partition(), offset)),
                _ => None,
            })
            .collect())
    }

    /// The next dead letter (waits for one). Messages without the vidx headers are skipped.
    pub async fn next_dead_letter(&self) -> Result<DeadLetterRecord, QueueError> {
        loop {
            let message = match self.dead_letters.recv().await {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(error = %error, "dead-letter read failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let info = dead_letter_info(&message);
            let header = |name: &str| info.get(name).map(String::as_str).unwrap_or_default();
            let (Ok(partition), Ok(offset)) = (
                header(dead_letter_headers::PARTITION).parse::<i32>(),
                header(dead_letter_headers::OFFSET).parse::<i64>(),
            ) else {
                continue;
            };
            if header(dead_letter_headers::TOPIC) != self.settings.topic {
                continue;
            }
            return Ok(DeadLetterRecord {
                source: DeliveryTag { partition, offset },
                error: header(dead_letter_headers::ERROR).to_string(),
                attempts: header(dead_letter_headers::ATTEMPTS).parse().unwrap_or(1),
            });
        }
    }
}

impl IngestProgress for GroupProgress {
    fn committed(&self) -> Result<HashMap<i32, i64>, QueueError> {
        GroupProgress::committed(self)
    }

    fn next_dead_letter(&self) -> BoxFuture<'_, Result<(DeliveryTag, String), QueueError>> {
        Box::pin(async move {
            let record = GroupProgress::next_dead_letter(self).await?;
            Ok((record.source, record.error))
        })
    }
}

impl QueueStatus for KafkaQueue {
    fn in_flight(&self) -> usize {
        KafkaQueue::in_flight(self)
    }

    fn assigned_partitions(&self) -> Vec<i32> {
        KafkaQueue::assigned_partitions(self)
    }

    fn is_paused(&self) -> bool {
        KafkaQueue::is_paused(self)
    }

    fn revocations(&self) -> u64 {
        KafkaQueue::revocations(self)
    }

    fn commit_failures(&self) -> u64 {
        self.commit_failures.load(Ordering::Relaxed)
    }

    fn lag(&self) -> Result<Vec<(i32, i64)>, QueueError> {
        KafkaQueue::lag(self)
    }
}

/// Read the dead-letter headers of a message (for tools and tests).
pub fn dead_letter_info<M: Message>(message: &M) -> BTreeMap<String, String> {
    let mut info = BTreeMap::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            if let Some(value) = header.value {
                info.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(value).into_owned(),
                );
            }
        }
    }
    info
}

/// The ingest nodes' jobs on the compacted jobs topic: a record per change of a job, keyed by
/// its id; a restarted node reads the latest record of each.
pub struct JobTopic {
    settings: KafkaSettings,
    producer: FutureProducer,
}

impl std::fmt::Debug for JobTopic {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("JobTopic")
            .field("topic", &self.settings.jobs_topic)
            .finish_non_exhaustive()
    }
}

impl JobTopic {
    pub fn connect(settings: KafkaSettings) -> Result<Self, QueueError> {
        let mut config = settings.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.delivery_timeout.as_millis().to_string(),
            );
        settings.apply_properties(&mut config);
        let producer = config
            .create()
            .map_err(|error| unavailable("jobs producer", error))?;
        Ok(Self { settings, producer })
    }

    /// Record `value` as the job `key`'s latest state; durable on the brokers when it returns.
    pub async fn record(&self, key: &str, value: &[u8]) -> Result<(), QueueError> {
        let record = FutureRecord::to(&self.settings.jobs_topic)
            .key(key)
            .payload(value);
        self.producer
            .send(record, self.settings.delivery_timeout)
            .await
            .map(|_| ())
            .map_err(|(error, _)| unavailable("jobs record", error))
    }

    /// The latest record of every job, in the order they were last written. Blocking (it
    /// reads the topic to its end): call it on a blocking thread.
    pub fn replay(&self) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        let mut config = self.settings.client_config();
        config
            .set(
                "group.id",
                format!("{}-jobs-reader", self.settings.group_id),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        self.settings.apply_properties(&mut config);
        let reader: BaseConsumer = config
            .create()
            .map_err(|error| unavailable("jobs reader", error))?;
        let topic = &self.settings.jobs_topic;
        let metadata = reader
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|error| unavailable("jobs metadata", error))?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for partition in metadata
            .topics()
            .iter()
            .filter(|found| found.name() == topic)
            .flat_map(|found| found.partitions())
        {
            let (low, high) = reader
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .map_err(|error| unavailable("jobs watermarks", error))?;
            if high > low {
                ends.insert(partition.id(), high);
                assignment
                    .add_partition_offset(topic, partition.id(), Offset::Beginning)
                    .map_err(|error| unavailable("jobs assignment", error))?;
            }
        }
        let mut latest: Vec<(String, Vec<u8>)> = Vec::new();
        if ends.is_empty() {
            return Ok(latest);
        }
        reader
            .assign(&assignment)
            .map_err(|error| unavailable("jobs assignment", error))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut done: HashMap<i32, bool> =
            ends.keys().map(|partition| (*partition, false)).collect();
        while done.values().any(|finished| !finished) {
            if Instant::now() > deadline {
                return Err(QueueError::Unavailable(
                    "kafka jobs topic: not read to its end within 60 s".into(),
                ));
            }
            let Some(message) = reader.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.map_err(|error| unavailable("jobs read", error))?;
            if let (Some(key), Some(payload)) = (message.key(), message.payload()) {
                let key = String::from_utf8_lossy(key).into_owned();
                latest.retain(|(seen, _)| *seen != key);
                latest.push((key, payload.to_vec()));
            }
            if ends
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                done.insert(message.partition(), true);
            }
        }
        Ok(latest)
    }
}
