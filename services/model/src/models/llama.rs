//! The Llama 3 decoder inside PerceptionLM (Grattafiori et al., "The Llama 3 Herd of
//! Models", 2024; transformers `LlamaModel`): RMSNorm pre-norm blocks, grouped-query
//! attention with rotate-half RoPE (optionally llama3-scaled), SwiGLU MLP, tied or untied
//! `lm_head`.
//!
//! Unlike candle-transformers' llama this decoder takes a *batch* of sequences of different
//! lengths (left padding, a pad-aware causal mask and per-row positions), accepts input
//! embeddings in chunks against a growing KV cache (chunked prefill of long visual
//! prefixes), and returns hidden states for every position of a chunk so the caller picks
//! which positions to project to logits.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::kv_cache::KvCache;

use crate::profile;
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use serde::Deserialize;
use vidx_core::ModelError;

/// llama3 RoPE frequency scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The resolved decoder configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// `text_config` as written by transformers 4.x (`rope_theta` + `rope_scaling`) or 5.x
/// (`rope_parameters`).
#[derive(Debug, Deserialize)]
struct TextConfigJson {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    /// Resolve `text_config`; `tie_fallback` is the top-level `tie_word_embeddings`.
    /// Missing sizes and values the code does not implement are errors naming the field.
    pub fn from_json(
        value: &serde_json::Value,
        tie_fallback: Option<bool>,
        model: &str,
    ) -> std::result::Result<Self, ModelError> {
        let unsupported = |field: &str, reason: String| ModelError::UnsupportedConfig {
            model: model.into(),
            field: format!("text_config.{field}"),
            reason,
        };
        let json: TextConfigJson = serde_json::from_value(value.clone())
            .map_err(|error| unsupported("*", error.to_string()))?;
        let required = |value: Option<usize>, field: &str| {
            value.ok_or_else(|| unsupported(field, "missing".into()))
        };
        if let Some(act) = json.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(unsupported("hidden_act", format!("`{act}`: only silu")));
        }
        if json.attention_bias == Some(true) {
            return Err(unsupported("attention_bias", "Llama 3 has none".into()));
        }
        if json.mlp_bias == Some(true) {
            return Err(unsupported("mlp_bias", "Llama 3 has none".into()));
        }
        let hidden_size = required(json.hidden_size, "hidden_size")?;
        let num_attention_heads = required(json.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = json.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(unsupported(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide {num_attention_heads} heads"),
            ));
        }
        let head_dim = json
            .head_dim
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        if !head_dim.is_multiple_of(2) {
            return Err(unsupported("head_dim", format!("{head_dim} is odd")));
        }

