//! PE-Core as a CLIP model (Bolya et al., "Perception Encoder: The best visual embeddings are
//! not at the output of the network", 2025; checkpoints `facebook/PE-Core-*` (torch pickles),
//! `timm/PE-Core-*` (open_clip) and `timm/vit_pe_core_*` (vision only)).
//!
//! - Vision: the PE tower of `perception_encoder` at full depth without LayerScale, then
//!   `ln_post` over all tokens, attention pooling (a learned probe queries an 8-head attention
//!   over the tokens, then `x + MLP(LN(x))`, token 0) and the projection to the shared space.
//! - Text: token + learned position embeddings, pre-LN blocks with a causal mask, `ln_final`,
//!   the hidden state at the end-of-text position (the largest id), times `text_projection`.
//! - `logit_scale` (log of the temperature) sits at the root.
//!
//! Every layout is read into one naming (open_clip's: `visual.trunk.*` in timm names, `text.*`,
//! `logit_scale`). Shapes come from the weights; heads follow PE-Core's rule (head dim 64;
//! the gigantic tower, width 1536, has 16 heads of 96) unless `open_clip_config.json` names
//! them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, LayerNormConfig, Linear, VarBuilder};
use serde::Deserialize;
use vidx_core::ModelError;

use super::perception_encoder::{PeVisionConfig, PeVisionTower};

const LAYER_NORM_EPS: f64 = 1e-5;
/// PE-Core's attention pooling always has 8 heads (`attn_pool_num_heads`).
const POOL_HEADS: usize = 8;

/// Where the checkpoint's names came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeCoreLayout {
    /// open_clip (`timm/PE-Core-*`): `visual.trunk.*`, `text.*`, `logit_scale`.
    OpenClip,
    /// timm vision only (`timm/vit_pe_core_*`): the trunk's names at the root.
    TimmVision,
    /// perception_models (`facebook/PE-Core-*/*.pt`): `visual.conv1`, `visual.transformer.*`,
    /// text keys at the root.
    Official,
}

/// The text tower's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PeTextConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub context_length: usize,
    pub vocab_size: usize,
}

/// The resolved model.
#[derive(Debug, Clone, PartialEq)]
pub struct PeCoreConfig {
    pub vision: PeVisionConfig,
    /// The shared embedding dimension.
    pub embed_dim: usize,
    pub text: Option<PeTextConfig>,
    pub layout: PeCoreLayout,
}

/// The parts of open_clip's `open_clip_config.json` that matter here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenClipConfig {
    #[serde(default)]
    pub model_cfg: OpenClipModelConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenClipModelConfig {
    pub embed_dim: Option<usize>,
    #[serde(default)]
    pub vision_cfg: OpenClipVisionConfig,
    #[serde(default)]
    pub text_cfg: OpenClipTextConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenClipVisionConfig {
    pub image_size: Option<usize>,
    pub timm_model_name: Option<String>,
    pub timm_pool: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenClipTextConfig {
    pub context_length: Option<usize>,
    pub width: Option<usize>,
    pub heads: Option<usize>,
    pub layers: Option<usize>,
    pub pool_type: Option<String>,
    pub no_causal_mask: Option<bool>,
}

/// Read a checkpoint file into a `VarBuilder` in open_clip naming.
pub fn open_weights(
    path: &Path,
    dtype: DType,
    device: &Device,
    model: &str,
) -> std::result::Result<(VarBuilder<'static>, PeCoreLayout), ModelError> {
    let load = |reason: String| ModelError::Load {
        model: model.into(),
        reason: format!("{}: {reason}", path.display()),
    };
    let is_safetensors = path
        .extension()
        .is_some_and(|extension| extension == "safetensors");
    if is_safetensors {
        let vb = super::perception_lm::mmaped(&[path.to_path_buf()], dtype, device)
            .map_err(|error| load(error.to_string()))?;
        if vb.contains_tensor("visual.trunk.patch_embed.proj.weight") {
            return Ok((vb, PeCoreLayout::OpenClip));
        }
        if vb.contains_tensor("patch_embed.proj.weight") {
            return Ok((vb, PeCoreLayout::TimmVision));
        }
        return Err(load(
            "neither open_clip (`visual.trunk.*`) nor timm (`patch_embed.*`) PE-Core names".into(),
        ));
    }
    // A torch pickle: the official layout, or open_clip's `open_clip_pytorch_model.bin`.
    let mut tensors = Vec::new();
    for key in [None, Some("state_dict"), Some("model")] {
        tensors = candle_core::pickle::read_all_with_key(path, key)
            .map_err(|error| load(format!("torch pickle: {error}")))
            .unwrap_or_default();
        if !tensors.is_empty() {
            break;
        }
    }
    if tensors.is_empty() {
        return Err(load("no tensors in the torch pickle".into()));
    }
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, tensor)| (name.trim_start_matches("module.").to_string(), tensor))
        .collect();
    let (tensors, layout) = if tensors.contains_key("visual.conv1.weight") {
        (
            official_to_open_clip(tensors).map_err(|error| load(error.to_string()))?,
            PeCoreLayout::Official,
        )
    } else if tensors.contains_key("visual.trunk.patch_embed.proj.weight") {
        (tensors, PeCoreLayout::OpenClip)
    } else if tensors.contains_key("patch_embed.proj.weight") {
        (tensors, PeCoreLayout::TimmVision)
    } else {
        return Err(load("no PE-Core names in the torch pickle".into()));
    };
    Ok((VarBuilder::from_tensors(tensors, dtype, device), layout))
}

