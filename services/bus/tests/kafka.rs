//! The Kafka queue against a real Kafka-protocol broker (`tansu`, started on loopback):
//! at-least-once delivery, contiguous-prefix commits, redelivery after a crash, and the
//! dead-letter topic with its headers (docs/reliability.md faults 1–3, 6, 7).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use vidx_bus::kafka::{dead_letter_headers, dead_letter_info, ensure_topics};
use vidx_bus::{KafkaQueue, KafkaSettings};
use vidx_core::ports::{Delivery, SegmentQueue};
use vidx_core::{SEGMENT_TASK_SCHEMA_VERSION, SegmentMedia, SegmentTask, TimeRange};
use vidx_testkit::LocalBroker;

fn task(seq: u64) -> SegmentTask {
    SegmentTask {
        generation: None,
        schema_version: SEGMENT_TASK_SCHEMA_VERSION,
        tenant: "acme".into(),
        stream_id: "cam-1".into(),
        segment_seq: seq,
        range: TimeRange::new(seq * 10_000, seq * 10_000 + 10_000),
        media: SegmentMedia::Inline(vec![seq as u8; 16]),
        source_uri: "cam-1".into(),
        attempt: 1,
        subtitles: Vec::new(),
        trace_context: Default::default(),
        labels: Vec::new(),
    }
}

async fn receive(queue: &KafkaQueue) -> anyhow::Result<Delivery> {
    tokio::time::timeout(Duration::from_secs(30), queue.receive())
        .await
        .map_err(|_| anyhow::anyhow!("no message within 30 s"))??
        .ok_or_else(|| anyhow::anyhow!("queue closed"))
}

async fn committed(queue: &KafkaQueue) -> anyhow::Result<Option<i64>> {
    Ok(queue.committed_offset(0)?)
}

async fn setup() -> anyhow::Result<(LocalBroker, KafkaSettings)> {
    let broker = LocalBroker::start()?;
    let settings = broker.fresh_settings(1);
    ensure_topics(&settings).await?;
    Ok((broker, settings))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_only_the_acked_prefix_and_redelivers_the_rest_after_a_crash() -> anyhow::Result<()>
{
    let (_broker, settings) = setup().await?;
    let producer = KafkaQueue::producer(settings.clone())?;
    for seq in 0..6 {
        producer.publish(task(seq)).await?;
    }

    let worker = KafkaQueue::worker(settings.clone())?;
    let mut deliveries = Vec::new();
    for _ in 0..6 {
        deliveries.push(receive(&worker).await?);
    }
    let seqs: Vec<u64> = deliveries.iter().map(|d| d.task.segment_seq).collect();
    assert_eq!(seqs, (0..6).collect::<Vec<_>>(), "one stream stays ordered");
    assert_eq!(deliveries[3].task, task(3), "the task survives the wire");

    // Later segments finish first (fault 3): nothing may be committed past segment 0.
    for delivery in &deliveries[1..4] {
        worker.ack(delivery.tag).await?;
    }
    // Only the delivery counts are committed so far, at the first offset: nothing past it.
    assert_eq!(
        committed(&worker).await?,
        Some(deliveries[0].tag.offset),
        "offset 0 is still in flight"
    );
    worker.ack(deliveries[0].tag).await?;
    let first = deliveries[0].tag.offset;
    assert_eq!(committed(&worker).await?, Some(first + 4), "0..=3 are done");
    assert_eq!(worker.in_flight(), 2);

    // Crash with 4 and 5 in flight (fault 1/2): the next member of the group gets them again.
    drop(worker);
    let replacement = KafkaQueue::worker(settings.clone())?;
    let again = [receive(&replacement).await?, receive(&replacement).await?];
    assert_eq!(
        again.iter().map(|d| d.task.segment_seq).collect::<Vec<_>>(),
        vec![4, 5],
        "exactly the unacked segments are redelivered"
    );
    for delivery in &again {
        replacement.ack(delivery.tag).await?;
    }
    assert_eq!(committed(&replacement).await?, Some(first + 6));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_version_and_failed_segments_are_dead_lettered_with_headers()
-> anyhow::Result<()> {
    let (_broker, settings) = setup().await?;
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()?;
    let send = |payload: Vec<u8>| {
        let raw = raw.clone();
        let topic = settings.topic.clone();
        async move {
            raw.send(
                FutureRecord::to(&topic).key("acme/cam-1").payload(&payload),
                Duration::from_secs(20),
            )
            .await
            .map_err(|(error, _)| error)
        }
    };
    // Fault 7: garbage bytes, then a task from a future schema version, then a good one.
    send(vec![0xff, 0x00, 0xfe, 0x13]).await?;
    let mut future = task(1);
    future.schema_version = 99;
    send(vidx_proto::encode_segment_task(&future)).await?;
    send(vidx_proto::encode_segment_task(&task(2))).await?;
    send(vidx_proto::encode_segment_task(&task(3))).await?;

    let worker = KafkaQueue::worker(settings.clone())?;
    let good = receive(&worker).await?;
    assert_eq!(
        good.task.segment_seq, 2,
        "bad messages never reach the worker"
    );
    // Fault 6: the model keeps failing on segment 2; the worker gives up after 3 attempts.
    worker.nack(good.tag, "model: bad tensor".into(), 3).await?;
    let next = receive(&worker).await?;
    assert_eq!(next.task.segment_seq, 3, "the partition moves on");
    worker.ack(next.tag).await?;
    assert_eq!(
        committed(&worker).await?,
        Some(next.tag.offset + 1),
        "dead-lettered messages count as done"
    );

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("{}-dlq-reader", settings.group_id))
        .set("auto.offset.reset", "earliest")
        .create()?;
    reader.subscribe(&[&settings.dead_letter_topic])?;
    let mut letters = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await??;
        letters.push((
            dead_letter_info(&message),
            message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        ));
    }
    let header = |index: usize, name: &str| letters[index].0.get(name).cloned().unwrap_or_default();
    let base = good.tag.offset - 2;
    for (index, offset) in [(0usize, base), (1, base + 1), (2, base + 2)] {
        assert_eq!(header(index, dead_letter_headers::TOPIC), settings.topic);
        assert_eq!(header(index, dead_letter_headers::PARTITION), "0");
        assert_eq!(
            header(index, dead_letter_headers::OFFSET),
            offset.to_string()
        );
    }
    assert!(
        header(0, dead_letter_headers::ERROR).contains("malformed"),
        "{:?}",
        letters[0].0
    );
    assert_eq!(
        letters[0].1,
        vec![0xff, 0x00, 0xfe, 0x13],
        "the original bytes are kept"
    );
    assert!(
        header(1, dead_letter_headers::ERROR).contains("schema_version 99"),
        "{:?}",
        letters[1].0
    );
    assert_eq!(header(1, dead_letter_headers::ATTEMPTS), "1");
    assert_eq!(header(2, dead_letter_headers::ERROR), "model: bad tensor");
    assert_eq!(header(2, dead_letter_headers::ATTEMPTS), "3");
    Ok(())
}