        // transformers 5 folds rope_theta and the scaling into `rope_parameters`.
        let parameters = json.rope_parameters.as_ref();
        // Never a silent default: the published checkpoints use 500000, not llama's 10000.
        let rope_theta = json
            .rope_theta
            .or_else(|| parameters.and_then(|p| p.get("rope_theta")?.as_f64()))
            .ok_or_else(|| {
                unsupported(
                    "rope_theta",
                    "missing (neither rope_theta nor rope_parameters.rope_theta is set)".into(),
                )
            })?;
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(unsupported(
                "rope_theta",
                format!("{rope_theta} is not a RoPE base"),
            ));
        }
        let scaling = json
            .rope_scaling
            .as_ref()
            .filter(|value| !value.is_null())
            .map(|value| ("rope_scaling", value))
            .or_else(|| parameters.map(|value| ("rope_parameters", value)));
        let rope_scaling = match scaling {
            None => None,
            Some((field, scaling)) => {
                let rope_type = scaling
                    .get("rope_type")
                    .or_else(|| scaling.get("type"))
                    .and_then(|value| value.as_str())
                    .unwrap_or("default");
                match rope_type {
                    "default" => None,
                    "llama3" => {
                        let number = |key: &str| {
                            scaling
                                .get(key)
                                .and_then(|value| value.as_f64())
                                .ok_or_else(|| {
                                    unsupported(&format!("{field}.{key}"), "missing".into())
                                })
                        };
                        Some(Llama3Scaling {
                            factor: number("factor")?,
                            low_freq_factor: number("low_freq_factor")?,
                            high_freq_factor: number("high_freq_factor")?,
                            original_max_position_embeddings: number(
                                "original_max_position_embeddings",
                            )?,
                        })
                    }
                    other => {
                        return Err(unsupported(
                            &format!("{field}.rope_type"),
                            format!("`{other}`: only default and llama3"),
                        ));
                    }
                }
            }
        };
        let eos_token_ids = match &json.eos_token_id {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Number(id)) => {
                id.as_u64().map(|id| id as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(ids)) => ids
                .iter()
                .filter_map(|id| id.as_u64().map(|id| id as u32))
                .collect(),
            Some(other) => return Err(unsupported("eos_token_id", format!("`{other}`"))),
        };
        Ok(Self {
            hidden_size,
            intermediate_size: required(json.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(json.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: required(json.vocab_size, "vocab_size")?,
            rms_norm_eps: json.rms_norm_eps.unwrap_or(1e-5),
            rope_theta,
            rope_scaling,
            max_position_embeddings: json.max_position_embeddings.unwrap_or(131_072),
            tie_word_embeddings: json.tie_word_embeddings.or(tie_fallback).unwrap_or(false),
            bos_token_id: json.bos_token_id,
            eos_token_ids,
        })
    }

    /// RoPE inverse frequencies, with llama3 scaling applied.
    fn inverse_frequencies(&self) -> Vec<f32> {
        let dim = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|index| {
                let frequency = 1.0 / self.rope_theta.powf(2.0 * index as f64 / dim);
                let Some(scaling) = &self.rope_scaling else {
                    return frequency as f32;
                };
                let wavelength = 2.0 * std::f64::consts::PI / frequency;
                let low_wavelength =
                    scaling.original_max_position_embeddings / scaling.low_freq_factor;
                let high_wavelength =
                    scaling.original_max_position_embeddings / scaling.high_freq_factor;
                let scaled = if wavelength < high_wavelength {
                    frequency
                } else if wavelength > low_wavelength {
                    frequency / scaling.factor
                } else {
                    let smooth = (scaling.original_max_position_embeddings / wavelength
                        - scaling.low_freq_factor)
                        / (scaling.high_freq_factor - scaling.low_freq_factor);
                    (1.0 - smooth) * frequency / scaling.factor + smooth * frequency
                };
                scaled as f32
            })
            .collect()
    }
}