/// perception_models names → open_clip names (the inverse of what timm's `_convert_pe` reads):
/// `conv1` → `patch_embed.proj`, `class_embedding [W]` → `cls_token [1,1,W]`,
/// `positional_embedding [N,W]` → `pos_embed [1,N,W]`, `ln_pre/ln_post` → `norm_pre/norm`,
/// `resblocks.i.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}` →
/// `blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, the pool's `in_proj` split
/// 1/3 : 2/3 into `q` and `kv`, `proj [W,E]` → `head.weight [E,W]`; text keys get `text.`.
fn official_to_open_clip(tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(tensors.len() + 2);
    for (name, tensor) in tensors {
        let Some(visual) = name.strip_prefix("visual.") else {
            let target = if name == "logit_scale" {
                name
            } else {
                format!("text.{name}")
            };
            out.insert(target, tensor);
            continue;
        };
        let trunk = |key: &str| format!("visual.trunk.{key}");
        if let Some(pool) = visual.strip_prefix("attn_pool.") {
            if let Some(kind) = pool.strip_prefix("attn.in_proj_") {
                let third = tensor.dim(0)? / 3;
                out.insert(
                    trunk(&format!("attn_pool.q.{kind}")),
                    tensor.narrow(0, 0, third)?,
                );
                out.insert(
                    trunk(&format!("attn_pool.kv.{kind}")),
                    tensor.narrow(0, third, 2 * third)?,
                );
                continue;
            }
            let renamed = pool
                .replace("attn.out_proj.", "proj.")
                .replace("layernorm.", "norm.")
                .replace("mlp.c_fc.", "mlp.fc1.")
                .replace("mlp.c_proj.", "mlp.fc2.")
                .replace("probe", "latent");
            out.insert(trunk(&format!("attn_pool.{renamed}")), tensor);
            continue;
        }
        match visual {
            "proj" => {
                out.insert(trunk("head.weight"), tensor.t()?.contiguous()?);
            }
            "class_embedding" => {
                let width = tensor.elem_count();
                out.insert(trunk("cls_token"), tensor.reshape((1, 1, width))?);
            }
            "positional_embedding" => {
                out.insert(trunk("pos_embed"), tensor.unsqueeze(0)?);
            }
            _ => {
                let renamed = visual
                    .replace("conv1.", "patch_embed.proj.")
                    .replace("ln_pre.", "norm_pre.")
                    .replace("ln_post.", "norm.")
                    .replace("transformer.resblocks.", "blocks.")
                    .replace("attn.in_proj_", "attn.qkv.")
                    .replace("attn.out_proj.", "attn.proj.")
                    .replace(".ln_1.", ".norm1.")
                    .replace(".ln_2.", ".norm2.")
                    .replace("ls_1.gamma", "gamma_1")
                    .replace("ls_2.gamma", "gamma_2")
                    .replace("mlp.c_fc.", "mlp.fc1.")
                    .replace("mlp.c_proj.", "mlp.fc2.");
                out.insert(trunk(&renamed), tensor);
            }
        }
    }
    Ok(out)
}

