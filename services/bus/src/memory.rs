//! A bounded in-process queue: publishers wait when it is full (the bound is the
//! backpressure on segmenting), any number of workers receive, and failed tasks are kept as
//! dead letters with their reason. It reports progress as the Kafka queue does (one
//! partition, 0; settled offsets; dead letters), so the ingest follows jobs the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;
use vidx_core::ports::{
    BoxFuture, Delivery, DeliveryTag, IngestProgress, QueueStatus, SegmentQueue,
};
use vidx_core::{QueueError, SegmentTask};

/// Settled offsets, as a committed prefix plus what was settled beyond it.
#[derive(Debug, Default)]
struct Settled {
    /// Every offset below this is settled.
    next: i64,
    beyond: BTreeSet<i64>,
}

impl Settled {
    fn settle(&mut self, offset: i64) {
        if offset >= self.next {
            self.beyond.insert(offset);
        }
        while self.beyond.remove(&self.next) {
            self.next += 1;
        }
    }
}

/// A task that failed for good.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub tag: DeliveryTag,
    pub stream_id: String,
    pub segment_seq: u64,
    pub reason: String,
    pub attempts: u32,
}

#[derive(Debug)]
pub struct InProcessQueue {
    sender: Mutex<Option<mpsc::Sender<Delivery>>>,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    next_offset: AtomicI64,
    /// Received but not yet settled: tag → (stream id, segment seq).
    in_flight: Mutex<HashMap<DeliveryTag, (String, u64)>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    settled: Mutex<Settled>,
    /// Dead letters for [`IngestProgress::next_dead_letter`].
    letters_tx: mpsc::UnboundedSender<(DeliveryTag, String)>,
    letters_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(DeliveryTag, String)>>,
}

impl InProcessQueue {
    pub fn new(capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let (letters_tx, letters_rx) = mpsc::unbounded_channel();
        Self {
            sender: Mutex::new(Some(sender)),
            receiver: tokio::sync::Mutex::new(receiver),
            next_offset: AtomicI64::new(0),
            in_flight: Mutex::new(HashMap::new()),
            dead_letters: Mutex::new(Vec::new()),
            settled: Mutex::new(Settled::default()),
            letters_tx,
            letters_rx: tokio::sync::Mutex::new(letters_rx),
        }
    }

    /// Tasks received but neither acked nor nacked.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().map_or(0, |set| set.len())
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters
            .lock()
            .map(|letters| letters.clone())
            .unwrap_or_default()
    }

    fn settle(&self, tag: DeliveryTag) -> Result<(String, u64), QueueError> {
        let settled = self
            .in_flight
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .remove(&tag)
            .ok_or_else(|| {
                QueueError::Malformed(format!(
                    "delivery {}:{} is not in flight",
                    tag.partition, tag.offset
                ))
            })?;
        self.settled
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .settle(tag.offset);
        Ok(settled)
    }
}

impl SegmentQueue for InProcessQueue {
    async fn publish(&self, task: SegmentTask) -> Result<DeliveryTag, QueueError> {
        let sender = self
            .sender
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .clone()
            .ok_or(QueueError::Closed)?;
        let offset = self.next_offset.fetch_add(1, Ordering::Relaxed);
        let tag = DeliveryTag {
            partition: 0,
            offset,
        };
        let delivery = Delivery { tag, task };
        sender
            .send(delivery)
            .await
            .map_err(|_| QueueError::Closed)?;
        Ok(tag)
    }

    async fn receive(&self) -> Result<Option<Delivery>, QueueError> {
        let delivery = self.receiver.lock().await.recv().await;
        if let Some(delivery) = &delivery {
            self.in_flight
                .lock()
                .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
                .insert(
                    delivery.tag,
                    (delivery.task.stream_id.clone(), delivery.task.segment_seq),
                );
        }
        Ok(delivery)
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), QueueError> {
        self.settle(tag).map(|_| ())
    }

    async fn nack(
        &self,
        tag: DeliveryTag,
        reason: String,
        attempts: u32,
    ) -> Result<(), QueueError> {
        let (stream_id, segment_seq) = self.settle(tag)?;
        self.dead_letters
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .push(DeadLetter {
                tag,
                stream_id,
                segment_seq,
                reason: reason.clone(),
                attempts,
            });
        // The receiver lives as long as the queue.
        let _ = self.letters_tx.send((tag, reason));
        Ok(())
    }

    fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }
}

impl IngestProgress for InProcessQueue {
    fn committed(&self) -> Result<HashMap<i32, i64>, QueueError> {
        let settled = self
            .settled
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?;
        Ok(HashMap::from([(0, settled.next)]))
    }

