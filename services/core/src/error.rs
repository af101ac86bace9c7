//! Error types of the ports, and the small code enum that every crate boundary maps onto
//! (CLI exit codes, gRPC `Status` later).

use std::fmt;

/// The coarse classification of a failure, shared by every boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The caller's input is malformed or violates a rule (bad URL, empty query, corrupt file).
    InvalidInput,
    /// Something named does not exist (file, model, point).
    NotFound,
    /// The input is well-formed but uses something vidx cannot handle (codec, config value).
    Unsupported,
    /// A dependency (store, broker, hub) cannot be reached right now; retrying may help.
    Unavailable,
    /// A limit was hit (size, memory, queue capacity).
    ResourceExhausted,
    /// A bug or an unexpected state inside vidx or a dependency.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::ResourceExhausted)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A media input that could not be read, segmented or decoded. Every variant names the input.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{input}: not found")]
    NotFound { input: String },
    #[error("{input}: empty file")]
    Empty { input: String },
    #[error("{input}: not a readable media file ({reason})")]
    InvalidData { input: String, reason: String },
    #[error("{input}: truncated ({reason})")]
    Truncated { input: String, reason: String },
    #[error("{input}: unsupported ({reason})")]
    Unsupported { input: String, reason: String },
    #[error("{input}: rejected ({reason})")]
    Rejected { input: String, reason: String },
    #[error("{input}: {reason}")]
    Io { input: String, reason: String },
}

impl MediaError {
    pub fn code(&self) -> ErrorCode {
        match self {
            MediaError::NotFound { .. } => ErrorCode::NotFound,
            MediaError::Empty { .. }
            | MediaError::InvalidData { .. }
            | MediaError::Truncated { .. }
            | MediaError::Rejected { .. } => ErrorCode::InvalidInput,
            MediaError::Unsupported { .. } => ErrorCode::Unsupported,
            MediaError::Io { .. } => ErrorCode::Unavailable,
        }
    }

    /// The input the error is about.
    pub fn input(&self) -> &str {
        match self {
            MediaError::NotFound { input }
            | MediaError::Empty { input }
            | MediaError::InvalidData { input, .. }
            | MediaError::Truncated { input, .. }
            | MediaError::Unsupported { input, .. }
            | MediaError::Rejected { input, .. }
            | MediaError::Io { input, .. } => input,
        }
    }
}

/// A model that could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {model}: not found ({reason})")]
    NotFound { model: String, reason: String },
    #[error("model {model}: cannot load ({reason})")]
    Load { model: String, reason: String },
    #[error("model {model}: unsupported config field `{field}` ({reason})")]
    UnsupportedConfig {
        model: String,
        field: String,
        reason: String,
    },
    #[error("model {model}: inference failed ({reason})")]
    Inference { model: String, reason: String },
}

impl ModelError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ModelError::NotFound { .. } => ErrorCode::NotFound,
            ModelError::Load { .. } => ErrorCode::Internal,
            ModelError::UnsupportedConfig { .. } => ErrorCode::Unsupported,
            ModelError::Inference { .. } => ErrorCode::Internal,
        }
    }
}

/// The index store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid store request: {0}")]
    Invalid(String),
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Invalid(_) => ErrorCode::InvalidInput,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// The blob store (segment bytes too large for a queue message) failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A URI this store did not hand out (another scheme, bucket or prefix, or `..`): it is
    /// never read, whatever a message says.
    #[error("blob {uri}: refused: {reason}")]
    Refused { uri: String, reason: String },
    #[error("blob {0} does not exist")]
    NotFound(String),
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    #[error("blob store configuration: {0}")]
    Config(String),
}

impl BlobError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BlobError::Refused { .. } => ErrorCode::InvalidInput,
            BlobError::NotFound(_) => ErrorCode::NotFound,
            BlobError::Unavailable(_) => ErrorCode::Unavailable,
            BlobError::Config(_) => ErrorCode::Unsupported,
        }
    }
}

/// The segment queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue closed")]
    Closed,
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl QueueError {
    pub fn code(&self) -> ErrorCode {
        match self {
            QueueError::Closed => ErrorCode::Unavailable,
            QueueError::Unavailable(_) => ErrorCode::Unavailable,
            QueueError::Malformed(_) => ErrorCode::InvalidInput,
        }
    }
}
