//! Errors of the library crates as gRPC statuses: invalid arguments name the field, and
//! internal details stay in the log.

use tonic::Status;
use vidx_core::ErrorCode;
use vidx_pipeline::PipelineError;

/// `INVALID_ARGUMENT` naming the field: `"top_k: must be between 1 and 1000"`.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

pub fn from_pipeline(error: PipelineError) -> Status {
    match error {
        PipelineError::InvalidArgument { field, reason } => invalid(field, reason),
        other => match other.code() {
            ErrorCode::InvalidInput | ErrorCode::Unsupported => {
                Status::invalid_argument(other.to_string())
            }
            ErrorCode::NotFound => Status::not_found(other.to_string()),
            ErrorCode::Unavailable => Status::unavailable(other.to_string()),
            ErrorCode::ResourceExhausted => Status::resource_exhausted(other.to_string()),
            ErrorCode::Internal => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error (see the server log)")
            }
        },
    }
}
