//! Implementations of the [`SegmentQueue`](vidx_core::ports::SegmentQueue) port. The
//! in-process queue is the embedded default; Kafka implements the same port for the
//! distributed mode.

pub mod kafka;
mod memory;

pub use kafka::{
    DeadLetterRecord, GroupProgress, JobTopic, KafkaQueue, KafkaSettings, ensure_topics,
};
pub use memory::{DeadLetter, InProcessQueue};
