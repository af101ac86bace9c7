//! The gate in front of vidx's own CUDA kernels (crate `vidx-kernels`, `cuda` feature).
//!
//! The first time a model asks for a fused kernel on a CUDA device, every kernel runs on small
//! random inputs against candle's own ops on that device (a few ms). The element-wise kernels
//! pass or fail family by family ([`verified`]); the attention runs the first of its kernels
//! that passes ([`attention_kernel`]). Where none does, or `VIDX_FUSED_KERNELS=0` is set, the
//! models use candle's ops for the rest of the process and a log line says why: a kernel fault
//! costs speed, never wrong captions.

use candle_core::{DType, Device, Result, Tensor};
use vidx_kernels::elementwise;

pub use vidx_kernels::attention::Kernel;

use crate::attention::Visibility;
use crate::ops::Activation;

/// Most errors allowed by the start-up check, relative to `1 + |expected|` (bf16 keeps 8 bits).
const TOLERANCE: f32 = 0.05;
/// Fewest blocks (batch rows × KV heads) for which a decode step runs the fused kernel.
const DECODE_MIN_BLOCKS: usize = 256;

/// vidx's element-wise kernels, each allowed or not on its own by the start-up check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// [`epilogue`]: the cases named `epilogue …`.
    Epilogue,
    /// [`swiglu`]: the case `swiglu`.
    SwiGlu,
    /// [`rope_qk`]: the cases `rope …`.
    Rope,
    /// [`norm`]: the cases `norm …`.
    Norm,
}

impl Family {
    const ALL: [Family; 4] = [Family::Epilogue, Family::SwiGlu, Family::Rope, Family::Norm];

    /// The prefix of its cases in [`check`].
    fn prefix(self) -> &'static str {
        match self {
            Family::Epilogue => "epilogue ",
            Family::SwiGlu => "swiglu ",
            Family::Rope => "rope ",
            Family::Norm => "norm ",
        }
    }
}

/// What the start-up check allowed on the device.
#[derive(Debug, Clone, Copy)]
struct Verified {
    /// Per [`Family::ALL`]: whether its kernel passed.
    families: [bool; 4],
    /// The preferred attention kernel among those that passed.
    attention: Option<Kernel>,
}

/// The start-up check's verdict for `device` (run once per process, on first use); `None` off
/// the GPU.
fn verdict(device: &Device) -> Option<Verified> {
    static VERIFIED: std::sync::OnceLock<Verified> = std::sync::OnceLock::new();
    if !device.is_cuda() {
        return None;
    }
    let off = Verified {
        families: [false; 4],
        attention: None,
    };
    Some(*VERIFIED.get_or_init(|| {
        if std::env::var("VIDX_FUSED_KERNELS").is_ok_and(|value| value.trim() == "0") {
            tracing::info!("VIDX_FUSED_KERNELS=0: the models use candle's ops on the GPU");
            return off;
        }
        match check(device) {
            Ok(errors) => {
                let passes = |prefix: &str| {
                    errors
                        .iter()
                        .filter(|(name, _)| name.starts_with(prefix))
                        .all(|(_, error)| *error <= TOLERANCE)
                };
                let verdict = Verified {
                    families: Family::ALL.map(|family| passes(family.prefix())),
                    attention: Kernel::ALL
                        .into_iter()
                        .find(|kernel| passes(&format!("attention {} ", kernel.name()))),
                };
                let worst = errors.iter().map(|(_, error)| *error).fold(0f32, f32::max);
                let bad: Vec<_> = errors
                    .iter()
                    .filter(|(_, error)| error.is_nan() || *error > TOLERANCE)
                    .collect();
                if bad.is_empty() {
                    tracing::info!(max_error = worst, "vidx's CUDA kernels agree with candle's ops");
                } else {
                    tracing::error!(
                        ?bad,
                        passed = ?Family::ALL
                            .into_iter()
                            .zip(verdict.families)
                            .filter(|(_, passed)| *passed)
                            .map(|(family, _)| family)
                            .collect::<Vec<_>>(),
                        attention = verdict.attention.map(Kernel::name),
                        "some of vidx's CUDA kernels disagree with candle's ops: those use candle's ops"
                    );
                }
                verdict
            }
            Err(error) => {
                tracing::error!(%error, "vidx's CUDA kernels failed their check: using candle's ops");
                off
            }
        }
    }))
}

