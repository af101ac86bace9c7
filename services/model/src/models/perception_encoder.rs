//! The Perception Encoder vision tower as PerceptionLM uses it (Bolya et al., "Perception
//! Encoder", 2025; checkpoints `facebook/Perception-LM-{1B,3B,8B}`, timm `vit_pe_core_*`):
//! patch embedding without bias, optional CLS token, learned position embedding, `norm_pre`,
//! pre-norm blocks with LayerScale and 2D RoPE on the patch tokens, no final norm. The
//! output is timm's `forward_features`; PLM drops the CLS row before its projector.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, LayerNormConfig, Linear, VarBuilder};
use serde::Deserialize;
use vidx_core::ModelError;

use crate::ops::Activation;

/// PE LayerNorms all use this epsilon.
const LAYER_NORM_EPS: f64 = 1e-5;
/// RoPE temperature of PE's 2D rotary embedding.
const ROPE_TEMPERATURE: f64 = 10_000.0;

/// `vision_config` of a PerceptionLM `config.json` (the TimmWrapper form).
#[derive(Debug, Clone, Deserialize)]
pub struct TimmVisionConfig {
    pub architecture: String,
    #[serde(default)]
    pub model_args: TimmModelArgs,
}

/// The `model_args` overrides; anything absent comes from the architecture's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TimmModelArgs {
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    pub img_size: Option<ImageSize>,
    pub class_token: Option<bool>,
    pub global_pool: Option<String>,
    pub use_post_transformer_norm: Option<bool>,
    pub ref_feat_shape: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    Square(usize),
    Pair(Vec<usize>),
}

/// The resolved vision configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PeVisionConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    pub image_size: usize,
    pub class_token: bool,
}

impl PeVisionConfig {
    /// Architecture defaults (timm's `vit_pe_core_*` / `vit_pe_lang_*`), then `model_args`.
    /// Values the code does not implement are errors naming the field.
    pub fn resolve(
        config: &TimmVisionConfig,
        model: &str,
    ) -> std::result::Result<Self, ModelError> {
        let unsupported = |field: &str, reason: String| ModelError::UnsupportedConfig {
            model: model.into(),
            field: format!("vision_config.{field}"),
            reason,
        };
        let architecture = config.architecture.as_str();
        // (embed_dim, depth, num_heads, class_token)
        let defaults =
            if architecture.contains("pe_core_large") || architecture.contains("pe_lang_large") {
                (1024, 24, 16, true)
            } else if architecture.contains("pe_core_gigantic")
                || architecture.contains("pe_lang_gigantic")
            {
                (1536, 50, 16, false)
            } else {
                return Err(unsupported(
                    "architecture",
                    format!("`{architecture}` is not a Perception Encoder large/gigantic tower"),
                ));
            };
        let patch_size = architecture
            .split("patch")
            .nth(1)
            .and_then(|rest| rest.split('_').next())
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| {
                unsupported("architecture", format!("no patch size in `{architecture}`"))
            })?;
        // timm's defaults for the architecture: its name ends in its input size (`_336`),
        // and its RoPE reference grid is that size in patches.
        let default_size: usize = architecture
            .rsplit('_')
            .next()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| {
                unsupported("architecture", format!("no input size in `{architecture}`"))
            })?;
        let args = &config.model_args;
        let image_size = match &args.img_size {
            None => default_size,
            Some(ImageSize::Square(size)) => *size,
            Some(ImageSize::Pair(pair)) => match pair.as_slice() {
                [height, width] if height == width => *height,
                _ => {
                    return Err(unsupported(
                        "model_args.img_size",
                        format!("{pair:?}: only square inputs"),
                    ));
                }
            },
        };
        if !image_size.is_multiple_of(patch_size) {
            return Err(unsupported(
                "model_args.img_size",
                format!("{image_size} is not a multiple of the patch size {patch_size}"),
            ));
        }
        if args
            .global_pool
            .as_deref()
            .is_some_and(|pool| !pool.is_empty())
        {
            return Err(unsupported(
                "model_args.global_pool",
                "PLM uses the unpooled features (\"\")".into(),
            ));
        }
        if args.use_post_transformer_norm == Some(true) {
            return Err(unsupported(
                "model_args.use_post_transformer_norm",
                "PLM's tower has no final norm".into(),
            ));
        }
        let grid = image_size / patch_size;
        match &args.ref_feat_shape {
            Some(shape) if shape.iter().any(|side| *side != grid) => {
                return Err(unsupported(
                    "model_args.ref_feat_shape",
                    format!(
                        "{shape:?} differs from the {grid}x{grid} patch grid (RoPE rescaling is not implemented)"
                    ),
                ));
            }
            Some(_) => {}
            // Absent, timm keeps the architecture's grid and rescales RoPE to it.
            None if default_size / patch_size != grid => {
                let reference = default_size / patch_size;
                return Err(unsupported(
                    "model_args.ref_feat_shape",
                    format!(
                        "missing: timm would then use {architecture}'s {reference}x{reference} \
                         and rescale RoPE to the {grid}x{grid} grid of img_size {image_size} \
                         (not implemented); set it to [{grid}, {grid}]"
                    ),
                ));
            }
            None => {}
        }
        Ok(Self {
            embed_dim: args.embed_dim.unwrap_or(defaults.0),
            depth: args.depth.unwrap_or(defaults.1),
            num_heads: args.num_heads.unwrap_or(defaults.2),
            patch_size,
            image_size,
            class_token: args.class_token.unwrap_or(defaults.3),
        })
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
}

