use std::time::Duration;

use vidx_core::{BlobError, ErrorCode, Failure, MediaError, ModelError, QueueError, StoreError};

/// Why a segment or a search failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("unsupported task schema version {found} (this worker reads {expected})")]
    SchemaVersion { found: u32, expected: u32 },
    #[error("cannot fetch segment media: {0}")]
    Fetch(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("worker task failed: {0}")]
    Task(String),
    /// The models panicked on this segment (run alone): the worker goes on.
    #[error("the models panicked on this segment: {0}")]
    Panicked(String),
    /// The models did not finish this segment (run alone) within `pipeline.segment_timeout_ms`:
    /// it is abandoned and the worker goes on.
    #[error("the models did not finish this segment within {0:?} (pipeline.segment_timeout_ms)")]
    TimedOut(Duration),
    /// The segment was delivered this many times without a result each time (the worker
    /// crashed, was killed or hung on it): it is not tried again.
    #[error(
        "gave up after {0} deliveries without a result (the worker crashed or hung on it each time; pipeline.max_attempts)"
    )]
    Abandoned(u32),
}

impl PipelineError {
    /// The stage that failed, as a short label (metrics, logs).
    pub fn cause(&self) -> &'static str {
        match self {
            PipelineError::InvalidArgument { .. } => "invalid_argument",
            PipelineError::SchemaVersion { .. } => "schema_version",
            PipelineError::Fetch(_) | PipelineError::Blob(_) => "fetch",
            PipelineError::Media(_) => "decode",
            PipelineError::Model(_) => "model",
            PipelineError::Store(_) => "store",
            PipelineError::Queue(_) => "queue",
            PipelineError::Task(_) => "internal",
            PipelineError::Panicked(_) => "panic",
            PipelineError::TimedOut(_) => "timeout",
            PipelineError::Abandoned(_) => "abandoned",
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            PipelineError::InvalidArgument { .. } | PipelineError::SchemaVersion { .. } => {
                ErrorCode::InvalidInput
            }
            PipelineError::Fetch(_) => ErrorCode::Unavailable,
            PipelineError::Blob(error) => error.code(),
            PipelineError::Media(error) => error.code(),
            PipelineError::Model(error) => error.code(),
            PipelineError::Store(error) => error.code(),
            PipelineError::Queue(error) => error.code(),
            PipelineError::Task(_) | PipelineError::Panicked(_) => ErrorCode::Internal,
            PipelineError::TimedOut(_) => ErrorCode::ResourceExhausted,
            PipelineError::Abandoned(_) => ErrorCode::Internal,
        }
    }

    /// Which dependency failed and how, as a short label (the outage metric's `kind`).
    pub fn outage_kind(&self) -> &'static str {
        match self {
            PipelineError::Store(error) => error.label(),
            PipelineError::Blob(_) => "blob_store",
            PipelineError::Queue(_) => "queue",
            _ => "other",
        }
    }

    /// Whether trying the same segment again may succeed: a dependency back, memory freed,
    /// or a panic or hang that does not come back (each such try counts as an attempt).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PipelineError::Panicked(_) | PipelineError::TimedOut(_)
        ) || self.code().is_retryable()
    }

    /// Whose fault it is ([`Failure`]): the segment's (retried, then dead-lettered), a
    /// dependency's (waited out, never dead-lettered) or the device's (the process restarts).
    pub fn failure(&self) -> Failure {
        match self {
            PipelineError::InvalidArgument { .. }
            | PipelineError::SchemaVersion { .. }
            | PipelineError::Media(_)
            | PipelineError::Task(_)
            | PipelineError::Panicked(_)
            | PipelineError::TimedOut(_)
            | PipelineError::Abandoned(_)
            // A blob URI this worker cannot read, or a blob gone from its store.
            | PipelineError::Fetch(_) => Failure::Data,
            PipelineError::Blob(error) => error.failure(),
            PipelineError::Model(error) => error.failure(),
            PipelineError::Store(error) => error.failure(),
            PipelineError::Queue(error) => error.failure(),
        }
    }
}
