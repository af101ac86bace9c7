//! The worker stages — fetch → decode/sample → models → upsert → ack — and search planning,
//! generic over the ports of `vidx-core`. Nothing here knows ffmpeg, candle, Qdrant or Kafka.

pub mod captioners;
mod error;
mod health;
mod points;
pub mod search;
pub mod thumbnails;
pub mod worker;

pub use error::PipelineError;
pub use health::{DependencyHealth, Outage};
pub use points::{
    Models, StageTimings, TaskPoints, build_points, build_points_batch, build_points_timed,
    device_failed,
};
pub use search::{
    MAX_QUERY_CHARS, MAX_TOP_K, SearchMode, SearchModels, SearchRequest, SearchResults, search,
};
pub use worker::{WorkerEvent, WorkerOptions, run_worker};
