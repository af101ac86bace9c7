//! Inference failures typed by the device's own error: candle wraps every CUDA driver, cuBLAS
//! and cuRAND error in `candle_core::Error::Cuda`, so the variant (not the message) says that
//! the device failed. Out-of-memory is told apart by the error codes of the CUDA types.

use vidx_core::ModelError;

/// What an inference step failed with, turned into a [`ModelError`] by its type.
pub(crate) trait InferenceFailure {
    fn into_model_error(self, model: &str) -> ModelError;
}

impl InferenceFailure for candle_core::Error {
    fn into_model_error(self, model: &str) -> ModelError {
        let (model, reason) = (model.to_string(), self.to_string());
        match cuda_fault(&self) {
            Some(CudaFault::OutOfMemory) => ModelError::OutOfMemory { model, reason },
            Some(CudaFault::Failed) => ModelError::DeviceFailed { model, reason },
            None => ModelError::Inference { model, reason },
        }
    }
}

impl InferenceFailure for String {
    fn into_model_error(self, model: &str) -> ModelError {
        ModelError::inference(model, self)
    }
}

impl InferenceFailure for &str {
    fn into_model_error(self, model: &str) -> ModelError {
        ModelError::inference(model, self)
    }
}

impl InferenceFailure for ModelError {
    fn into_model_error(self, _model: &str) -> ModelError {
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CudaFault {
    /// The device ran out of memory: a smaller batch may fit.
    OutOfMemory,
    /// Any other CUDA error: the context cannot be trusted any more (sticky errors leave it
    /// corrupt), so the process restarts.
    Failed,
}

/// The CUDA error inside `error`, through candle's context and backtrace wrappers.
fn cuda_fault(error: &candle_core::Error) -> Option<CudaFault> {
    use candle_core::Error;
    match error {
        Error::WithBacktrace { inner, .. }
        | Error::Context { inner, .. }
        | Error::WithPath { inner, .. } => cuda_fault(inner),
        Error::Cuda(inner) => Some(if out_of_memory(inner.as_ref()) {
            CudaFault::OutOfMemory
        } else {
            CudaFault::Failed
        }),
        _ => None,
    }
}

#[cfg(feature = "cuda")]
fn out_of_memory(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    use candle_core::cuda_backend::CudaError;
    use candle_core::cuda_backend::cudarc::{cublas, curand, driver};
    let driver_oom =
        |error: &driver::DriverError| error.0 == driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY;
    let cublas_oom = |error: &cublas::result::CublasError| {
        error.0 == cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
    };
    let curand_oom = |error: &curand::result::CurandError| {
        error.0 == curand::sys::curandStatus_t::CURAND_STATUS_ALLOCATION_FAILED
    };
    if let Some(error) = error.downcast_ref::<CudaError>() {
        return match error {
            CudaError::Cuda(error) => driver_oom(error),
            CudaError::Cublas(error) => cublas_oom(error),
            CudaError::Curand(error) => curand_oom(error),
            _ => false,
        };
    }
    error
        .downcast_ref::<driver::DriverError>()
        .is_some_and(driver_oom)
        || error
            .downcast_ref::<cublas::result::CublasError>()
            .is_some_and(cublas_oom)
}

/// A build without CUDA has no CUDA errors to tell apart.
#[cfg(not(feature = "cuda"))]
fn out_of_memory(_error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error inside `Error::Cuda` that is none of the CUDA types: not out of memory.
    #[derive(Debug)]
    struct Launch;

    impl std::fmt::Display for Launch {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("launch failed")
        }
    }

    impl std::error::Error for Launch {}

    #[test]
    fn the_cuda_variant_makes_a_device_failure_and_messages_do_not() {
        // Any error candle reports as a CUDA error, through its wrappers.
        let cuda = candle_core::Error::Cuda(Box::new(Launch))
            .context("forward")
            .bt();
        assert!(matches!(
            cuda.into_model_error("plm"),
            ModelError::DeviceFailed { .. }
        ));
        // A CPU error that names a CUDA code in its text stays an inference error.
        let plain = candle_core::Error::Msg("CUDA_ERROR_ILLEGAL_ADDRESS".into());
        assert!(matches!(
            plain.into_model_error("plm"),
            ModelError::Inference { .. }
        ));
        assert!(matches!(
            "no frame".into_model_error("plm"),
            ModelError::Inference { .. }
        ));
    }
}
