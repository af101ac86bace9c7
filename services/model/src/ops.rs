//! Elementwise kernels the CPU spends its non-matmul time in — softmax over the last axis
//! (scaled, with per-row key ranges), GELU (erf form) and SwiGLU — for contiguous f32
//! tensors: branch-free so the compiler vectorises them, split across threads. Other dtypes and devices use candle's own ops.
//!
//! `exp` is Cephes' single-precision polynomial after a round-to-nearest range reduction
//! (≈1 ulp); `erf` is Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer that sits in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + SHIFTER;
    let n = shifted - SHIFTER;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((exponent + 127) << 23) as u32)
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Kernels over slices. Each body is `#[inline(always)]` so the AVX2 wrappers below compile
/// it with 8-wide vectors; the plain versions use the baseline (SSE2) vectors.
mod kernels {
    use super::{erf, exp};

    #[inline(always)]
    pub fn gelu_erf(input: &[f32], output: &mut [f32]) {
        for (out, x) in output.iter_mut().zip(input) {
            *out = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }

    /// Rows of `[gate | up]` (each `half` long) to `silu(gate) · up`.
    #[inline(always)]
    pub fn swiglu(input: &[f32], output: &mut [f32], half: usize) {
        for (out, row) in output
            .chunks_exact_mut(half)
            .zip(input.chunks_exact(2 * half))
        {
            let (gate, up) = row.split_at(half);
            for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
    }

    /// `softmax(scale · x[lo..hi])` of each row — max, exp, sum and scale as separate passes
    /// with 8 accumulator lanes, so every pass vectorises — zero outside `[lo, hi)`; row `i` of the
    /// slice uses `ranges[(first_row + i) % ranges.len()]` (all keys when `ranges` is empty).
    #[inline(always)]
    pub fn scaled_softmax_rows(
        input: &[f32],
        output: &mut [f32],
        row: usize,
        scale: f32,
        ranges: &[(usize, usize)],
        first_row: usize,
    ) {
        for (index, (out, x)) in output
            .chunks_exact_mut(row)
            .zip(input.chunks_exact(row))
            .enumerate()
        {
            let (lo, hi) = if ranges.is_empty() {
                (0, row)
            } else {
                let (lo, hi) = ranges[(first_row + index) % ranges.len()];
                (lo.min(row), hi.min(row).max(lo.min(row)))
            };
            out[..lo].iter_mut().for_each(|o| *o = 0.0);
            out[hi..].iter_mut().for_each(|o| *o = 0.0);
            out[lo..hi].copy_from_slice(&x[lo..hi]);
            softmax_in_place(&mut out[lo..hi], scale);
        }
    }

    /// In place: row `i` (of `width`) becomes `softmax(row[lo..hi])` for `ranges[i] = (lo, hi)`,
    /// zero outside.
    #[inline(always)]
    pub fn softmax_rows_in_place(data: &mut [f32], width: usize, ranges: &[(usize, usize)]) {
        for (row, &(lo, hi)) in data.chunks_exact_mut(width).zip(ranges) {
            let (lo, hi) = (lo.min(width), hi.min(width).max(lo.min(width)));
            row[..lo].iter_mut().for_each(|o| *o = 0.0);
            row[hi..].iter_mut().for_each(|o| *o = 0.0);
            softmax_in_place(&mut row[lo..hi], 1.0);
        }
    }

    /// `x ← softmax(scale · x)`: max, exp, sum and scale as separate passes with 8
    /// accumulator lanes, so every pass vectorises.
    #[inline(always)]
    fn softmax_in_place(x: &mut [f32], scale: f32) {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (lane, value) in lanes.iter_mut().zip(chunk) {
                *lane = if *value > *lane { *value } else { *lane };
            }
        }
        let max = lanes
            .iter()
            .chain(rest)
            .fold(f32::NEG_INFINITY, |a, b| if *b > a { *b } else { a });
        let shift = max * scale;
        x.iter_mut().for_each(|v| *v = exp(*v * scale - shift));
        let mut sums = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest: f32 = chunks.remainder().iter().sum();
        for chunk in chunks {
            for (sum, value) in sums.iter_mut().zip(chunk) {
                *sum += value;
            }
        }
        let total = sums.iter().sum::<f32>() + rest;
        // Empty ranges leave nothing to normalise.
        if total > 0.0 {
            let inverse = 1.0 / total;
            x.iter_mut().for_each(|v| *v *= inverse);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub fn gelu_erf(input: &[f32], output: &mut [f32]) {
        super::kernels::gelu_erf(input, output)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn swiglu(input: &[f32], output: &mut [f32], half: usize) {
        super::kernels::swiglu(input, output, half)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn softmax_rows_in_place(data: &mut [f32], width: usize, ranges: &[(usize, usize)]) {
        super::kernels::softmax_rows_in_place(data, width, ranges)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn scaled_softmax_rows(
        input: &[f32],
        output: &mut [f32],
        row: usize,
        scale: f32,
        ranges: &[(usize, usize)],
        first_row: usize,
    ) {
        super::kernels::scaled_softmax_rows(input, output, row, scale, ranges, first_row)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// Run the AVX2 build of a kernel where the CPU has it, else the baseline one.
macro_rules! dispatch {
    ($kernel:ident ( $($argument:expr),* )) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                #[allow(unsafe_code)]
                // SAFETY: AVX2 and FMA were detected on this CPU at run time.
                unsafe { avx2::$kernel($($argument),*) }
            } else {
                kernels::$kernel($($argument),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            kernels::$kernel($($argument),*)
        }
    }};
}

fn map_f32(
    storage: &CpuStorage,
    layout: &Layout,
    op: &str,
    kernel: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let input = contiguous_f32(storage, layout, op)?;
    let mut output = vec![0f32; input.len()];
    output
        .par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(output, input)| kernel(input, output));
    Ok((CpuStorage::F32(output), layout.shape().clone()))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "vidx-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_f32(storage, layout, self.name(), |input, output| {
            dispatch!(gelu_erf(input, output))
        })
    }
}

struct SwiGlu {
    half: usize,
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "vidx-swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(storage, layout, self.name())?;
        let half = self.half.max(1);
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == 2 * half => *last = half,
            _ => candle_core::bail!("swiglu: last dimension is not 2 x {half}"),
        }
        let mut output = vec![0f32; input.len() / 2];
        let rows_per_task = (CHUNK / half).max(1);
        output
            .par_chunks_mut(half * rows_per_task)
            .zip(input.par_chunks(2 * half * rows_per_task))
            .for_each(|(output, input)| dispatch!(swiglu(input, output, half)));
        Ok((CpuStorage::F32(output), Shape::from_dims(&dims)))
    }
}

