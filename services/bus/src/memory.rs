//! A bounded in-process queue: publishers wait when it is full (the bound is the
//! backpressure on segmenting), any number of workers receive, and failed tasks are kept as
//! dead letters with their reason.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;
use vidx_core::ports::{Delivery, DeliveryTag, SegmentQueue};
use vidx_core::{QueueError, SegmentTask};

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
}

impl InProcessQueue {
    pub fn new(capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        Self {
            sender: Mutex::new(Some(sender)),
            receiver: tokio::sync::Mutex::new(receiver),
            next_offset: AtomicI64::new(0),
            in_flight: Mutex::new(HashMap::new()),
            dead_letters: Mutex::new(Vec::new()),
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
        self.in_flight
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .remove(&tag)
            .ok_or_else(|| {
                QueueError::Malformed(format!(
                    "delivery {}:{} is not in flight",
                    tag.partition, tag.offset
                ))
            })
    }
}

impl SegmentQueue for InProcessQueue {
    async fn publish(&self, task: SegmentTask) -> Result<(), QueueError> {
        let sender = self
            .sender
            .lock()
            .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?
            .clone()
            .ok_or(QueueError::Closed)?;
        let offset = self.next_offset.fetch_add(1, Ordering::Relaxed);
        let delivery = Delivery {
            tag: DeliveryTag {
                partition: 0,
                offset,
            },
            task,
        };
        sender.send(delivery).await.map_err(|_| QueueError::Closed)
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
                reason,
                attempts,
            });
        Ok(())
    }

    fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidx_core::{SegmentMedia, TimeRange};

    fn task(seq: u64) -> SegmentTask {
        SegmentTask {
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
}
