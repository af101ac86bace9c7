//! vidx's small pure core: domain types, deterministic point ids, time ranges, the port traits
//! that adapters (ffmpeg, candle, Qdrant, Kafka) implement, and the error codes every boundary
//! maps onto. No I/O lives here.

pub mod dense_caption;
pub mod error;
pub mod fusion;
pub mod ids;
pub mod labels;
pub mod offsets;
pub mod ports;
pub mod regions;
pub mod time;
pub mod types;

pub use error::{BlobError, ErrorCode, Failure, MediaError, ModelError, QueueError, StoreError};
pub use ids::point_id;
pub use offsets::OffsetTracker;
pub use time::{TimeRange, format_hms_ms, format_time_ms};
pub use types::*;
pub use uuid::Uuid;
