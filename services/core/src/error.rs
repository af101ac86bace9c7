//! Error types of the ports, and the small code enum that every crate boundary maps onto
//! (CLI exit codes, gRPC `Status` later).

use std::fmt;

/// Whose fault a failed segment is, which decides what a worker does with it. Every error
/// of the ports maps onto it by its type (`failure()`), never by its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The segment itself (undecodable media, an unknown schema, input a model rejects):
    /// retried up to `pipeline.max_attempts` times, then dead-lettered, and the partition
    /// moves on.
    Data,
    /// A dependency (the store unreachable, failing, refusing the credentials, missing its
    /// collection or out of disk; the blob store; the broker): never dead-lettered and never
    /// committed past. The worker stops taking segments, reports NOT_SERVING with the reason
    /// and retries with jittered backoff until the dependency is back.
    Infrastructure,
    /// The device is unusable for this process (a CUDA error other than out-of-memory): nothing
    /// in flight is settled, and the process exits non-zero so that it is restarted.
    Device,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Data => "data",
            Failure::Infrastructure => "infrastructure",
            Failure::Device => "device",
        }
    }
}

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
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The device ran out of memory for this work: a smaller batch may fit, and the same
    /// segment may fit later (retryable).
    #[error("model {model}: out of device memory ({reason})")]
    OutOfMemory { model: String, reason: String },
    /// The device is unusable until the process restarts (a sticky CUDA error: illegal
    /// address, launch failure, ECC error, ...). Nothing in flight may be committed.
    #[error("model {model}: device failed, the process must restart ({reason})")]
    DeviceFailed { model: String, reason: String },
}

impl ModelError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ModelError::NotFound { .. } => ErrorCode::NotFound,
            ModelError::Load { .. } => ErrorCode::Internal,
            ModelError::UnsupportedConfig { .. } => ErrorCode::Unsupported,
            ModelError::Inference { .. } | ModelError::DeviceFailed { .. } => ErrorCode::Internal,
            ModelError::OutOfMemory { .. } => ErrorCode::ResourceExhausted,
        }
    }

    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, ModelError::OutOfMemory { .. })
    }

    /// A device failure is the process's; everything else is the segment's (out of memory
    /// included: a smaller batch, or the segment alone, may fit).
    pub fn failure(&self) -> Failure {
        match self {
            ModelError::DeviceFailed { .. } => Failure::Device,
            _ => Failure::Data,
        }
    }

    /// Whether the device is gone for this process (see [`ModelError::DeviceFailed`]).
    pub fn is_device_failure(&self) -> bool {
        matches!(self, ModelError::DeviceFailed { .. })
    }

    /// An inference failure of `model` that is neither the device's nor a lack of memory
    /// (those are typed by the model adapter from the device's own error type).
    pub fn inference(model: &str, reason: impl fmt::Display) -> Self {
        ModelError::Inference {
            model: model.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The index store failed. Only [`StoreError::Invalid`] is the data's fault; every other
/// variant is the store's, and a segment is never dead-lettered for it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (connection refused, timed out, overloaded).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (a payload or vector the store rejects).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The store answered with an error of its own.
    #[error("store error: {0}")]
    Internal(String),
    /// The store refused the credentials (`store.api_key`).
    #[error("store refused the credentials (check store.api_key): {0}")]
    Unauthenticated(String),
    /// The collection is gone (deleted under the node).
    #[error("store collection missing: {0}")]
    CollectionMissing(String),
    /// The store's own storage failed (disk full, I/O error).
    #[error("store storage failed: {0}")]
    Storage(String),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Invalid(_) => ErrorCode::InvalidInput,
            StoreError::Internal(_) => ErrorCode::Internal,
            StoreError::Unavailable(_)
            | StoreError::Unauthenticated(_)
            | StoreError::CollectionMissing(_)
            | StoreError::Storage(_) => ErrorCode::Unavailable,
        }
    }

    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Invalid(_) => Failure::Data,
            _ => Failure::Infrastructure,
        }
    }

    /// The variant as a short label (metrics, health).
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Invalid(_) => "store_invalid",
            StoreError::Internal(_) => "store_internal",
            StoreError::Unauthenticated(_) => "store_unauthenticated",
            StoreError::CollectionMissing(_) => "store_collection_missing",
            StoreError::Storage(_) => "store_storage",
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

    /// A URI refused or a blob gone is the segment's problem; a store that cannot be read is
    /// the infrastructure's.
    pub fn failure(&self) -> Failure {
        match self {
            BlobError::Refused { .. } | BlobError::NotFound(_) => Failure::Data,
            BlobError::Unavailable(_) | BlobError::Config(_) => Failure::Infrastructure,
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

    pub fn failure(&self) -> Failure {
        match self {
            QueueError::Malformed(_) => Failure::Data,
            QueueError::Closed | QueueError::Unavailable(_) => Failure::Infrastructure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_type() {
        let device = ModelError::DeviceFailed {
            model: "plm".into(),
            reason: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
        };
        assert_eq!(device.failure(), Failure::Device);
        assert!(device.to_string().contains("must restart"), "{device}");
        let oom = ModelError::OutOfMemory {
            model: "plm".into(),
            reason: "CUDA_ERROR_OUT_OF_MEMORY".into(),
        };
        assert_eq!(oom.failure(), Failure::Data);
        assert!(oom.code().is_retryable());
        // A message that names a CUDA error does not make a plain inference error a device
        // failure: only the adapter's typed classification does.
        assert_eq!(
            ModelError::inference("plm", "CUDA_ERROR_ILLEGAL_ADDRESS").failure(),
            Failure::Data
        );
        for infrastructure in [
            StoreError::Unavailable("connection refused".into()),
            StoreError::Internal("qdrant upsert: internal".into()),
            StoreError::Unauthenticated("wrong key".into()),
            StoreError::CollectionMissing("vidx".into()),
            StoreError::Storage("No space left on device".into()),
        ] {
            assert_eq!(
                infrastructure.failure(),
                Failure::Infrastructure,
                "{infrastructure}"
            );
        }
        assert_eq!(
            StoreError::Invalid("payload".into()).failure(),
            Failure::Data
        );
        assert_eq!(QueueError::Malformed("x".into()).failure(), Failure::Data);
        assert_eq!(
            QueueError::Unavailable("x".into()).failure(),
            Failure::Infrastructure
        );
        assert_eq!(BlobError::NotFound("x".into()).failure(), Failure::Data);
        assert_eq!(
            BlobError::Unavailable("x".into()).failure(),
            Failure::Infrastructure
        );
    }
}