fn count_layers(vb: &VarBuilder, prefix: &str, probe: &str) -> usize {
    (0..)
        .take_while(|index| vb.contains_tensor(&format!("{prefix}.{index}.{probe}")))
        .count()
}

impl PeCoreConfig {
    /// Shapes from the weights; heads and checks from `open_clip_config.json` when given.
    pub fn resolve(
        vision: &VarBuilder,
        text: Option<&VarBuilder>,
        layout: PeCoreLayout,
        open_clip: Option<&OpenClipConfig>,
        model: &str,
    ) -> std::result::Result<Self, ModelError> {
        let unsupported = |field: &str, reason: String| ModelError::UnsupportedConfig {
            model: model.into(),
            field: field.into(),
            reason,
        };
        let load = |error: candle_core::Error| ModelError::Load {
            model: model.into(),
            reason: error.to_string(),
        };
        let patch = vision
            .get_unchecked("patch_embed.proj.weight")
            .map_err(load)?;
        let (width, _, patch_size, _) = patch.dims4().map_err(load)?;
        let tokens = vision
            .get_unchecked("pos_embed")
            .map_err(load)?
            .dim(1)
            .map_err(load)?;
        let class_token = vision.contains_tensor("cls_token");
        let patches = tokens - usize::from(class_token);
        let grid = (patches as f64).sqrt().round() as usize;
        if grid * grid != patches {
            return Err(unsupported(
                "pos_embed",
                format!("{patches} patch positions are not a square grid"),
            ));
        }
        let depth = count_layers(vision, "blocks", "attn.qkv.weight");
        let num_heads = if width == 1536 { 16 } else { width / 64 };
        if num_heads == 0 || width % num_heads != 0 || (width / num_heads) % 4 != 0 {
            return Err(unsupported(
                "vision width",
                format!("width {width} does not split into PE-Core heads"),
            ));
        }
        if !vision.contains_tensor("attn_pool.latent") {
            return Err(unsupported(
                "attn_pool",
                "the checkpoint has no attention pooling: not a PE-Core CLIP tower (PE-Lang and \
                 PE-Spatial towers give no image embedding)"
                    .into(),
            ));
        }
        let head = vision.get_unchecked("head.weight").map_err(load)?;
        let embed_dim = head.dim(0).map_err(load)?;
        let vision_config = PeVisionConfig {
            embed_dim: width,
            depth,
            num_heads,
            patch_size,
            image_size: grid * patch_size,
            class_token,
        };
        let text_config = match text {
            Some(text) => {
                let embedding = text.get_unchecked("token_embedding.weight").map_err(load)?;
                let (vocab_size, text_width) = embedding.dims2().map_err(load)?;
                let context_length = text
                    .get_unchecked("positional_embedding")
                    .map_err(load)?
                    .dim(0)
                    .map_err(load)?;
                let projection = text.get_unchecked("text_projection").map_err(load)?;
                if projection.dims2().map_err(load)? != (text_width, embed_dim) {
                    return Err(unsupported(
                        "text_projection",
                        format!(
                            "shape {:?}, expected [{text_width}, {embed_dim}] (a raw matrix into \
                             the image embedding space)",
                            projection.dims()
                        ),
                    ));
                }
                let text_cfg = open_clip.map(|config| &config.model_cfg.text_cfg);
                let heads = text_cfg
                    .and_then(|config| config.heads)
                    .unwrap_or(text_width / 64);
                if heads == 0 || text_width % heads != 0 {
                    return Err(unsupported(
                        "text_cfg.heads",
                        format!("{heads} heads do not split width {text_width}"),
                    ));
                }
                Some(PeTextConfig {
                    width: text_width,
                    layers: count_layers(text, "transformer.resblocks", "attn.in_proj_weight"),
                    heads,
                    context_length,
                    vocab_size,
                })
            }
            None => None,
        };
        if let Some(config) = open_clip {
            let model_cfg = &config.model_cfg;
            let checks = [
                ("model_cfg.embed_dim", model_cfg.embed_dim, embed_dim),
                (
                    "model_cfg.vision_cfg.image_size",
                    model_cfg.vision_cfg.image_size,
                    vision_config.image_size,
                ),
                (
                    "model_cfg.text_cfg.context_length",
                    model_cfg.text_cfg.context_length,
                    text_config.as_ref().map_or(0, |text| text.context_length),
                ),
                (
                    "model_cfg.text_cfg.width",
                    model_cfg.text_cfg.width,
                    text_config.as_ref().map_or(0, |text| text.width),
                ),
                (
                    "model_cfg.text_cfg.layers",
                    model_cfg.text_cfg.layers,
                    text_config.as_ref().map_or(0, |text| text.layers),
                ),
            ];
            for (field, declared, found) in checks {
                if let Some(declared) = declared
                    && declared != found
                    && !(field.contains("text_cfg") && text_config.is_none())
                {
                    return Err(unsupported(
                        field,
                        format!("declares {declared}, the weights have {found}"),
                    ));
                }
            }
            if let Some(pool) = &model_cfg.vision_cfg.timm_pool
                && pool != "map"
            {
                return Err(unsupported(
                    "model_cfg.vision_cfg.timm_pool",
                    format!("`{pool}`: only PE-Core's attention pooling (`map`) is implemented"),
                ));
            }
            if let Some(pool) = &model_cfg.text_cfg.pool_type
                && pool != "argmax"
            {
                return Err(unsupported(
                    "model_cfg.text_cfg.pool_type",
                    format!("`{pool}`: only end-of-text pooling (`argmax`) is implemented"),
                ));
            }
            if model_cfg.text_cfg.no_causal_mask == Some(true) {
                return Err(unsupported(
                    "model_cfg.text_cfg.no_causal_mask",
                    "PE-Core's text tower is causal".into(),
                ));
            }
        }
        Ok(Self {
            vision: vision_config,
            embed_dim,
            text: text_config,
            layout,
        })
    }
}

