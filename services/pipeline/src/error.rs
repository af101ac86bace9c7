use vidx_core::{BlobError, ErrorCode, MediaError, ModelError, QueueError, StoreError};

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
            PipelineError::Task(_) => ErrorCode::Internal,
        }
    }
}