/// Self-attention with `q_proj`, `k_proj` and `v_proj` stacked into one matmul at load.
struct Attention {
    qkv_proj: Linear,
    /// Views of `qkv_proj`'s weight: the query rows, and the key and value rows.
    q_proj: Linear,
    kv_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(config: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, head_dim) = (config.hidden_size, config.head_dim);
        let heads = config.num_attention_heads;
        let kv_heads = config.num_key_value_heads;
        let q = vb.pp("q_proj").get((heads * head_dim, hidden), "weight")?;
        let k = vb
            .pp("k_proj")
            .get((kv_heads * head_dim, hidden), "weight")?;
        let v = vb
            .pp("v_proj")
            .get((kv_heads * head_dim, hidden), "weight")?;
        let qkv = Tensor::cat(&[&q, &k, &v], 0)?;
        Ok(Self {
            q_proj: Linear::new(qkv.narrow(0, 0, heads * head_dim)?, None),
            kv_proj: Linear::new(
                qkv.narrow(0, heads * head_dim, 2 * kv_heads * head_dim)?,
                None,
            ),
            qkv_proj: Linear::new(qkv, None),
            o_proj: candle_nn::linear_no_bias(heads * head_dim, hidden, vb.pp("o_proj"))?,
            heads,
            kv_heads,
            head_dim,
        })
    }

    /// `x`: `[B, L, hidden]`; `cos`/`sin`: `[B, L, head_dim/2]`; `visible[b][i]`: the key
    /// range of query `i` of row `b`, or none (no padding and a single query).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        visible: Option<&crate::attention::Visibility>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (batch, length, _) = x.dims3()?;
        let (heads, kv_heads, head_dim) = (self.heads, self.kv_heads, self.head_dim);
        // Heads-last `[B, L, heads, d]`, as the projection writes it: RoPE works in that
        // layout. The cache holds `[B, kv_heads, positions, d]` (only the new positions are
        // transposed into it); the CPU kernel reads a transposed view of `q` and writes the
        // layout `o_proj` reads.
        let device = x.device();
        let (q, k, v) = profile::stage("llm.qkv_rope", device, || {
            let qkv = self.qkv_proj.forward(x)?.reshape((
                batch,
                length,
                heads + 2 * kv_heads,
                head_dim,
            ))?;
            let part = |first: usize, count: usize| qkv.narrow(2, first, count)?.contiguous();
            let q = candle_nn::rotary_emb::rope_thd(&part(0, heads)?, cos, sin)?;
            let k = candle_nn::rotary_emb::rope_thd(&part(heads, kv_heads)?, cos, sin)?;
            Ok((q, k, part(heads + kv_heads, kv_heads)?))
        })?;
        let (k, v) = append_heads_first(cache, &k, &v)?;
        let q = q.transpose(1, 2)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let output = profile::stage("llm.attention", device, || {
            self.attend(&q, &k, &v, scale, visible)
        })?;
        let output = output.reshape((batch, length, heads * head_dim))?;
        profile::stage("llm.o_proj", device, || self.o_proj.forward(&output))
    }

    /// What [`Attention::forward`] does for the positions whose outputs nobody reads: their
    /// keys and values go into the cache, and only the queries of `outputs` are computed and
    /// attended — with [`Outputs::Last`] the last position of each row (which sees
    /// `last_visible[b]`), with [`Outputs::None`] none at all (`Ok(None)`).
    fn forward_outputs(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        last_visible: &[(usize, usize)],
        cache: &mut KvCache,
        outputs: Outputs,
    ) -> Result<Option<Tensor>> {
        let (batch, length, _) = x.dims3()?;
        let (heads, kv_heads, head_dim) = (self.heads, self.kv_heads, self.head_dim);
        let device = x.device();
        let (k, v) = profile::stage("llm.qkv_rope", device, || {
            let kv = self
                .kv_proj
                .forward(x)?
                .reshape((batch, length, 2 * kv_heads, head_dim))?;
            let k = candle_nn::rotary_emb::rope_thd(
                &kv.narrow(2, 0, kv_heads)?.contiguous()?,
                cos,
                sin,
            )?;
            Ok((k, kv.narrow(2, kv_heads, kv_heads)?))
        })?;
        let (k, v) = append_heads_first(cache, &k, &v)?;
        if outputs == Outputs::None {
            return Ok(None);
        }
        let last = length - 1;
        let q = profile::stage("llm.qkv_rope", device, || {
            let q = self
                .q_proj
                .forward(&x.narrow(1, last, 1)?.contiguous()?)?
                .reshape((batch, 1, heads, head_dim))?;
            candle_nn::rotary_emb::rope_thd(
                &q,
                &cos.narrow(1, last, 1)?.contiguous()?,
                &sin.narrow(1, last, 1)?.contiguous()?,
            )
        })?;
        let q = q.transpose(1, 2)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let ranges: Vec<Vec<(usize, usize)>> =
            last_visible.iter().map(|range| vec![*range]).collect();
        let visibility = crate::attention::Visibility::new(ranges);
        let output = profile::stage("llm.attention", device, || {
            self.attend(&q, &k, &v, scale, Some(&visibility))
        })?;
        let output = output.reshape((batch, 1, heads * head_dim))?;
        profile::stage("llm.o_proj", device, || self.o_proj.forward(&output)).map(Some)
    }

    /// `q` `[B, heads, L, d]` (a view), `k`/`v` `[B, kv_heads, keys, d]` → `[B, L, heads, d]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        visible: Option<&crate::attention::Visibility>,
    ) -> Result<Tensor> {
        let (batch, heads, length, head_dim) = q.dims4()?;
        let kv_heads = self.kv_heads;
        let output = match crate::attention::attend_fused(q, k, v, scale, visible)? {
            Some(output) => output,
            None => {
                // Grouped-query attention without repeating K/V: the query heads that share a
                // KV head are stacked along the query axis.
                let group = heads / kv_heads;
                let q = q
                    .contiguous()?
                    .reshape((batch, kv_heads, group * length, head_dim))?;
                crate::attention::attend_grouped_batch(&q, k, v, scale, group, visible)?
                    .reshape((batch, heads, length, head_dim))?
                    .transpose(1, 2)?
            }
        };
        Ok(output)
    }
}