fn layer_norm(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(
        dim,
        LayerNormConfig {
            eps: LAYER_NORM_EPS,
            ..Default::default()
        },
        vb,
    )
}

/// A linear layer whose bias is optional in the checkpoint.
fn linear_maybe_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if vb.contains_tensor("bias") {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// timm's `AttentionPoolLatent` with one latent and PE-Core's settings.
struct AttentionPool {
    latent: Tensor,
    q: Linear,
    kv: Linear,
    proj: Linear,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl AttentionPool {
    fn load(width: usize, vb: VarBuilder) -> Result<Self> {
        let mlp_hidden = vb.get_unchecked("mlp.fc1.weight")?.dim(0)?;
        Ok(Self {
            latent: vb.get((1, 1, width), "latent")?,
            q: candle_nn::linear(width, width, vb.pp("q"))?,
            kv: candle_nn::linear(width, 2 * width, vb.pp("kv"))?,
            proj: candle_nn::linear(width, width, vb.pp("proj"))?,
            norm: layer_norm(width, vb.pp("norm"))?,
            fc1: candle_nn::linear(width, mlp_hidden, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(mlp_hidden, width, vb.pp("mlp.fc2"))?,
            heads: POOL_HEADS,
        })
    }

    /// `[B, N, W]` → `[B, W]`.
    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (batch, count, width) = tokens.dims3()?;
        let head_dim = width / self.heads;
        let query = self
            .q
            .forward(&self.latent)?
            .reshape((1, self.heads, 1, head_dim))?
            .broadcast_as((batch, self.heads, 1, head_dim))?
            .contiguous()?;
        let kv = self
            .kv
            .forward(tokens)?
            .reshape((batch, count, 2, self.heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let key = kv.get(0)?.contiguous()?;
        let value = kv.get(1)?.contiguous()?;
        let scores = (query.matmul(&key.t()?)? * (head_dim as f64).powf(-0.5))?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let pooled = weights
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, 1, width))?;
        let pooled = self.proj.forward(&pooled)?;
        let mlp = self.fc2.forward(&crate::ops::gelu_erf(
            &self.fc1.forward(&self.norm.forward(&pooled)?)?,
        )?)?;
        (pooled + mlp)?.squeeze(1)
    }
}

/// The vision side: tower → `ln_post` → attention pooling → projection.
pub struct PeCoreVision {
    tower: PeVisionTower,
    norm: LayerNorm,
    pool: AttentionPool,
    head: Linear,
}

impl PeCoreVision {
    /// `vb` points at the timm trunk (`visual.trunk` in open_clip naming).
    pub fn load(config: &PeCoreConfig, vb: VarBuilder) -> Result<Self> {
        let width = config.vision.embed_dim;
        Ok(Self {
            tower: PeVisionTower::load(&config.vision, vb.clone())?,
            norm: layer_norm(width, vb.pp("norm"))?,
            pool: AttentionPool::load(width, vb.pp("attn_pool"))?,
            head: linear_maybe_bias(width, config.embed_dim, vb.pp("head"))?,
        })
    }

    /// The tokens after `ln_post`, before pooling: `[B, tokens, width]`.
    pub fn tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        self.norm.forward(&self.tower.forward(pixels)?)
    }

    /// `pixels` `[B, 3, S, S]` normalised → image embeddings `[B, embed_dim]` (unnormalised).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.head
            .forward(&self.pool.forward(&self.tokens(pixels)?)?)
    }
}