/// Attention weights from raw scores: scale, keep each row's visible key range, softmax.
struct ScaledSoftmax<'a> {
    scale: f32,
    ranges: &'a [(usize, usize)],
}

impl CustomOp1 for ScaledSoftmax<'_> {
    fn name(&self) -> &'static str {
        "vidx-scaled-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(storage, layout, self.name())?;
        let row = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut output = vec![0f32; input.len()];
        let rows_per_task = (CHUNK / row).max(1);
        let (scale, ranges) = (self.scale, self.ranges);
        output
            .par_chunks_mut(row * rows_per_task)
            .zip(input.par_chunks(row * rows_per_task))
            .enumerate()
            .for_each(|(task, (output, input))| {
                let first_row = task * rows_per_task;
                dispatch!(scaled_softmax_rows(
                    input, output, row, scale, ranges, first_row
                ))
            });
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }
}

/// Softmax in place over rows of `width` (row `i` over its key range `ranges[i]`), on the
/// calling thread: for kernels that already run one task per thread.
pub(crate) fn softmax_rows_in_place(data: &mut [f32], width: usize, ranges: &[(usize, usize)]) {
    dispatch!(softmax_rows_in_place(data, width, ranges))
}

/// Whether the fused CPU kernels apply (contiguous-able f32 on the CPU).
pub fn fast_path(tensor: &Tensor) -> bool {
    tensor.device().is_cpu() && tensor.dtype() == DType::F32
}

/// GELU with the exact (erf) form.
pub fn gelu_erf(tensor: &Tensor) -> Result<Tensor> {
    if fast_path(tensor) {
        tensor.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        tensor.gelu_erf()
    }
}

/// `softmax(scale · scores)` over the last axis where row `i` (counted over all leading
/// axes) only sees keys `ranges[i % ranges.len()]` (all keys when `ranges` is empty); the
/// other weights are zero. CPU f32 only: callers check [`fast_path`].
pub fn scaled_softmax(scores: &Tensor, scale: f64, ranges: &[(usize, usize)]) -> Result<Tensor> {
    scores.contiguous()?.apply_op1_no_bwd(&ScaledSoftmax {
        scale: scale as f32,
        ranges,
    })
}

/// `silu(gate) · up` for `[.., gate | up]` with halves of `half`.
pub fn swiglu(tensor: &Tensor, half: usize) -> Result<Tensor> {
    if fast_path(tensor) {
        return tensor.contiguous()?.apply_op1_no_bwd(&SwiGlu { half });
    }
    #[cfg(feature = "cuda")]
    if let Some(output) = crate::fused::swiglu(tensor, half)? {
        return Ok(output);
    }
    swiglu_ops(tensor, half)
}