/// Whether vidx's element-wise kernel `family` may run on `device`: not turned off, and it
/// passed the start-up check.
pub fn verified(device: &Device, family: Family) -> bool {
    verdict(device).is_some_and(|verdict| {
        Family::ALL
            .iter()
            .zip(verdict.families)
            .any(|(each, passed)| *each == family && passed)
    })
}

/// The attention kernel [`attend`] runs on `device`: the first of
/// [`Kernel::ALL`] that passed the start-up check; `None` when none did or they are off.
pub fn attention_kernel(device: &Device) -> Option<Kernel> {
    verdict(device).and_then(|verdict| verdict.attention)
}

/// Every kernel against candle's ops on `device`, in bf16: (case, relative error). Attention
/// cases are named `attention <kernel> <case>`.
pub fn check(device: &Device) -> Result<Vec<(String, f32)>> {
    let dtype = DType::BF16;
    let mut errors = Vec::new();
    for kernel in Kernel::ALL {
        let attend = |q: &Tensor, k: &Tensor, v: &Tensor, scale, visible: Option<&_>| {
            attend_with(kernel, q, k, v, scale, visible)
        };
        for (name, error) in crate::attention::fused_error_with(device, dtype, &attend)? {
            errors.push((
                format!("attention {} {name}", kernel.name()),
                error.unwrap_or(f32::NAN),
            ));
        }
    }
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype);
    // Rows of 200 take the kernels' 16-byte path, rows of 36 their one-value path.
    for cols in [200, 36] {
        let (x, bias, gamma, residual) = (
            randn(&[3, 37, cols])?,
            randn(&[cols])?,
            randn(&[cols])?,
            randn(&[3, 37, cols])?,
        );
        for (name, bias, act, gamma, residual) in [
            ("bias", Some(&bias), Activation::Identity, None, None),
            ("bias gelu", Some(&bias), Activation::GeluErf, None, None),
            (
                "bias gamma residual",
                Some(&bias),
                Activation::Identity,
                Some(&gamma),
                Some(&residual),
            ),
            ("gamma", None, Activation::Identity, Some(&gamma), None),
        ] {
            let fused = elementwise::epilogue(&x, bias, act, gamma, residual)?;
            let expected = crate::ops::epilogue_ops(&x, bias, act, gamma, residual)?;
            errors.push((
                format!("epilogue {name} {cols}"),
                relative_error(fused, &expected)?,
            ));
        }
        // Layer norm (with and without bias) and RMS norm against candle's in f32.
        let f32 = |tensor: &Tensor| tensor.to_dtype(DType::F32);
        let shifted = (&x + 3.0)?;
        for (name, bias, rms) in [
            ("layer", Some(&bias), false),
            ("layer no bias", None, false),
            ("rms", None, true),
        ] {
            let fused = elementwise::norm(&shifted, &gamma, bias, 1e-5, !rms)?;
            let expected = if rms {
                candle_nn::ops::rms_norm(&f32(&shifted)?, &f32(&gamma)?, 1e-5)?
            } else {
                let zeros = Tensor::zeros(cols, DType::F32, device)?;
                let bias = bias.map(f32).transpose()?.unwrap_or(zeros);
                candle_nn::ops::layer_norm(&f32(&shifted)?, &f32(&gamma)?, &bias, 1e-5)?
            };
            errors.push((
                format!("norm {name} {cols}"),
                relative_error(fused, &expected)?,
            ));
        }
    }
    for half in [304, 300] {
        let stacked = randn(&[2, 9, 2 * half])?;
        let fused = elementwise::swiglu(&stacked, half)?;
        let expected = crate::ops::swiglu_ops(&stacked, half)?;
        errors.push((format!("swiglu {half}"), relative_error(fused, &expected)?));
    }
    // The vision tower's RoPE: 2 frames of 5 tokens, 3 heads of 8 (four pairs per access) and
    // of 6 (one), against candle's ops in f32 on the same rounded inputs (candle's bf16
    // rotation rounds each product: too coarse a reference).
    let f32 = |tensor: &Tensor| tensor.to_dtype(DType::F32);
    for head_dim in [8, 6] {
        let angles = Tensor::randn(0f32, 3.0, &[5, head_dim / 2], device)?;
        let (qkv, cos, sin) = (
            randn(&[2, 5, 3 * 3 * head_dim])?,
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        );
        let expected = crate::ops::rope_qk_ops(&f32(&qkv)?, 3, &f32(&cos)?, &f32(&sin)?)?;
        let fused = elementwise::rope_qk(&qkv, 3, &cos, &sin)?;
        for (index, name) in ["q", "k", "v"].into_iter().enumerate() {
            let part = |parts: &(Tensor, Tensor, Tensor)| match index {
                0 => parts.0.clone(),
                1 => parts.1.clone(),
                _ => parts.2.clone(),
            };
            let error = relative_error(fused.as_ref().map(part), &part(&expected))?;
            errors.push((format!("rope {name} {head_dim}"), error));
        }
    }
    Ok(errors)
}