/// A segment that takes longer than `max.poll.interval.ms` (a slow model on a CPU worker):
/// the queue pauses its partitions while every worker is busy and keeps polling, so the
/// member never leaves the group (no revocation, which would drop the segment in flight and
/// replay it), its commit lands, and nothing is skipped or replayed when fetching resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_slower_than_the_poll_interval_pauses_fetching_and_keeps_the_member()
-> anyhow::Result<()> {
    let broker = LocalBroker::start()?;
    let mut settings = broker.fresh_settings(1);
    settings.max_poll_interval = Duration::from_secs(7);
    ensure_topics(&settings).await?;
    let producer = KafkaQueue::producer(settings.clone())?;
    for seq in 0..12 {
        producer.publish(task(seq)).await?;
    }
    let worker = KafkaQueue::worker(settings.clone())?;
    let first = receive(&worker).await?;
    assert_eq!(first.task.segment_seq, 0);
    let revocations = worker.revocations();

    // The "model" holds segment 0 for twice the poll interval; nobody calls receive().
    let mut saw_paused = false;
    for _ in 0..28 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        saw_paused |= worker.is_paused();
    }
    assert!(saw_paused, "fetching pauses while every worker is busy");
    worker.ack(first.tag).await?;
    assert_eq!(
        committed(&worker).await?,
        Some(first.tag.offset + 1),
        "the commit of a member that outlived the poll interval lands"
    );

    // Resuming continues right after segment 0: no gap, no replay.
    for seq in 1..12 {
        let delivery = receive(&worker).await?;
        assert_eq!(delivery.task.segment_seq, seq, "in order after the resume");
        worker.ack(delivery.tag).await?;
    }
    assert_eq!(committed(&worker).await?, Some(first.tag.offset + 12));
    assert_eq!(
        worker.revocations(),
        revocations,
        "the member never left the group"
    );
    Ok(())
}