/// Append `[B, L, kv_heads, d]` keys and values to a heads-first cache; returns the whole
/// cache, `[B, kv_heads, positions, d]`.
fn append_heads_first(cache: &mut KvCache, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    profile::stage("llm.kv_cache", k.device(), || {
        cache.append(
            &k.transpose(1, 2)?.contiguous()?,
            &v.transpose(1, 2)?.contiguous()?,
        )
    })
}

/// SwiGLU MLP with `gate_proj` and `up_proj` stacked into one matmul at load.
struct Mlp {
    gate_up_proj: Linear,
    down_proj: Linear,
    inner: usize,
}

impl Mlp {
    fn load(config: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let gate = vb.pp("gate_proj").get((inner, hidden), "weight")?;
        let up = vb.pp("up_proj").get((inner, hidden), "weight")?;
        Ok(Self {
            gate_up_proj: Linear::new(Tensor::cat(&[&gate, &up], 0)?, None),
            down_proj: candle_nn::linear_no_bias(inner, hidden, vb.pp("down_proj"))?,
            inner,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        profile::stage("llm.mlp", x.device(), || {
            let gate_up = self.gate_up_proj.forward(x)?;
            self.down_proj
                .forward(&crate::ops::swiglu(&gate_up, self.inner)?)
        })
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(config: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let norm =
            |name: &str| candle_nn::rms_norm(config.hidden_size, config.rms_norm_eps, vb.pp(name));
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(config, vb.pp("self_attn"))?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp::load(config, vb.pp("mlp"))?,
        })
    }
}

/// The positions of a chunk whose final hidden states the caller reads.
///
/// Every layer must put every position's keys and values into the cache, but the last
/// layer's attention, output projection and MLP only matter for the positions that are read:
/// a prefill chunk before the last one needs none, the last chunk only its last position
/// (the first token's logits). Skipping the rest of the last layer is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// `[B, L, hidden]`.
    All,
    /// `[B, 1, hidden]`: the last position of each row.
    Last,
    /// Nothing: the chunk only fills the cache.
    None,
}

/// Per-layer KV caches of a batch, and how many positions they hold.
pub struct LlamaCache {
    layers: Vec<KvCache>,
    length: usize,
}

impl LlamaCache {
    /// Positions already in the cache (padding included).
    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
}

/// The decoder. `vb` points at `model.language_model`; `lm_head` is loaded from
/// `lm_head_vb` unless the embeddings are tied.
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inverse_frequencies: Tensor,
}

