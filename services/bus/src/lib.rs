//! Implementations of the [`SegmentQueue`] port. The in-process queue is the embedded
//! default; Kafka implements the same port for the distributed mode.

mod memory;

pub use memory::{DeadLetter, InProcessQueue};