/// 2D RoPE tables `[tokens, head_dim / 2]` (CLS row: identity), computed at load: the tables
/// are buffers, not checkpoint tensors. Pair `i < head_dim/4` rotates by the column, the rest
/// by the row; positions are offset by 1 when a CLS token exists.
fn rope_tables(config: &PeVisionConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let grid = config.grid();
    let quarter = config.head_dim() / 4;
    let offset = usize::from(config.class_token) as f64;
    let bands: Vec<f64> = (0..quarter)
        .map(|band| ROPE_TEMPERATURE.powf(-(band as f64) / quarter as f64))
        .collect();
    let tokens = grid * grid + usize::from(config.class_token);
    let half = 2 * quarter;
    let mut cos = Vec::with_capacity(tokens * half);
    let mut sin = Vec::with_capacity(tokens * half);
    if config.class_token {
        cos.extend(std::iter::repeat_n(1f32, half));
        sin.extend(std::iter::repeat_n(0f32, half));
    }
    for row in 0..grid {
        for column in 0..grid {
            for pair in 0..half {
                let angle = if pair < quarter {
                    (column as f64 + offset) * bands[pair]
                } else {
                    (row as f64 + offset) * bands[pair - quarter]
                };
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (tokens, half), device)?,
        Tensor::from_vec(sin, (tokens, half), device)?,
    ))
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// LayerScale (PE-Lang / PLM towers); PE-Core has none.
    gamma_1: Option<Tensor>,
    gamma_2: Option<Tensor>,
    num_heads: usize,
}

impl Block {
    fn load(config: &PeVisionConfig, vb: VarBuilder) -> Result<Self> {
        let dim = config.embed_dim;
        let norm = LayerNormConfig {
            eps: LAYER_NORM_EPS,
            ..Default::default()
        };
        // The MLP width is read from the checkpoint: timm truncates `dim * mlp_ratio`.
        let mlp_hidden = vb.get_unchecked("mlp.fc1.weight")?.dim(0)?;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, norm, vb.pp("norm1"))?,
            qkv: candle_nn::linear(dim, 3 * dim, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear(dim, dim, vb.pp("attn.proj"))?,
            norm2: candle_nn::layer_norm(dim, norm, vb.pp("norm2"))?,
            fc1: candle_nn::linear(dim, mlp_hidden, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(mlp_hidden, dim, vb.pp("mlp.fc2"))?,
            gamma_1: layer_scale(&vb, dim, "gamma_1")?,
            gamma_2: layer_scale(&vb, dim, "gamma_2")?,
            num_heads: config.num_heads,
        })
    }

    fn forward(&self, hidden: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (batch, tokens, dim) = hidden.dims3()?;
        let head_dim = dim / self.num_heads;
        let device = hidden.device();
        let qkv = crate::profile::stage("vision.qkv", device, || {
            let normed = crate::ops::layer_norm(&self.norm1, hidden)?;
            crate::ops::linear_epilogue(&self.qkv, &normed, Activation::Identity, None, None)
        })?;
        let (query, key, value) = crate::profile::stage("vision.rope", device, || {
            crate::ops::rope_qk(&qkv, self.num_heads, cos, sin)
        })?;
        let scale = (head_dim as f64).powf(-0.5);
        let attended = crate::profile::stage("vision.attention", device, || {
            Ok(
                match crate::attention::attend_fused(&query, &key, &value, scale, None)? {
                    Some(attended) => attended,
                    None => {
                        let flat = |tensor: &Tensor| {
                            tensor.reshape((batch * self.num_heads, tokens, head_dim))
                        };
                        crate::attention::attend(
                            &flat(&query)?,
                            &flat(&key)?,
                            &flat(&value)?,
                            scale,
                        )?
                        .reshape((batch, self.num_heads, tokens, head_dim))?
                        .transpose(1, 2)?
                    }
                },
            )
        })?;
        // Heads-last `[B, T, heads, d]` → `[B, T, dim]`.
        let hidden = crate::profile::stage("vision.proj", device, || {
            let attended = attended.reshape((batch, tokens, dim))?;
            crate::ops::linear_epilogue(
                &self.proj,
                &attended,
                Activation::Identity,
                self.gamma_1.as_ref(),
                Some(hidden),
            )
        })?;
        let inner = crate::profile::stage("vision.fc1", device, || {
            let normed = crate::ops::layer_norm(&self.norm2, &hidden)?;
            crate::ops::linear_epilogue(&self.fc1, &normed, Activation::GeluErf, None, None)
        })?;
        crate::profile::stage("vision.fc2", device, || {
            crate::ops::linear_epilogue(
                &self.fc2,
                &inner,
                Activation::Identity,
                self.gamma_2.as_ref(),
                Some(&hidden),
            )
        })
    }
}

