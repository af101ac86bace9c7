//! PE-Core behind vidx's ports: frames and crops into the visual space (`VisualEmbedder`),
//! query text into the same space (`PeCoreTextEmbedder`, a `TextEmbedder`). Vectors are
//! L2-normalised, so cosine search compares them directly.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use vidx_core::ports::{TextEmbedder, VisualEmbedder};
use vidx_core::{Frame, ModelError};

use crate::clip_tokenizer::ClipTokenizer;
use crate::device_error::InferenceFailure;
use crate::hub::{HubOptions, ModelFiles, resolve_model_dir};
use crate::models::pe_core::{PeCoreClip, pixel_values};
use crate::processor::RgbImage;

/// Frames per vision forward pass.
const VISION_BATCH: usize = 8;
/// Texts per text forward pass.
const TEXT_BATCH: usize = 32;

/// A loaded PE-Core CLIP model.
pub struct PeCoreEmbedder {
    model: PeCoreClip,
    tokenizer: ClipTokenizer,
    name: String,
    revision: String,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for PeCoreEmbedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PeCoreEmbedder")
            .field("name", &self.name)
            .field("config", self.model.config())
            .finish()
    }
}

impl PeCoreEmbedder {
    /// `options.local_dir` (a directory or a weights file) when set; otherwise the HF cache or
    /// hub: `facebook/PE-Core-*` holds `<name>.pt`, `timm/PE-Core-*` open_clip's files.
    pub fn from_hub(
        model_id: &str,
        options: &HubOptions,
        device: Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        if let Some(local) = &options.local_dir {
            return Self::from_path(local, model_id, device, dtype);
        }
        let files = fetch_pe_core(model_id, options)?;
        let weights = files
            .files
            .first()
            .map(|(_, path)| path.clone())
            .ok_or_else(|| ModelError::NotFound {
                model: model_id.into(),
                reason: "no weights file".into(),
            })?;
        tracing::info!(model = model_id, origin = files.origin, "loading PE-Core");
        Self::from_path(&weights, model_id, device, dtype)
    }

    /// A directory or a weights file (see `pe_core::checkpoint_paths`).
    pub fn from_path(
        path: &Path,
        model_id: &str,
        device: Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let model = PeCoreClip::from_path(path, dtype, &device, model_id)?;
        if model.text().is_none() {
            tracing::warn!(
                model = model_id,
                "vision-only PE-Core checkpoint: frames are embedded, but text queries cannot \
                 search the visual vectors"
            );
        }
        let config = model.config();
        Ok(Self {
            tokenizer: ClipTokenizer::new()?,
            name: model_id.to_string(),
            revision: format!(
                "pe-core:{}:{}x{}:{}",
                model_id.rsplit('/').next().unwrap_or(model_id),
                config.vision.image_size,
                config.vision.depth,
                config.embed_dim
            ),
            model,
            device,
            dtype,
        })
    }

    pub fn model(&self) -> &PeCoreClip {
        &self.model
    }

    pub fn dimension(&self) -> usize {
        self.model.config().embed_dim
    }

    fn inference(&self, error: candle_core::Error) -> ModelError {
        error.into_model_error(&self.name)
    }

    /// Images (any size; squashed to the model's) → unit vectors.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        let size = self.model.config().vision.image_size;
        let mut vectors = Vec::with_capacity(images.len());
        for batch in images.chunks(VISION_BATCH) {
            let embedded = pixel_values(batch, size, self.dtype, &self.device)
                .and_then(|pixels| self.model.vision().forward(&pixels))
                .and_then(|embeddings| unit_rows(&embeddings))
                .map_err(|error| self.inference(error))?;
            vectors.extend(embedded);
        }
        Ok(vectors)
    }

    /// Texts → unit vectors in the image space.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let text_model = self
            .model
            .text()
            .ok_or_else(|| ModelError::UnsupportedConfig {
                model: self.name.clone(),
                field: "text".into(),
                reason: "this PE-Core checkpoint has no text tower (a timm vision-only file); use \
                     an open_clip (timm/PE-Core-*) or official (facebook/PE-Core-*) checkpoint"
                    .into(),
            })?;
        let context = text_model.config().context_length;
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(TEXT_BATCH) {
            let ids: Vec<Vec<u32>> = batch
                .iter()
                .map(|text| self.tokenizer.tokenize(text, context))
                .collect();
            let embedded = text_model
                .forward(&ids)
                .and_then(|embeddings| unit_rows(&embeddings))
                .map_err(|error| self.inference(error))?;
            vectors.extend(embedded);
        }
        Ok(vectors)
    }
}

/// Whether `model_id` names a PE-Core checkpoint (`facebook/PE-Core-*`, `timm/PE-Core-*`,
/// `timm/vit_pe_core_*`).
pub fn is_pe_core(model_id: &str) -> bool {
    let lower = model_id.to_ascii_lowercase();
    lower.contains("pe-core") || lower.contains("pe_core")
}

/// Find (and, online, download into the HF cache) a PE-Core checkpoint's files:
/// `<name>.pt` for the official `facebook/PE-Core-*` repositories, open_clip's files otherwise
/// (timm's vision-only repositories hold `model.safetensors`).
pub fn fetch_pe_core(model_id: &str, options: &HubOptions) -> Result<ModelFiles, ModelError> {
    let base = model_id.rsplit('/').next().unwrap_or(model_id);
    let official = format!("{base}.pt");
    if model_id.starts_with("facebook/") {
        resolve_model_dir(model_id, &[official.as_str()], &[], options)
    } else if base.starts_with("vit_pe_core") {
        resolve_model_dir(model_id, &["model.safetensors"], &["config.json"], options)
    } else {
        resolve_model_dir(
            model_id,
            &["open_clip_model.safetensors"],
            &["open_clip_config.json"],
            options,
        )
    }
}

/// `[N, D]` → N L2-normalised rows.
fn unit_rows(embeddings: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let rows = embeddings.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|mut row| {
            let norm = row.iter().map(|value| value * value).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|value| *value /= norm);
            }
            row
        })
        .collect())
}

/// A decoded frame as an image.
pub fn frame_image(frame: &Frame) -> Result<RgbImage, ModelError> {
    RgbImage::new(
        frame.width as usize,
        frame.height as usize,
        frame.rgb.clone(),
    )
    .map_err(|reason| ModelError::Inference {
        model: "pe-core".into(),
        reason: format!("frame at {} ms: {reason}", frame.pts_ms),
    })
}

impl VisualEmbedder for PeCoreEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn revision(&self) -> &str {
        &self.revision
    }

    fn dimension(&self) -> usize {
        self.model.config().embed_dim
    }

    fn embed_frames(&self, frames: &[Frame]) -> Result<Vec<Vec<f32>>, ModelError> {
        let images = frames
            .iter()
            .map(frame_image)
            .collect::<Result<Vec<_>, _>>()?;
        self.embed_images(&images)
    }
}

/// PE-Core's text tower as a `TextEmbedder`: queries against the `visual`/`region` vectors.
#[derive(Debug, Clone)]
pub struct PeCoreTextEmbedder(pub Arc<PeCoreEmbedder>);

impl TextEmbedder for PeCoreTextEmbedder {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn revision(&self) -> &str {
        &self.0.revision
    }

    fn dimension(&self) -> usize {
        self.0.dimension()
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.0.embed_texts(texts)
    }
}