/// `max |a - b| / (1 + |b|)` in f32; NaN when either holds a NaN. `None` (a kernel that did not
/// apply) counts as NaN.
fn relative_error(fused: Option<Tensor>, expected: &Tensor) -> Result<f32> {
    let Some(fused) = fused else {
        return Ok(f32::NAN);
    };
    let expected = expected.to_dtype(DType::F32)?;
    crate::attention::worst(
        &((fused.to_dtype(DType::F32)? - &expected)?.abs()? / (expected.abs()? + 1.0)?)?,
    )
}

/// `softmax(q·kᵀ·scale)·v` for `q` `[B, Hq, L, 64]` and `k`/`v` `[B, Hkv, K, 64]` on a CUDA
/// device in bf16 or f16 by the kernel [`attention_kernel`] chose; query `i` of row `b` sees
/// the keys `visible.ranges()[b][i]` (`None`: all). Returns `[B, L, Hq, 64]`, or `None` when
/// the inputs are outside what the kernel handles or the kernels are off.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    visible: Option<&Visibility>,
) -> Result<Option<Tensor>> {
    if !q.device().is_cuda() {
        return Ok(None);
    }
    // One query per row (a decode step) is one block per KV head and row, each walking every
    // key alone: with few of them the batched tensor ops spread the work better. On an H200 at
    // 32 rows × 8 KV heads the mma kernel took 0.19 ms against their 0.36 (`plm_bench --micro`);
    // at batch 1 (8 blocks) the WMMA kernel made decoding 2.8× slower (58 against 161 tokens/s).
    let (batch, _, rows, _) = q.dims4()?;
    if rows == 1 && batch * k.dim(1)? < DECODE_MIN_BLOCKS {
        return Ok(None);
    }
    match attention_kernel(q.device()) {
        Some(kernel) => attend_with(kernel, q, k, v, scale, visible),
        None => Ok(None),
    }
}

/// [`attend`] by a given kernel, without the start-up check (what the check itself runs).
pub fn attend_with(
    kernel: Kernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    visible: Option<&Visibility>,
) -> Result<Option<Tensor>> {
    let ranges = match visible {
        Some(visible) if q.device().is_cuda() => {
            let (batch, _, rows, _) = q.dims4()?;
            Some(visible.ranges_on(q.device(), batch, rows)?)
        }
        _ => None,
    };
    if visible.is_some() && ranges.is_none() {
        return Ok(None);
    }
    vidx_kernels::attention::attend(kernel, q, k, v, scale, ranges)
}

/// [`crate::ops::epilogue`] by the fused kernel, once [`verified`]; `None` when it does not
/// apply (not a contiguous bf16/f16 CUDA tensor, shapes off) or the kernels are off.
pub fn epilogue(
    x: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    gamma: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if !x.device().is_cuda() || !verified(x.device(), Family::Epilogue) {
        return Ok(None);
    }
    elementwise::epilogue(x, bias, act, gamma, residual)
}

/// [`crate::ops::swiglu`] by the fused kernel, once [`verified`]; `None` when it does not apply.
pub fn swiglu(x: &Tensor, half: usize) -> Result<Option<Tensor>> {
    if !x.device().is_cuda() || !verified(x.device(), Family::SwiGlu) {
        return Ok(None);
    }
    elementwise::swiglu(x, half)
}

/// [`crate::ops::rope_qk`] by the fused kernel, once [`verified`]; `None` when it does not
/// apply.
pub fn rope_qk(
    qkv: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if !qkv.device().is_cuda() || !verified(qkv.device(), Family::Rope) {
        return Ok(None);
    }
    elementwise::rope_qk(qkv, heads, cos, sin)
}

/// Layer norm (`remove_mean`, `bias` optional) or RMS norm over the last axis of `x` by the
/// fused kernel, once [`verified`]; `None` when it does not apply.
pub fn norm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
    remove_mean: bool,
) -> Result<Option<Tensor>> {
    if !x.device().is_cuda() || !verified(x.device(), Family::Norm) {
        return Ok(None);
    }
    elementwise::norm(x, weight, bias, eps, remove_mean)
}