fn layer_scale(vb: &VarBuilder, dim: usize, name: &str) -> Result<Option<Tensor>> {
    if vb.contains_tensor(name) {
        Ok(Some(vb.get(dim, name)?))
    } else {
        Ok(None)
    }
}

/// The vision tower; `forward` returns `[batch, tokens (+1 with CLS), embed_dim]`.
pub struct PeVisionTower {
    config: PeVisionConfig,
    patch_embed: Conv2d,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    norm_pre: LayerNorm,
    blocks: Vec<Block>,
    rope_cos: Tensor,
    rope_sin: Tensor,
}

impl PeVisionTower {
    /// `vb` points at the timm model (PLM: `model.vision_tower.timm_model`).
    pub fn load(config: &PeVisionConfig, vb: VarBuilder) -> Result<Self> {
        let dim = config.embed_dim;
        let patches = config.grid() * config.grid();
        let tokens = patches + usize::from(config.class_token);
        let patch_embed = candle_nn::conv2d_no_bias(
            3,
            dim,
            config.patch_size,
            Conv2dConfig {
                stride: config.patch_size,
                ..Default::default()
            },
            vb.pp("patch_embed.proj"),
        )?;
        let cls_token = if config.class_token {
            Some(vb.get((1, 1, dim), "cls_token")?)
        } else {
            None
        };
        let blocks = (0..config.depth)
            .map(|index| Block::load(config, vb.pp(format!("blocks.{index}"))))
            .collect::<Result<Vec<_>>>()?;
        let (rope_cos, rope_sin) = rope_tables(config, vb.device())?;
        Ok(Self {
            patch_embed,
            cls_token,
            pos_embed: vb.get((1, tokens, dim), "pos_embed")?,
            norm_pre: candle_nn::layer_norm(
                dim,
                LayerNormConfig {
                    eps: LAYER_NORM_EPS,
                    ..Default::default()
                },
                vb.pp("norm_pre"),
            )?,
            blocks,
            rope_cos: rope_cos.to_dtype(vb.dtype())?,
            rope_sin: rope_sin.to_dtype(vb.dtype())?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &PeVisionConfig {
        &self.config
    }

    /// `pixels`: `[batch, 3, image_size, image_size]`, normalised.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let batch = pixels.dim(0)?;
        let dim = self.config.embed_dim;
        // [B, W, g, g] → [B, g·g, W], row-major over the grid.
        let mut hidden = self
            .patch_embed
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        if let Some(cls_token) = &self.cls_token {
            hidden = Tensor::cat(&[&cls_token.broadcast_as((batch, 1, dim))?, &hidden], 1)?;
        }
        hidden = self
            .norm_pre
            .forward(&hidden.broadcast_add(&self.pos_embed)?)?;
        for block in &self.blocks {
            hidden = block.forward(&hidden, &self.rope_cos, &self.rope_sin)?;
        }
        Ok(hidden)
    }

    /// The patch features without the CLS row: what PLM's projector consumes.
    pub fn patch_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let features = self.forward(pixels)?;
        if self.config.class_token {
            features.narrow(1, 1, features.dim(1)? - 1)
        } else {
            Ok(features)
        }
    }
}

/// PLM's projector: `linear_1 → GELU(erf) → linear_2`, then an exact 2×2 mean pooling of
/// the token grid (`adaptive_avg_pool2d` from g×g to g/2×g/2), row-major.
pub struct PlmProjector {
    linear_1: Linear,
    linear_2: Linear,
    pooling_ratio: usize,
}

impl PlmProjector {
    /// `vb` points at `model.multi_modal_projector`.
    pub fn load(
        vision_dim: usize,
        text_dim: usize,
        pooling_ratio: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(vision_dim, text_dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(text_dim, text_dim, vb.pp("linear_2"))?,
            pooling_ratio,
        })
    }

    /// `features`: `[batch, g·g, vision_dim]` → `[batch, (g/r)², text_dim]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let projected = self
            .linear_2
            .forward(&crate::ops::gelu_erf(&self.linear_1.forward(features)?)?)?;
        if self.pooling_ratio <= 1 {
            return Ok(projected);
        }
        let (batch, tokens, dim) = projected.dims3()?;
        let grid = (tokens as f64).sqrt() as usize;
        if grid * grid != tokens || !grid.is_multiple_of(self.pooling_ratio) {
            candle_core::bail!(
                "projector: {tokens} tokens do not form a grid divisible by {}",
                self.pooling_ratio
            );
        }
        projected
            .transpose(1, 2)?
            .reshape((batch, dim, grid, grid))?
            .avg_pool2d(self.pooling_ratio)?
            .flatten_from(2)?
            .transpose(1, 2)
    }
}