impl Llama {
    pub fn load(config: &LlamaConfig, vb: VarBuilder, lm_head_vb: VarBuilder) -> Result<Self> {
        let embed_tokens =
            candle_nn::embedding(config.vocab_size, config.hidden_size, vb.pp("embed_tokens"))?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(config.hidden_size, config.vocab_size, lm_head_vb)?
        };
        let layers = (0..config.num_hidden_layers)
            .map(|index| DecoderLayer::load(config, vb.pp(format!("layers.{index}"))))
            .collect::<Result<Vec<_>>>()?;
        let frequencies = config.inverse_frequencies();
        let count = frequencies.len();
        Ok(Self {
            embed_tokens,
            layers,
            norm: candle_nn::rms_norm(config.hidden_size, config.rms_norm_eps, vb.pp("norm"))?,
            lm_head,
            inverse_frequencies: Tensor::from_vec(frequencies, (1, count), vb.device())?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.inverse_frequencies.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    /// Token embeddings `[.., hidden]` for ids of any shape.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// An empty cache; `capacity` is a hint (it grows when exceeded).
    pub fn new_cache(&self, capacity: usize) -> LlamaCache {
        LlamaCache {
            layers: (0..self.layers.len())
                // Heads first, `[B, kv_heads, positions, d]`: attention reads the cache as it
                // is (no transposed copy of the whole cache per decode step).
                .map(|_| KvCache::new(2, capacity.max(1)))
                .collect(),
            length: 0,
        }
    }

    /// Run `embeds` (`[B, L, hidden]`, the next `L` positions of every row) through the
    /// decoder against `cache`, returning the final-norm hidden states `[B, L, hidden]`.
    /// `padding[b]` is the number of left-padding positions of row `b`: they get no
    /// position, and no query attends to them.
    pub fn forward(
        &self,
        embeds: &Tensor,
        cache: &mut LlamaCache,
        padding: &[usize],
    ) -> Result<Tensor> {
        match self.forward_outputs(embeds, cache, padding, Outputs::All)? {
            Some(hidden) => Ok(hidden),
            None => candle_core::bail!("the decoder returned no hidden states"),
        }
    }

    /// [`Llama::forward`] for the positions `outputs` names: `None` for [`Outputs::None`].
    pub fn forward_outputs(
        &self,
        embeds: &Tensor,
        cache: &mut LlamaCache,
        padding: &[usize],
        outputs: Outputs,
    ) -> Result<Option<Tensor>> {
        let (batch, length, _) = embeds.dims3()?;
        if padding.len() != batch {
            candle_core::bail!("{} padding entries for a batch of {batch}", padding.len());
        }
        if length == 0 {
            candle_core::bail!("an empty chunk");
        }
        let start = cache.length;
        let (cos, sin) = self.rotary(start, length, padding)?;
        let visible = self
            .visible(start, length, padding)
            .map(crate::attention::Visibility::new);
        // With one position per row, every output is the last one: the full path is the same.
        let outputs = if outputs == Outputs::Last && length == 1 {
            Outputs::All
        } else {
            outputs
        };
        let mut hidden = embeds.clone();
        let depth = self.layers.len();
        for (index, (layer, layer_cache)) in
            self.layers.iter().zip(cache.layers.iter_mut()).enumerate()
        {
            let residual = &hidden;
            if index + 1 == depth && outputs != Outputs::All {
                // The keys the last query of each row sees.
                let last_visible: Vec<(usize, usize)> = match &visible {
                    Some(visible) => visible
                        .ranges()
                        .iter()
                        .map(|row| row.last().copied().unwrap_or((0, start + length)))
                        .collect(),
                    None => vec![(0, start + length); batch],
                };
                let attended = layer.self_attn.forward_outputs(
                    &crate::ops::rms_norm(&layer.input_layernorm, residual)?,
                    &cos,
                    &sin,
                    &last_visible,
                    layer_cache,
                    outputs,
                )?;
                let Some(attended) = attended else {
                    cache.length += length;
                    return Ok(None);
                };
                let hidden_mid = (residual.narrow(1, length - 1, 1)? + attended)?;
                let mlp = layer.mlp.forward(&crate::ops::rms_norm(
                    &layer.post_attention_layernorm,
                    &hidden_mid,
                )?)?;
                cache.length += length;
                return crate::ops::rms_norm(&self.norm, &(hidden_mid + mlp)?).map(Some);
            }
            let attended = layer.self_attn.forward(
                &crate::ops::rms_norm(&layer.input_layernorm, residual)?,
                &cos,
                &sin,
                visible.as_ref(),
                layer_cache,
            )?;
            let hidden_mid = (residual + attended)?;
            let mlp = layer.mlp.forward(&crate::ops::rms_norm(
                &layer.post_attention_layernorm,
                &hidden_mid,
            )?)?;
            hidden = (hidden_mid + mlp)?;
        }
        cache.length += length;
        crate::ops::rms_norm(&self.norm, &hidden).map(Some)
    }

    /// Logits `[.., vocab]` (f32) for final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        profile::stage("llm.logits", hidden.device(), || {
            self.lm_head.forward(hidden)?.to_dtype(DType::F32)
        })
    }

    /// cos/sin `[B, L, head_dim/2]` at each row's positions (padding: position 0).
    fn rotary(&self, start: usize, length: usize, padding: &[usize]) -> Result<(Tensor, Tensor)> {
        let batch = padding.len();
        let positions: Vec<f32> = padding
            .iter()
            .flat_map(|pad| {
                (start..start + length).map(move |index| index.saturating_sub(*pad) as f32)
            })
            .collect();
        let positions = Tensor::from_vec(positions, (batch * length, 1), self.device())?;
        let angles = positions.matmul(&self.inverse_frequencies)?;
        let half = self.config.head_dim / 2;
        let shape = (batch, length, half);
        let dtype = self.dtype();
        Ok((
            angles.cos()?.reshape(shape)?.to_dtype(dtype)?,
            angles.sin()?.reshape(shape)?.to_dtype(dtype)?,
        ))
    }

    /// The keys each query sees, per row: `[pad, query]` (causal, padding hidden). A padding
    /// query sees itself only (its output is never used) so no row is empty. `None` when a
    /// single query per row sees every key.
    fn visible(
        &self,
        start: usize,
        length: usize,
        padding: &[usize],
    ) -> Option<Vec<Vec<(usize, usize)>>> {
        if length == 1 && padding.iter().all(|pad| *pad == 0) {
            return None;
        }
        Some(
            padding
                .iter()
                .map(|pad| {
                    (start..start + length)
                        .map(|query| {
                            if query < *pad {
                                (query, query + 1)
                            } else {
                                (*pad, query + 1)
                            }
                        })
                        .collect()
                })
                .collect(),
        )
    }
}

