//! PerceptionLM (Cho et al., "PerceptionLM: Open-Access Data and Models for Detailed Visual
//! Understanding", 2025; transformers `PerceptionLMForConditionalGeneration`): the Perception
//! Encoder tower, the 2×2-pooling projector, and the Llama 3 decoder reading the projected
//! tiles/frames spliced over the `<|image|>`/`<|video|>` placeholders of the prompt.
//!
//! Generation is batched (left padding, pad-aware masks), prefills the long visual prefix in
//! chunks, keeps a KV cache, and decodes greedily or with temperature/top-p sampling.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;
use vidx_core::ModelError;

use crate::hub::ModelFiles;
use crate::models::llama::{Llama, LlamaCache, LlamaConfig, Outputs, argmax};
use crate::models::perception_encoder::{
    PeVisionConfig, PeVisionTower, PlmProjector, TimmVisionConfig,
};
use crate::processor::ProcessorConfig;

/// The system prompt of PLM's chat template.
pub const SYSTEM_PROMPT: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

/// A resolved `config.json` of a PerceptionLM checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PlmConfig {
    pub vision: PeVisionConfig,
    pub text: LlamaConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub pooling_ratio: usize,
}

impl PlmConfig {
    pub fn from_json(text: &str, model: &str) -> std::result::Result<Self, ModelError> {
        let unsupported = |field: &str, reason: String| ModelError::UnsupportedConfig {
            model: model.into(),
            field: field.into(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| unsupported("*", error.to_string()))?;
        match value.get("model_type").and_then(|kind| kind.as_str()) {
            Some("perception_lm") => {}
            other => {
                return Err(unsupported(
                    "model_type",
                    format!("{other:?}: not a PerceptionLM checkpoint (perception_lm)"),
                ));
            }
        }
        let vision_value = value
            .get("vision_config")
            .ok_or_else(|| unsupported("vision_config", "missing".into()))?;
        let timm: TimmVisionConfig = serde_json::from_value(vision_value.clone())
            .map_err(|error| unsupported("vision_config", error.to_string()))?;
        let vision = PeVisionConfig::resolve(&timm, model)?;
        if let Some(use_cls) = value.get("vision_use_cls_token").and_then(|v| v.as_bool())
            && use_cls != vision.class_token
        {
            return Err(unsupported(
                "vision_use_cls_token",
                format!(
                    "{use_cls} disagrees with the tower ({} a CLS token)",
                    if vision.class_token { "has" } else { "has no" }
                ),
            ));
        }
        let text_value = value
            .get("text_config")
            .ok_or_else(|| unsupported("text_config", "missing".into()))?;
        let tie = value.get("tie_word_embeddings").and_then(|v| v.as_bool());
        let text = LlamaConfig::from_json(text_value, tie, model)?;
        let token = |field: &str, default: u32| -> std::result::Result<u32, ModelError> {
            match value.get(field) {
                None => Ok(default),
                Some(id) => id
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .filter(|id| (*id as usize) < text.vocab_size)
                    .ok_or_else(|| unsupported(field, format!("`{id}` is not a token id"))),
            }
        };
        let pooling_ratio = value
            .get("projector_pooling_ratio")
            .and_then(|v| v.as_u64())
            .unwrap_or(1) as usize;
        if pooling_ratio == 0 || !vision.grid().is_multiple_of(pooling_ratio) {
            return Err(unsupported(
                "projector_pooling_ratio",
                format!(
                    "{pooling_ratio} does not divide the {} patch grid",
                    vision.grid()
                ),
            ));
        }
        Ok(Self {
            image_token_id: token("image_token_id", 128_002)?,
            video_token_id: token("video_token_id", 128_003)?,
            vision,
            text,
            pooling_ratio,
        })
    }

    /// Visual tokens per tile or frame after pooling (256 at 448 px).
    pub fn tokens_per_tile(&self) -> usize {
        let side = self.vision.grid() / self.pooling_ratio;
        side * side
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Temperature, then nucleus (top-p) sampling from a seeded generator.
    TopP {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation of a row ends at the first of these (not included in the output).
    pub stop_tokens: Vec<u32>,
    /// Prompt positions per prefill step (bounds the attention scores' memory).
    pub prefill_chunk: usize,
}

/// One prompt: token ids with placeholders, and the visual tokens `[placeholders, hidden]`
/// that replace them in order.
pub struct PlmInput {
    pub ids: Vec<u32>,
    pub visual: Option<Tensor>,
}

/// One row's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    /// Ended on a stop token (otherwise on `max_new_tokens`).
    pub stopped: bool,
    pub prompt_tokens: usize,
}

/// A prefilled batch: the KV cache, each row's left padding and prompt length, and the
/// logits `[B][V]` of each row's last prompt position.
pub struct Prefilled {
    pub logits: Vec<Vec<f32>>,
    pub cache: LlamaCache,
    pub padding: Vec<usize>,
    pub lengths: Vec<usize>,
}

/// Counters from one `generate` call, for benchmarks and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerateStats {
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

pub struct PerceptionLm {
    config: PlmConfig,
    vision: PeVisionTower,
    projector: PlmProjector,
    llm: Llama,
}

impl PerceptionLm {
    /// Build from a `VarBuilder` over the checkpoint (names as in transformers' layout).
    pub fn new(config: PlmConfig, vb: VarBuilder) -> Result<Self> {
        let vision = PeVisionTower::load(&config.vision, vb.pp("model.vision_tower.timm_model"))?;
        let projector = PlmProjector::load(
            config.vision.embed_dim,
            config.text.hidden_size,
            config.pooling_ratio,
            vb.pp("model.multi_modal_projector"),
        )?;
        let llm = Llama::load(
            &config.text,
            vb.pp("model.language_model"),
            vb.pp("lm_head"),
        )?;
        Ok(Self {
            config,
            vision,
            projector,
            llm,
        })
    }

    pub fn config(&self) -> &PlmConfig {
        &self.config
    }

    pub fn llm(&self) -> &Llama {
        &self.llm
    }

    pub fn device(&self) -> &Device {
        self.llm.device()
    }

    pub fn dtype(&self) -> DType {
        self.llm.dtype()
    }

    /// Projected visual tokens `[N, tokens_per_tile, hidden]` for normalised pixels
    /// `[N, 3, S, S]`, `batch` tiles/frames at a time through the tower.
    pub fn visual_tokens(&self, pixels: &Tensor, batch: usize) -> Result<Tensor> {
        let count = pixels.dim(0)?;
        let batch = batch.max(1);
        let mut parts = Vec::with_capacity(count.div_ceil(batch));
        for start in (0..count).step_by(batch) {
            let chunk = pixels.narrow(0, start, batch.min(count - start))?;
            let features = self.vision.patch_features(&chunk.to_dtype(self.dtype())?)?;
            parts.push(self.projector.forward(&features)?);
        }
        Tensor::cat(&parts, 0)
    }

    /// Prompt embeddings `[L, hidden]`: token embeddings with the placeholder positions
    /// replaced by `visual` rows in order.
    pub fn embed_prompt(&self, input: &PlmInput) -> Result<Tensor> {
        let ids = Tensor::new(input.ids.as_slice(), self.device())?;
        let text = self.llm.embed(&ids)?;
        let placeholder =
            |id: u32| id == self.config.image_token_id || id == self.config.video_token_id;
        let slots = input.ids.iter().filter(|id| placeholder(**id)).count();
        let visual = match &input.visual {
            Some(visual) => visual
                .reshape(((), self.config.text.hidden_size))?
                .to_dtype(text.dtype())?,
            None if slots == 0 => return Ok(text),
            None => candle_core::bail!("{slots} visual placeholders but no visual input"),
        };
        if visual.dim(0)? != slots {
            candle_core::bail!(
                "{slots} visual placeholders in the prompt for {} visual tokens",
                visual.dim(0)?
            );
        }
        // Alternate runs of text and placeholders.
        let mut parts = Vec::new();
        let (mut position, mut used) = (0, 0);
        while position < input.ids.len() {
            let is_visual = placeholder(input.ids[position]);
            let run = input.ids[position..]
                .iter()
                .take_while(|id| placeholder(**id) == is_visual)
                .count();
            if is_visual {
                parts.push(visual.narrow(0, used, run)?);
                used += run;
            } else {
                parts.push(text.narrow(0, position, run)?);
            }
            position += run;
        }
        Tensor::cat(&parts, 0)
    }

    /// Run a batch of prompts through the decoder (left-padded to the longest, `chunk`
    /// positions at a time) and return the cache with the logits of each row's last position.
    pub fn prefill(&self, inputs: &[PlmInput], chunk: usize, capacity: usize) -> Result<Prefilled> {
        let embeds = inputs
            .iter()
            .map(|input| self.embed_prompt(input))
            .collect::<Result<Vec<_>>>()?;
        let lengths = embeds
            .iter()
            .map(|embed| embed.dim(0))
            .collect::<Result<Vec<_>>>()?;
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if longest == 0 {
            candle_core::bail!("empty prompt");
        }
        let padding: Vec<usize> = lengths.iter().map(|length| longest - length).collect();
        let hidden_size = self.config.text.hidden_size;
        let rows = embeds
            .iter()
            .zip(&padding)
            .map(|(embed, pad)| {
                if *pad == 0 {
                    Ok(embed.clone())
                } else {
                    let zeros = Tensor::zeros((*pad, hidden_size), embed.dtype(), embed.device())?;
                    Tensor::cat(&[&zeros, embed], 0)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = Tensor::stack(&rows, 0)?;
        let mut cache = self.llm.new_cache(longest + capacity);
        let chunk = chunk.max(1);
        let mut last_hidden = None;
        for start in (0..longest).step_by(chunk) {
            let length = chunk.min(longest - start);
            // Only the last position of the last chunk is read (the first token's logits).
            let outputs = if start + length == longest {
                Outputs::Last
            } else {
                Outputs::None
            };
            let hidden = self.llm.forward_outputs(
                &batch.narrow(1, start, length)?.contiguous()?,
                &mut cache,
                &padding,
                outputs,
            )?;
            if let Some(hidden) = hidden {
                // Contiguous: a GPU matmul (the lm_head) refuses a strided [B, hidden] view.
                last_hidden = Some(hidden.i((.., 0, ..))?.contiguous()?);
            }
        }
        let Some(last_hidden) = last_hidden else {
            candle_core::bail!("empty prompt");
        };
        Ok(Prefilled {
            logits: self.llm.logits(&last_hidden)?.to_vec2::<f32>()?,
            cache,
            padding,
            lengths,
        })
    }

    /// Generate for a batch of prompts at once.
    pub fn generate(
        &self,
        inputs: &[PlmInput],
        options: &GenerateOptions,
    ) -> Result<(Vec<Generated>, GenerateStats)> {
        let mut stats = GenerateStats::default();
        if inputs.is_empty() {
            return Ok((Vec::new(), stats));
        }
        let started = std::time::Instant::now();
        let Prefilled {
            mut logits,
            mut cache,
            padding,
            lengths,
        } = self.prefill(inputs, options.prefill_chunk, options.max_new_tokens)?;
        stats.prefill_tokens = lengths.iter().sum();
        stats.prefill_secs = started.elapsed().as_secs_f64();

        let decode_started = std::time::Instant::now();
        let mut sampler = Sampler::new(options.sampling);
        let mut outputs: Vec<Generated> = lengths
            .iter()
            .map(|length| Generated {
                tokens: Vec::new(),
                stopped: false,
                prompt_tokens: *length,
            })
            .collect();
        let filler = options
            .stop_tokens
            .first()
            .copied()
            .or(self.config.text.bos_token_id)
            .unwrap_or(0);
        for step in 0..options.max_new_tokens {
            let mut next = Vec::with_capacity(outputs.len());
            for (output, row) in outputs.iter_mut().zip(&logits) {
                if output.stopped {
                    next.push(filler);
                    continue;
                }
                let token = sampler.next(row);
                if options.stop_tokens.contains(&token) {
                    output.stopped = true;
                } else {
                    output.tokens.push(token);
                    stats.decode_tokens += 1;
                }
                next.push(token);
            }
            let all_done = outputs.iter().all(|output| output.stopped);
            if all_done || step + 1 == options.max_new_tokens {
                break;
            }
            let ids = Tensor::from_vec(next, (outputs.len(), 1), self.device())?;
            let hidden = self
                .llm
                .forward(&self.llm.embed(&ids)?, &mut cache, &padding)?;
            logits = self.llm.logits(&hidden.i((.., 0, ..))?)?.to_vec2::<f32>()?;
        }
        stats.decode_secs = decode_started.elapsed().as_secs_f64();
        Ok((outputs, stats))
    }
}

/// Token choice from logits: argmax, or temperature + top-p with a small seeded generator
/// (SplitMix64) so runs repeat.
struct Sampler {
    sampling: Sampling,
    state: u64,
}

impl Sampler {
    fn new(sampling: Sampling) -> Self {
        let state = match sampling {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self { sampling, state }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self, logits: &[f32]) -> u32 {
        let (temperature, top_p) = match self.sampling {
            Sampling::TopP {
                temperature, top_p, ..
            } if temperature > 0.0 => (temperature, top_p),
            _ => return argmax(logits),
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut weighted: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(id, logit)| (id as u32, ((*logit as f64 - max) / temperature).exp()))
            .collect();
        weighted.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = weighted.iter().map(|(_, weight)| weight).sum();
        let mut kept = 0.0;
        let mut cut = weighted.len();
        for (index, (_, weight)) in weighted.iter().enumerate() {
            kept += weight / total;
            if kept >= top_p {
                cut = index + 1;
                break;
            }
        }
        weighted.truncate(cut.max(1));
        let kept_total: f64 = weighted.iter().map(|(_, weight)| weight).sum();
        let mut target = self.uniform() * kept_total;
        for (id, weight) in &weighted {
            if target < *weight {
                return *id;
            }
            target -= weight;
        }
        weighted.last().map(|(id, _)| *id).unwrap_or(0)
    }
}

/// The tokenizer and chat template of a PLM checkpoint.
pub struct PlmPrompter {
    tokenizer: Tokenizer,
    image_token: String,
    video_token: String,
    image_token_id: u32,
    video_token_id: u32,
    tokens_per_tile: usize,
    bos: String,
}

/// What a prompt shows the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    None,
    /// An image as this many tiles (thumbnail included).
    Image {
        tiles: usize,
    },
    /// A video of this many frames.
    Video {
        frames: usize,
    },
}

impl PlmPrompter {
    pub fn new(
        tokenizer: Tokenizer,
        config: &PlmConfig,
        model: &str,
    ) -> std::result::Result<Self, ModelError> {
        let name = |id: u32, field: &str| {
            tokenizer
                .id_to_token(id)
                .ok_or_else(|| ModelError::UnsupportedConfig {
                    model: model.into(),
                    field: field.into(),
                    reason: format!("token {id} is not in tokenizer.json"),
                })
        };
        let bos = match config.text.bos_token_id {
            Some(id) => name(id, "text_config.bos_token_id")?,
            None => String::new(),
        };
        Ok(Self {
            image_token: name(config.image_token_id, "image_token_id")?,
            video_token: name(config.video_token_id, "video_token_id")?,
            image_token_id: config.image_token_id,
            video_token_id: config.video_token_id,
            tokens_per_tile: config.tokens_per_tile(),
            bos,
            tokenizer,
        })
    }

    pub fn from_file(
        path: &Path,
        config: &PlmConfig,
        model: &str,
    ) -> std::result::Result<Self, ModelError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|error| ModelError::Load {
            model: model.into(),
            reason: format!("{}: {error}", path.display()),
        })?;
        Self::new(tokenizer, config, model)
    }

    /// The chat-template text of one user turn (PLM's `conv_plm_sft`): system prompt, the
    /// placeholder, the user text, the assistant header.
    pub fn chat_text(&self, media: Media, user: &str) -> String {
        let placeholder = match media {
            Media::None => "",
            Media::Image { .. } => self.image_token.as_str(),
            Media::Video { .. } => self.video_token.as_str(),
        };
        format!(
            "{bos}<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM_PROMPT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{placeholder}{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            bos = self.bos
        )
    }

    /// Token ids of the chat prompt with the placeholder expanded to one id per visual token.
    pub fn encode(&self, media: Media, user: &str) -> std::result::Result<Vec<u32>, String> {
        let text = self.chat_text(media, user);
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|error| error.to_string())?;
        let (placeholder, copies) = match media {
            Media::None => return Ok(encoding.get_ids().to_vec()),
            Media::Image { tiles } => (self.image_token_id, tiles * self.tokens_per_tile),
            Media::Video { frames } => (self.video_token_id, frames * self.tokens_per_tile),
        };
        let mut ids = Vec::with_capacity(encoding.len() + copies);
        let mut expanded = false;
        for id in encoding.get_ids() {
            if *id == placeholder && !expanded {
                ids.extend(std::iter::repeat_n(placeholder, copies));
                expanded = true;
            } else {
                ids.push(*id);
            }
        }
        if !expanded {
            return Err("the tokenizer split the visual placeholder".into());
        }
        Ok(ids)
    }

    /// Text of generated ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|error| error.to_string())
    }
}

/// Everything needed to run PLM from a checkpoint directory.
pub struct PlmBundle {
    pub model: PerceptionLm,
    pub prompter: PlmPrompter,
    pub processor: ProcessorConfig,
}

/// Files of a checkpoint: required, then optional.
pub const PLM_REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json"];
pub const PLM_OPTIONAL_FILES: &[&str] = &[
    "model.safetensors",
    "model.safetensors.index.json",
    "processor_config.json",
    "preprocessor_config.json",
    "generation_config.json",
];

impl PlmBundle {
    /// Find the checkpoint (local dir, HF cache, hub; shards too) and load it.
    pub fn from_hub(
        model_id: &str,
        options: &crate::hub::HubOptions,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, ModelError> {
        let files = fetch_files(model_id, options)?;
        Self::load(&files, device, dtype)
    }

    /// Load a checkpoint found by `hub::resolve_model_dir` (shards listed by
    /// `model.safetensors.index.json` must sit next to it) in `dtype` on `device`.
    pub fn load(
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, ModelError> {
        let model_id = files.model_id.as_str();
        if device.is_cpu() && dtype == DType::BF16 {
            return Err(ModelError::UnsupportedConfig {
                model: model_id.into(),
                field: "models.dtype".into(),
                reason: "bf16 needs a GPU (candle's CPU matmul has no bf16); use f32 or f16 on cpu"
                    .into(),
            });
        }
        let load_error = |reason: String| ModelError::Load {
            model: model_id.into(),
            reason,
        };
        let config_path = files.require("config.json")?;
        let config_text = std::fs::read_to_string(config_path)
            .map_err(|error| load_error(format!("{}: {error}", config_path.display())))?;
        let config = PlmConfig::from_json(&config_text, model_id)?;
        let weights = weight_files(files)?;
        let vb = mmaped(&weights, dtype, device).map_err(|error| load_error(error.to_string()))?;
        let model = PerceptionLm::new(config.clone(), vb).map_err(|error| {
            load_error(format!(
                "{error} (is this a PerceptionLM checkpoint in the transformers layout?)"
            ))
        })?;
        let prompter = PlmPrompter::from_file(files.require("tokenizer.json")?, &config, model_id)?;
        let processor = match files
            .path("processor_config.json")
            .or_else(|| files.path("preprocessor_config.json"))
        {
            Some(path) => ProcessorConfig::from_file(path, config.vision.image_size, model_id)?,
            None => ProcessorConfig::defaults(config.vision.image_size),
        };
        Ok(Self {
            model,
            prompter,
            processor,
        })
    }
}

/// Resolve a checkpoint's files, downloading the shards named by its index when needed
/// (this is also `vidx model fetch`).
pub fn fetch_files(
    model_id: &str,
    options: &crate::hub::HubOptions,
) -> std::result::Result<ModelFiles, ModelError> {
    let mut files =
        crate::hub::resolve_model_dir(model_id, PLM_REQUIRED_FILES, PLM_OPTIONAL_FILES, options)?;
    if files.path("model.safetensors").is_none()
        && files.path("model.safetensors.index.json").is_none()
    {
        return Err(ModelError::NotFound {
            model: model_id.into(),
            reason: format!(
                "no model.safetensors or model.safetensors.index.json ({})",
                files.origin
            ),
        });
    }
    if let Some(index) = files.path("model.safetensors.index.json") {
        let shards = shard_names(index, model_id)?;
        let names: Vec<&str> = shards.iter().map(String::as_str).collect();
        let shard_files = crate::hub::resolve_model_dir(model_id, &names, &[], options)?;
        files.files.extend(shard_files.files);
    }
    Ok(files)
}

fn shard_names(index: &Path, model_id: &str) -> std::result::Result<Vec<String>, ModelError> {
    let load_error = |reason: String| ModelError::Load {
        model: model_id.into(),
        reason: format!("{}: {reason}", index.display()),
    };
    let text = std::fs::read_to_string(index).map_err(|error| load_error(error.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| load_error(error.to_string()))?;
    let mut shards: Vec<String> = value
        .get("weight_map")
        .and_then(|map| map.as_object())
        .map(|map| {
            map.values()
                .filter_map(|file| file.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(load_error("lists no shards".into()));
    }
    if let Some(bad) = shards
        .iter()
        .find(|shard| shard.contains('/') || shard.contains('\\') || shard.starts_with('.'))
    {
        return Err(load_error(format!(
            "shard name `{bad}` is not a plain file name"
        )));
    }
    Ok(shards)
}

/// The safetensors files of a checkpoint: the shards of the index, or the single file.
pub fn weight_files(
    files: &ModelFiles,
) -> std::result::Result<Vec<std::path::PathBuf>, ModelError> {
    let model_id = files.model_id.as_str();
    if let Some(index) = files.path("model.safetensors.index.json") {
        let shards = shard_names(index, model_id)?;
        return shards
            .iter()
            .map(|shard| {
                files
                    .path(shard)
                    .map(Path::to_path_buf)
                    .or_else(|| {
                        let sibling = index.parent()?.join(shard);
                        sibling.is_file().then_some(sibling)
                    })
                    .ok_or_else(|| ModelError::NotFound {
                        model: model_id.into(),
                        reason: format!("shard {shard} missing ({})", files.origin),
                    })
            })
            .collect();
    }
    Ok(vec![files.require("model.safetensors")?.to_path_buf()])
}

#[allow(unsafe_code)]
pub(crate) fn mmaped(
    paths: &[std::path::PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    // SAFETY: the weight files are opened read-only and are not modified while mapped;
    // this is how candle loads checkpoints larger than memory.
    unsafe { VarBuilder::from_mmaped_safetensors(paths, dtype, device) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_config() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/plm/cls/config.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    fn error_field(value: &serde_json::Value) -> String {
        match PlmConfig::from_json(&value.to_string(), "test") {
            Err(ModelError::UnsupportedConfig { field, .. }) => field,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_published_and_transformers5_layouts() {
        let config = PlmConfig::from_json(&fixture_config().to_string(), "test");
        let config = config.expect("cls config");
        assert_eq!(config.tokens_per_tile(), 4);
        assert!(config.text.tie_word_embeddings);
        assert_eq!(config.text.eos_token_ids, vec![385, 393]);
        let scaling = config.text.rope_scaling.expect("llama3 scaling");
        assert_eq!(scaling.factor, 32.0);
        // transformers 5: rope_theta inside rope_parameters.
        let mut value = fixture_config();
        let text = &mut value["text_config"];
        text.as_object_mut().map(|o| o.remove("rope_scaling"));
        text.as_object_mut().map(|o| o.remove("rope_theta"));
        text["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 123.0});
        let config = PlmConfig::from_json(&value.to_string(), "test").expect("rope_parameters");
        assert_eq!(config.text.rope_theta, 123.0);
        assert!(config.text.rope_scaling.is_none());
    }

    #[test]
    fn unsupported_values_name_their_field() {
        let mut value = fixture_config();
        value["model_type"] = "llava".into();
        assert_eq!(error_field(&value), "model_type");

        let mut value = fixture_config();
        value["text_config"]["rope_scaling"]["rope_type"] = "yarn".into();
        assert_eq!(error_field(&value), "text_config.rope_scaling.rope_type");

        let mut value = fixture_config();
        value["vision_use_cls_token"] = false.into();
        assert_eq!(error_field(&value), "vision_use_cls_token");

        let mut value = fixture_config();
        value["text_config"]["hidden_act"] = "gelu".into();
        assert_eq!(error_field(&value), "text_config.hidden_act");

        let mut value = fixture_config();
        value["video_token_id"] = 100_000.into();
        assert_eq!(error_field(&value), "video_token_id");

        let mut value = fixture_config();
        value["projector_pooling_ratio"] = 3.into();
        assert_eq!(error_field(&value), "projector_pooling_ratio");

        let mut value = fixture_config();
        value["vision_config"]["model_args"]["use_post_transformer_norm"] = true.into();
        assert_eq!(
            error_field(&value),
            "vision_config.model_args.use_post_transformer_norm"
        );
    }

    #[test]
    fn values_that_would_be_guessed_are_refused() {
        // No RoPE base at all: not llama's 10000 in silence.
        let mut value = fixture_config();
        value["text_config"]
            .as_object_mut()
            .map(|o| o.remove("rope_theta"));
        assert_eq!(error_field(&value), "text_config.rope_theta");
        // No reference grid while img_size (56: a 4x4 grid) differs from the architecture's
        // (336: 24x24): timm would rescale RoPE.
        let mut value = fixture_config();
        value["vision_config"]["model_args"]
            .as_object_mut()
            .map(|o| o.remove("ref_feat_shape"));
        assert_eq!(
            error_field(&value),
            "vision_config.model_args.ref_feat_shape"
        );
        // Absent, but the architecture's own grid: nothing is rescaled.
        let mut value = fixture_config();
        value["vision_config"]["model_args"]
            .as_object_mut()
            .map(|o| o.remove("ref_feat_shape"));
        value["vision_config"]["model_args"]["img_size"] = serde_json::json!([336, 336]);
        assert!(PlmConfig::from_json(&value.to_string(), "test").is_ok());
    }
}