struct TextBlock {
    ln_1: LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

impl TextBlock {
    fn load(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let mlp_hidden = vb.get_unchecked("mlp.c_fc.weight")?.dim(0)?;
        let attn = vb.pp("attn");
        Ok(Self {
            ln_1: layer_norm(width, vb.pp("ln_1"))?,
            // `nn.MultiheadAttention` stores q, k, v stacked in `in_proj_weight`.
            in_proj: Linear::new(
                attn.get((3 * width, width), "in_proj_weight")?,
                Some(attn.get(3 * width, "in_proj_bias")?),
            ),
            out_proj: candle_nn::linear(width, width, attn.pp("out_proj"))?,
            ln_2: layer_norm(width, vb.pp("ln_2"))?,
            c_fc: candle_nn::linear(width, mlp_hidden, vb.pp("mlp.c_fc"))?,
            c_proj: candle_nn::linear(mlp_hidden, width, vb.pp("mlp.c_proj"))?,
            heads,
        })
    }

    fn forward(&self, hidden: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (batch, length, width) = hidden.dims3()?;
        let head_dim = width / self.heads;
        let qkv = self
            .in_proj
            .forward(&self.ln_1.forward(hidden)?)?
            .reshape((batch, length, 3, self.heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let query = qkv.get(0)?.contiguous()?;
        let key = qkv.get(1)?.contiguous()?;
        let value = qkv.get(2)?.contiguous()?;
        let scores = (query.matmul(&key.t()?)? * (head_dim as f64).powf(-0.5))?
            .broadcast_add(causal_mask)?;
        let attended = candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, length, width))?;
        let hidden = (hidden + self.out_proj.forward(&attended)?)?;
        let mlp = self.c_proj.forward(&crate::ops::gelu_erf(
            &self.c_fc.forward(&self.ln_2.forward(&hidden)?)?,
        )?)?;
        hidden + mlp
    }
}

/// The text side.
pub struct PeCoreText {
    config: PeTextConfig,
    token_embedding: Embedding,
    positional_embedding: Tensor,
    blocks: Vec<TextBlock>,
    ln_final: LayerNorm,
    projection: Tensor,
}

impl PeCoreText {
    /// `vb` points at the text tower (`text` in open_clip naming).
    pub fn load(config: &PeTextConfig, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        let width = config.width;
        Ok(Self {
            token_embedding: candle_nn::embedding(
                config.vocab_size,
                width,
                vb.pp("token_embedding"),
            )?,
            positional_embedding: vb.get((config.context_length, width), "positional_embedding")?,
            blocks: (0..config.layers)
                .map(|index| {
                    TextBlock::load(
                        width,
                        config.heads,
                        vb.pp(format!("transformer.resblocks.{index}")),
                    )
                })
                .collect::<Result<_>>()?,
            ln_final: layer_norm(width, vb.pp("ln_final"))?,
            projection: vb.get((width, embed_dim), "text_projection")?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &PeTextConfig {
        &self.config
    }

    /// Token ids `[T, context]` (start … end, zero-padded) → text embeddings `[T, embed_dim]`
    /// (unnormalised), pooled at each row's largest id: the end-of-text token.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let device = self.positional_embedding.device();
        let length = self.config.context_length;
        let mut flat = Vec::with_capacity(ids.len() * length);
        let mut end_positions = Vec::with_capacity(ids.len());
        for row in ids {
            if row.len() != length {
                candle_core::bail!(
                    "text: {} token ids, the context length is {length}",
                    row.len()
                );
            }
            if let Some(&bad) = row
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                candle_core::bail!(
                    "text: token id {bad} outside the vocabulary of {}",
                    self.config.vocab_size
                );
            }
            // argmax with the first maximum, as torch's argmax.
            let end = row.iter().enumerate().fold(
                0,
                |best, (index, &id)| if id > row[best] { index } else { best },
            );
            end_positions.push(end as u32);
            flat.extend_from_slice(row);
        }
        let ids = Tensor::from_vec(flat, (ids.len(), length), device)?;
        let mut hidden = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&self.positional_embedding)?;
        let causal_mask = causal_mask(length, hidden.dtype(), device)?;
        for block in &self.blocks {
            hidden = block.forward(&hidden, &causal_mask)?;
        }
        let hidden = self.ln_final.forward(&hidden)?;
        let rows = end_positions
            .iter()
            .enumerate()
            .map(|(row, &end)| hidden.i((row, end as usize)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)?.matmul(&self.projection)
    }
}

/// `[L, L]` additive mask: 0 on and below the diagonal, −∞ above.
fn causal_mask(length: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..length)
        .flat_map(|row| {
            (0..length).map(move |column| if column > row { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(values, (length, length), device)?.to_dtype(dtype)
}

/// PE-Core CLIP: both towers and the logit scale.
pub struct PeCoreClip {
    config: PeCoreConfig,
    vision: PeCoreVision,
    text: Option<PeCoreText>,
    logit_scale: Option<f32>,
}

impl PeCoreClip {
    /// `vb` in open_clip naming (see `open_weights`).
    pub fn load(
        vb: VarBuilder,
        layout: PeCoreLayout,
        open_clip: Option<&OpenClipConfig>,
        model: &str,
    ) -> std::result::Result<Self, ModelError> {
        let vision_vb = match layout {
            PeCoreLayout::TimmVision => vb.clone(),
            PeCoreLayout::OpenClip | PeCoreLayout::Official => vb.pp("visual.trunk"),
        };
        let text_vb = vb.pp("text");
        let has_text =
            layout != PeCoreLayout::TimmVision && text_vb.contains_tensor("token_embedding.weight");
        let config = PeCoreConfig::resolve(
            &vision_vb,
            has_text.then_some(&text_vb),
            layout,
            open_clip,
            model,
        )?;
        let load = |error: candle_core::Error| ModelError::Load {
            model: model.into(),
            reason: error.to_string(),
        };
        let vision = PeCoreVision::load(&config, vision_vb).map_err(load)?;
        let text = match &config.text {
            Some(text_config) => {
                Some(PeCoreText::load(text_config, config.embed_dim, text_vb).map_err(load)?)
            }
            None => None,
        };
        let logit_scale = if vb.contains_tensor("logit_scale") {
            let scale = vb.get_unchecked("logit_scale").map_err(load)?;
            Some(
                scale
                    .flatten_all()
                    .and_then(|scale| scale.to_dtype(DType::F32))
                    .and_then(|scale| scale.to_vec1::<f32>())
                    .map_err(load)?
                    .first()
                    .copied()
                    .unwrap_or(0.0),
            )
        } else {
            None
        };
        Ok(Self {
            config,
            vision,
            text,
            logit_scale,
        })
    }

    pub fn config(&self) -> &PeCoreConfig {
        &self.config
    }

    pub fn vision(&self) -> &PeCoreVision {
        &self.vision
    }

    pub fn text(&self) -> Option<&PeCoreText> {
        self.text.as_ref()
    }

    /// The raw `logit_scale` parameter (similarity logits are `exp(scale)·cos`).
    pub fn logit_scale(&self) -> Option<f32> {
        self.logit_scale
    }
}

/// The weight files vidx looks for in a PE-Core directory, in order.
pub const WEIGHT_FILES: [&str; 3] = [
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
];

/// The checkpoint in `path`: a weights file, or a directory holding one of `WEIGHT_FILES` or
/// a single official `*.pt`. `open_clip_config.json` beside it is read when present.
pub fn checkpoint_paths(
    path: &Path,
    model: &str,
) -> std::result::Result<(std::path::PathBuf, Option<OpenClipConfig>), ModelError> {
    let not_found = |reason: String| ModelError::NotFound {
        model: model.into(),
        reason,
    };
    let (directory, weights) = if path.is_file() {
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            path.to_path_buf(),
        )
    } else if path.is_dir() {
        let named = WEIGHT_FILES
            .iter()
            .map(|name| path.join(name))
            .find(|candidate| candidate.is_file());
        let weights = match named {
            Some(weights) => weights,
            None => {
                let mut pickles: Vec<_> = std::fs::read_dir(path)
                    .map_err(|error| not_found(format!("{}: {error}", path.display())))?
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|candidate| {
                        candidate
                            .extension()
                            .is_some_and(|extension| extension == "pt" || extension == "pth")
                    })
                    .collect();
                pickles.sort();
                match pickles.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(not_found(format!(
                            "{} holds none of {} and no *.pt checkpoint",
                            path.display(),
                            WEIGHT_FILES.join(", ")
                        )));
                    }
                    several => {
                        return Err(not_found(format!(
                            "{} holds {} *.pt files; name one",
                            path.display(),
                            several.len()
                        )));
                    }
                }
            }
        };
        (path.to_path_buf(), weights)
    } else {
        return Err(not_found(format!("{} does not exist", path.display())));
    };
    let config_path = directory.join("open_clip_config.json");
    let open_clip = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).map_err(|error| ModelError::Load {
            model: model.into(),
            reason: format!("{}: {error}", config_path.display()),
        })?;
        Some(
            serde_json::from_str(&text).map_err(|error| ModelError::Load {
                model: model.into(),
                reason: format!("{}: {error}", config_path.display()),
            })?,
        )
    } else {
        None
    };
    Ok((weights, open_clip))
}