/// Index of the largest value of a `[V]` f32 slice (first on ties, as torch's argmax).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (index, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = index;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' llama3 inverse frequencies for PLM-1B's text RoPE (head_dim 64), from
    /// `scripts/make_rope_fixture.py`: 15 kept, 14 divided by the factor and 3 in the smoothed
    /// band between.
    #[test]
    fn llama3_frequencies_match_the_reference_in_all_three_bands() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/plm/rope_llama3_hd64.json"
        );
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the rope fixture"))
                .expect("JSON");
        let config = LlamaConfig::from_json(&fixture["text_config"], None, "plm-1b-text")
            .expect("PLM-1B's text config");
        let ours = config.inverse_frequencies();
        let theirs: Vec<f64> =
            serde_json::from_value(fixture["inv_freq"].clone()).expect("inv_freq");
        let bands: Vec<String> = serde_json::from_value(fixture["bands"].clone()).expect("bands");
        assert_eq!(ours.len(), theirs.len());
        for band in ["kept", "divided", "smoothed"] {
            assert!(
                bands.iter().any(|b| b == band),
                "the fixture has no {band} frequency"
            );
        }
        for (index, ((ours, theirs), band)) in ours.iter().zip(&theirs).zip(&bands).enumerate() {
            let relative = (f64::from(*ours) - theirs).abs() / theirs.abs();
            assert!(
                relative <= 1e-6,
                "frequency {index} ({band}): {ours} vs the reference's {theirs}"
            );
        }
    }
}