/// [`swiglu`] with candle's tensor ops (the GPU's fallback and the reference of its kernel).
pub fn swiglu_ops(tensor: &Tensor, half: usize) -> Result<Tensor> {
    let last = tensor.rank().saturating_sub(1);
    let gate = candle_nn::ops::silu(&tensor.narrow(last, 0, half)?)?;
    gate * tensor.narrow(last, half, half)?
}

/// `norm.forward(x)` (layer norm or RMS norm over the last axis): one vidx kernel on a CUDA
/// GPU in bf16/f16, candle's elsewhere.
pub fn layer_norm(norm: &candle_nn::LayerNorm, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(output) = crate::fused::norm(
        x,
        norm.weight(),
        norm.bias(),
        norm.eps(),
        norm.remove_mean(),
    )? {
        return Ok(output);
    }
    candle_core::Module::forward(norm, x)
}

/// `norm.forward(x)` for an RMS norm, as [`layer_norm`].
pub fn rms_norm(norm: &candle_nn::RmsNorm, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(output) = crate::fused::norm(x, norm.weight(), None, norm.eps(), false)? {
        return Ok(output);
    }
    candle_core::Module::forward(norm, x)
}

/// The vision tower's attention inputs from its fused projection `qkv` `[B, T, 3·H·d]`: `q`
/// and `k` rotated by RoPE with interleaved pairs (`cos`/`sin` `[T, d/2]`, candle's `rope_i`)
/// and `v`, each `[B, H, T, d]` (`v` and, on the GPU, `q` and `k` are strided views). One
/// kernel on a CUDA GPU in bf16/f16; candle's ops elsewhere.
pub fn rope_qk(
    qkv: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if let Some(rotated) = crate::fused::rope_qk(qkv, heads, cos, sin)? {
        return Ok(rotated);
    }
    rope_qk_ops(qkv, heads, cos, sin)
}

/// [`rope_qk`] with candle's ops.
pub fn rope_qk_ops(
    qkv: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (batch, tokens, width) = qkv.dims3()?;
    let qkv = qkv
        .reshape((batch, tokens, 3, heads, width / (3 * heads)))?
        .permute((2, 0, 3, 1, 4))?;
    let query = candle_nn::rotary_emb::rope_i(&qkv.get(0)?.contiguous()?, cos, sin)?;
    let key = candle_nn::rotary_emb::rope_i(&qkv.get(1)?.contiguous()?, cos, sin)?;
    Ok((query, key, qkv.get(2)?))
}

/// The activation an [`epilogue`] applies after the bias (its code in the CUDA kernel).
pub use vidx_kernels::Activation;

/// `residual + gamma · act(x + bias)` with `bias` and `gamma` `[cols]` broadcast over the rows
/// of `x` `[.., cols]` (each part optional): what follows a linear layer's matmul. One fused
/// kernel on a CUDA GPU in bf16/f16 (candle's broadcast ops index every element with 64-bit
/// divisions there); candle's ops elsewhere, in that order.
pub fn epilogue(
    x: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    gamma: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(output) = crate::fused::epilogue(x, bias, act, gamma, residual)? {
        return Ok(output);
    }
    epilogue_ops(x, bias, act, gamma, residual)
}

/// [`epilogue`] with candle's tensor ops.
pub fn epilogue_ops(
    x: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    gamma: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let mut y = match bias {
        Some(bias) => x.broadcast_add(bias)?,
        None => x.clone(),
    };
    if act == Activation::GeluErf {
        y = gelu_erf(&y)?;
    }
    if let Some(gamma) = gamma {
        y = y.broadcast_mul(gamma)?;
    }
    match residual {
        Some(residual) => residual + y,
        None => Ok(y),
    }
}

/// `residual + gamma · act(x·Wᵀ + b)` for a linear layer `(W, b)`: its matmul, then
/// [`epilogue`] (the same ops as `Linear::forward` and the steps after it on the CPU).
pub fn linear_epilogue(
    layer: &candle_nn::Linear,
    x: &Tensor,
    act: Activation,
    gamma: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    use candle_core::Module;
    let product = candle_nn::Linear::new(layer.weight().clone(), None).forward(x)?;
    epilogue(&product, layer.bias(), act, gamma, residual)
}