    fn next_dead_letter(&self) -> BoxFuture<'_, Result<(DeliveryTag, String), QueueError>> {
        Box::pin(async move {
            self.letters_rx
                .lock()
                .await
                .recv()
                .await
                .ok_or(QueueError::Closed)
        })
    }
}

impl QueueStatus for InProcessQueue {
    fn in_flight(&self) -> usize {
        InProcessQueue::in_flight(self)
    }

    fn assigned_partitions(&self) -> Vec<i32> {
        vec![0]
    }

    fn is_paused(&self) -> bool {
        false
    }

    fn revocations(&self) -> u64 {
        0
    }

    fn lag(&self) -> Result<Vec<(i32, i64)>, QueueError> {
        let published = self.next_offset.load(Ordering::Relaxed);
        let committed = IngestProgress::committed(self)?;
        let next = committed.get(&0).copied().unwrap_or(0);
        Ok(vec![(0, (published - next).max(0))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidx_core::{SegmentMedia, TimeRange};

    fn task(seq: u64) -> SegmentTask {
        SegmentTask {
            generation: None,
            schema_version: vidx_core::SEGMENT_TASK_SCHEMA_VERSION,
            tenant: "t".into(),
            stream_id: "s".into(),
            segment_seq: seq,
            range: TimeRange::new(seq * 1000, seq * 1000 + 1000),
            media: SegmentMedia::Inline(vec![]),
            source_uri: "s".into(),
            attempt: 1,
            subtitles: vec![],
            trace_context: Default::default(),
            labels: Vec::new(),
        }
    }

    #[tokio::test]
    async fn bounded_fifo_with_ack_nack_and_close() -> Result<(), QueueError> {
        let queue = std::sync::Arc::new(InProcessQueue::new(2));
        queue.publish(task(0)).await?;
        queue.publish(task(1)).await?;
        // Full: a third publish waits until a receive frees a slot.
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            queue.publish(task(2)),
        )
        .await;
        assert!(
            blocked.is_err(),
            "publish must wait while the queue is full"
        );

        let first = queue.receive().await?.ok_or(QueueError::Closed)?;
        assert_eq!(first.task.segment_seq, 0);
        queue.publish(task(2)).await?;
        assert_eq!(queue.in_flight(), 1);
        queue.ack(first.tag).await?;
        assert!(
            queue.ack(first.tag).await.is_err(),
            "double ack is an error"
        );

        let second = queue.receive().await?.ok_or(QueueError::Closed)?;
        queue.nack(second.tag, "boom".into(), 3).await?;
        let letters = queue.dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (
                letters[0].segment_seq,
                letters[0].reason.as_str(),
                letters[0].attempts
            ),
            (1, "boom", 3)
        );

        queue.close();
        assert!(matches!(
            queue.publish(task(3)).await,
            Err(QueueError::Closed)
        ));
        let third = queue.receive().await?.ok_or(QueueError::Closed)?;
        assert_eq!(
            third.task.segment_seq, 2,
            "tasks published before close are still delivered"
        );
        assert!(queue.receive().await?.is_none(), "closed and drained");
        Ok(())
    }

    #[tokio::test]
    async fn progress_is_the_settled_prefix_and_dead_letters_are_reported() -> Result<(), QueueError>
    {
        let queue = InProcessQueue::new(8);
        let mut tags = Vec::new();
        for seq in 0..4 {
            tags.push(queue.publish(task(seq)).await?);
        }
        assert_eq!(
            tags.iter().map(|tag| tag.offset).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let mut deliveries = Vec::new();
        for _ in 0..4 {
            deliveries.push(queue.receive().await?.ok_or(QueueError::Closed)?);
        }
        assert_eq!(IngestProgress::committed(&queue)?, HashMap::from([(0, 0)]));
        // Out of order: offset 1 and 3 settle first; nothing is contiguous from 0 yet.
        queue.ack(deliveries[1].tag).await?;
        queue.nack(deliveries[3].tag, "corrupt".into(), 2).await?;
        assert_eq!(IngestProgress::committed(&queue)?, HashMap::from([(0, 0)]));
        assert_eq!(QueueStatus::lag(&queue)?, vec![(0, 4)]);
        queue.ack(deliveries[0].tag).await?;
        assert_eq!(IngestProgress::committed(&queue)?, HashMap::from([(0, 2)]));
        queue.ack(deliveries[2].tag).await?;
        assert_eq!(IngestProgress::committed(&queue)?, HashMap::from([(0, 4)]));
        assert_eq!(QueueStatus::lag(&queue)?, vec![(0, 0)]);
        let (tag, reason) = queue.next_dead_letter().await?;
        assert_eq!((tag, reason.as_str()), (tags[3], "corrupt"));
        Ok(())
    }
}