impl PeCoreClip {
    /// Load from a weights file or a directory (see `checkpoint_paths`).
    pub fn from_path(
        path: &Path,
        dtype: DType,
        device: &Device,
        model: &str,
    ) -> std::result::Result<Self, ModelError> {
        let (weights, open_clip) = checkpoint_paths(path, model)?;
        let (vb, layout) = open_weights(&weights, dtype, device, model)?;
        Self::load(vb, layout, open_clip.as_ref(), model)
    }
}

/// PE-Core's preprocessing: squash to `image_size` (PIL bilinear, antialiased), scale to
/// `0..1`, normalise with mean = std = 0.5 → `[B, 3, S, S]`.
pub fn pixel_values(
    frames: &[crate::processor::RgbImage],
    image_size: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut values = Vec::with_capacity(frames.len() * 3 * image_size * image_size);
    for frame in frames {
        let frame = frame.resized_with(image_size, image_size, crate::processor::Filter::Bilinear);
        for channel in 0..3 {
            values.extend(
                frame
                    .data
                    .iter()
                    .skip(channel)
                    .step_by(3)
                    .map(|&value| (f32::from(value) / 255.0 - 0.5) / 0.5),
            );
        }
    }
    Tensor::from_vec(values, (frames.len(), 3, image_size, image_size), device)?.to_dtype(dtype)
}