/// Softmax over the last axis.
pub fn softmax_last_dim(tensor: &Tensor) -> Result<Tensor> {
    if fast_path(tensor) {
        scaled_softmax(tensor, 1.0, &[])
    } else {
        candle_nn::ops::softmax_last_dim(tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp: f32 = 0.0;
        let mut worst_erf: f32 = 0.0;
        for index in -8000..=8000 {
            let x = index as f32 / 100.0;
            let exact = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64 - exact) / exact).abs() as f32);
            let y = x / 10.0;
            let exact_erf = libm_erf(y as f64);
            worst_erf = worst_erf.max((erf(y) as f64 - exact_erf).abs() as f32);
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 6e-7, "erf absolute error {worst_erf}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    /// erf by its Maclaurin series / continued fraction in f64, as the exact reference.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // erfc by continued fraction.
            let a = x.abs();
            let mut fraction = 0.0;
            for k in (1..60).rev() {
                fraction = (k as f64 / 2.0) / (a + fraction);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + fraction);
            return (1.0 - erfc).copysign(x);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn kernels_match_candle() -> Result<()> {
        let device = candle_core::Device::Cpu;
        let x = (Tensor::randn(0f32, 3f32, (7, 333), &device)? - 1.0)?;
        let diff = |a: Tensor, b: Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        assert!(diff(gelu_erf(&x)?, x.gelu_erf()?)? < 1e-5);
        let gate_up = Tensor::randn(0f32, 2f32, (3, 4, 10), &device)?;
        let expected =
            (candle_nn::ops::silu(&gate_up.narrow(2, 0, 5)?)? * gate_up.narrow(2, 5, 5)?)?;
        assert!(diff(swiglu(&gate_up, 5)?, expected)? < 1e-5);
        assert!(diff(softmax_last_dim(&x)?, candle_nn::ops::softmax_last_dim(&x)?)? < 1e-6);
        // Scaled and ranged: equal to scale, mask with -inf, softmax.
        let scores = Tensor::randn(0f32, 1f32, (2, 3, 5), &device)?;
        let ranges = [(0, 1), (1, 4), (0, 5)];
        let mut mask = vec![f32::NEG_INFINITY; 15];
        for (row, (lo, hi)) in ranges.iter().enumerate() {
            mask[row * 5 + lo..row * 5 + hi]
                .iter_mut()
                .for_each(|m| *m = 0.0);
        }
        let mask = Tensor::from_vec(mask, (3, 5), &device)?;
        let expected =
            candle_nn::ops::softmax_last_dim(&(scores.clone() * 0.3)?.broadcast_add(&mask)?)?;
        assert!(diff(scaled_softmax(&scores, 0.3, &ranges)?, expected)? < 1e-6);
        let plain = candle_nn::ops::softmax_last_dim(&(scores.clone() * 0.3)?)?;
        assert!(diff(scaled_softmax(&scores, 0.3, &[])?, plain)? < 1e-6);
        let masked = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &device)?;
        let probabilities = softmax_last_dim(&masked)?.to_vec2::<f32>()?;
        assert!(probabilities[0][1] < 1e-30);
        assert!((probabilities[0][0] + probabilities[0][2] - 1.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn linear_epilogue_is_residual_plus_gamma_times_activated_affine() -> Result<()> {
        let device = candle_core::Device::Cpu;
        let x = Tensor::new(&[[1f32, -2.0], [0.5, 3.0]], &device)?;
        let weight = Tensor::new(&[[1f32, 0.0], [1.0, 1.0], [0.0, -1.0]], &device)?;
        let bias = Tensor::new(&[0.5f32, -1.0, 2.0], &device)?;
        let gamma = Tensor::new(&[2f32, 0.5, -1.0], &device)?;
        let residual = Tensor::new(&[[10f32, 20.0, 30.0], [40.0, 50.0, 60.0]], &device)?;
        let layer = candle_nn::Linear::new(weight, Some(bias));
        let gelu =
            |v: f32| 0.5 * v * (1.0 + libm_erf((v / std::f32::consts::SQRT_2) as f64) as f32);
        // x·Wᵀ + b = [[1.5, -2, 4], [1, 2.5, -1]].
        let affine = [[1.5f32, -2.0, 4.0], [1.0, 2.5, -1.0]];
        let (g, r) = ([2f32, 0.5, -1.0], [[10f32, 20.0, 30.0], [40.0, 50.0, 60.0]]);
        let full = linear_epilogue(
            &layer,
            &x,
            Activation::GeluErf,
            Some(&gamma),
            Some(&residual),
        )?
        .to_vec2::<f32>()?;
        let plain =
            linear_epilogue(&layer, &x, Activation::Identity, None, None)?.to_vec2::<f32>()?;
        for row in 0..2 {
            for col in 0..3 {
                let expected = r[row][col] + g[col] * gelu(affine[row][col]);
                assert!(
                    (full[row][col] - expected).abs() < 1e-4,
                    "{row},{col}: {full:?}"
                );
                assert!(
                    (plain[row][col] - affine[row][col]).abs() < 1e-6,
                    "{plain:?}"
                );
            }
        }
        Ok(())
    }
}
