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

    /// Whether the device is gone for this process (see [`ModelError::DeviceFailed`]).
    pub fn is_device_failure(&self) -> bool {
        matches!(self, ModelError::DeviceFailed { .. })
    }

    /// An inference failure of `model`, classified by its message: the CUDA driver's and
    /// cuBLAS's out-of-memory codes become [`ModelError::OutOfMemory`], the sticky CUDA errors
    /// [`ModelError::DeviceFailed`], the rest [`ModelError::Inference`].
    pub fn inference(model: &str, reason: impl fmt::Display) -> Self {
        let reason = reason.to_string();
        let model = model.to_string();
        if OUT_OF_MEMORY.iter().any(|code| reason.contains(code)) {
            ModelError::OutOfMemory { model, reason }
        } else if STICKY_DEVICE_ERRORS
            .iter()
            .any(|code| reason.contains(code))
        {
            ModelError::DeviceFailed { model, reason }
        } else {
            ModelError::Inference { model, reason }
        }
    }
}

/// How the CUDA driver (cudarc's `DriverError`), cuBLAS and candle name running out of memory.
const OUT_OF_MEMORY: &[&str] = &[
    "CUDA_ERROR_OUT_OF_MEMORY",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CURAND_STATUS_ALLOCATION_FAILED",
    "out of memory",
];

/// CUDA errors after which the context is corrupt and every later call fails: only a new
/// process recovers (CUDA programming guide, "sticky errors").
const STICKY_DEVICE_ERRORS: &[&str] = &[
    "CUDA_ERROR_ILLEGAL_ADDRESS",
    "CUDA_ERROR_ILLEGAL_INSTRUCTION",
    "CUDA_ERROR_MISALIGNED_ADDRESS",
    "CUDA_ERROR_INVALID_ADDRESS_SPACE",
    "CUDA_ERROR_INVALID_PC",
    "CUDA_ERROR_LAUNCH_FAILED",
    "CUDA_ERROR_LAUNCH_TIMEOUT",
    "CUDA_ERROR_HARDWARE_STACK_ERROR",
    "CUDA_ERROR_ECC_UNCORRECTABLE",
    "CUDA_ERROR_ASSERT",
    "CUDA_ERROR_CONTEXT_IS_DESTROYED",
    "CUDA_ERROR_DEVICE_UNAVAILABLE",
    "CUDA_ERROR_NVLINK_UNCORRECTABLE",
    "CUDA_ERROR_UNKNOWN",
];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_errors_are_classified_by_the_device_error_they_carry() {
        // The texts as cudarc's DriverError and candle's cuBLAS wrapper format them.
        let oom = ModelError::inference(
            "plm",
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
        );
        assert!(oom.is_out_of_memory() && !oom.is_device_failure());
        assert_eq!(oom.code(), ErrorCode::ResourceExhausted);
        assert!(oom.code().is_retryable());
        assert!(
            ModelError::inference("plm", "cublas: CUBLAS_STATUS_ALLOC_FAILED").is_out_of_memory()
        );

        let sticky = ModelError::inference(
            "plm",
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")",
        );
        assert!(sticky.is_device_failure() && !sticky.is_out_of_memory());
        assert!(!sticky.code().is_retryable());
        assert!(sticky.to_string().contains("must restart"), "{sticky}");

        let plain =
            ModelError::inference("plm", "shape mismatch in matmul, lhs: [2, 3], rhs: [4, 5]");
        assert!(matches!(plain, ModelError::Inference { .. }));
        assert!(!plain.code().is_retryable());
    }
}
