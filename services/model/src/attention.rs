//! Scaled dot-product attention.
//!
//! On the CPU in f32, [`attend_cpu`] is one fused kernel: each (batch row, query head) is one
//! parallel task that walks its queries in blocks, multiplies a block only against the keys
//! its rows can see (causal blocks skip the masked keys), applies the softmax in place in a
//! cache-sized scratch buffer and accumulates `weights · V` straight into the output. On a
//! CUDA GPU in bf16/f16 with head dim 64, `fused::attend` runs the same computation as one
//! flash-attention style kernel ([`attend_fused`] picks either). Elsewhere the functions below
//! compute it with tensor ops, in slices of heads so the score matrix of a slice stays a few MB.

use candle_core::{CpuStorage, CustomOp3, DType, IndexOp, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Bytes of f32 scores per slice on the CPU (cache-sized).
const SLICE_BUDGET: usize = 8 << 20;
/// The same on a GPU: large, so that a slice is a few big kernels rather than thousands of
/// small ones (the vision tower has frames x heads of them).
const GPU_SLICE_BUDGET: usize = 2 << 30;

/// The keys each query of each batch row sees (`ranges[b][i]`), and, off the CPU fast path,
/// the same as additive f32 masks `[rows, keys]` per row — built once on first use and shared
/// by every layer of a forward pass (on a GPU, building and uploading a prefill chunk's mask
/// per layer would cost more than the attention itself).
#[derive(Debug)]
pub struct Visibility {
    ranges: Vec<Vec<(usize, usize)>>,
    masks: std::sync::OnceLock<Vec<Tensor>>,
    stacked: std::sync::OnceLock<Tensor>,
    /// The ranges as a `[B, L, 2]` u32 tensor on the device (the fused GPU kernel's input).
    on_device: std::sync::OnceLock<Tensor>,
}

impl Visibility {
    pub fn new(ranges: Vec<Vec<(usize, usize)>>) -> Self {
        Self {
            ranges,
            masks: std::sync::OnceLock::new(),
            stacked: std::sync::OnceLock::new(),
            on_device: std::sync::OnceLock::new(),
        }
    }

    /// The ranges as `[B, rows, 2]` u32 `(lo, hi)` on `device`, uploaded once.
    pub fn ranges_on(
        &self,
        device: &candle_core::Device,
        batch: usize,
        rows: usize,
    ) -> Result<&Tensor> {
        if self.ranges.len() != batch || self.ranges.iter().any(|row| row.len() != rows) {
            candle_core::bail!("visible ranges do not cover {batch} x {rows} queries");
        }
        if self.on_device.get().is_none() {
            let clamp = |value: usize| value.min(u32::MAX as usize) as u32;
            let flat: Vec<u32> = self
                .ranges
                .iter()
                .flatten()
                .flat_map(|&(lo, hi)| [clamp(lo), clamp(hi)])
                .collect();
            let _ = self
                .on_device
                .set(Tensor::from_vec(flat, (batch, rows, 2), device)?);
        }
        match self.on_device.get() {
            Some(ranges) => Ok(ranges),
            None => candle_core::bail!("visible ranges were not uploaded"),
        }
    }

    /// Every row's mask, `[B, rows, keys]` (built once, like [`Visibility::mask`]).
    fn stacked(&self, keys: usize, device: &candle_core::Device, dtype: DType) -> Result<&Tensor> {
        if self.stacked.get().is_none() {
            let rows = (0..self.ranges.len())
                .map(|row| self.mask(row, keys, device, dtype).cloned())
                .collect::<Result<Vec<_>>>()?;
            let _ = self.stacked.set(Tensor::stack(&rows, 0)?);
        }
        match self.stacked.get() {
            Some(stacked) if stacked.dim(2)? == keys => Ok(stacked),
            _ => candle_core::bail!("visibility masks over {keys} keys"),
        }
    }

    pub fn ranges(&self) -> &[Vec<(usize, usize)>] {
        &self.ranges
    }

    /// Row `row`'s mask over `keys` keys on `device`, in `dtype` (the scores').
    fn mask(
        &self,
        row: usize,
        keys: usize,
        device: &candle_core::Device,
        dtype: DType,
    ) -> Result<&Tensor> {
        if self.masks.get().is_none() {
            let masks = self
                .ranges
                .iter()
                .map(|ranges| additive_mask(ranges, keys, device)?.to_dtype(dtype))
                .collect::<Result<Vec<_>>>()?;
            let _ = self.masks.set(masks);
        }
        match self.masks.get().and_then(|masks| masks.get(row)) {
            Some(mask) if mask.dim(1)? == keys => Ok(mask),
            _ => candle_core::bail!("visibility mask for row {row} over {keys} keys"),
        }
    }
}

/// `0` where query `r` sees key `k` (`ranges[r]`), `-inf` elsewhere: `[rows, keys]` f32.
fn additive_mask(
    ranges: &[(usize, usize)],
    keys: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let rows = ranges.len();
    let mut values = vec![f32::NEG_INFINITY; rows * keys];
    for (row, (lo, hi)) in ranges.iter().enumerate() {
        values[row * keys + lo..row * keys + hi]
            .iter_mut()
            .for_each(|value| *value = 0.0);
    }
    Tensor::from_vec(values, (rows, keys), device)
}

/// How many of `count` heads fit one slice when each has `rows × keys` scores.
fn heads_per_slice(count: usize, rows: usize, keys: usize, device: &candle_core::Device) -> usize {
    let budget = if device.is_cpu() {
        SLICE_BUDGET
    } else {
        GPU_SLICE_BUDGET
    };
    (budget / (rows * keys * 4).max(1)).clamp(1, count.max(1))
}

/// `softmax(q·kᵀ·scale)·v` for `q`, `k`, `v` of shape `[heads, rows, d]` (any strides the
/// matmul accepts), without a mask. Off the CPU fast path the scale is applied to `q` and the
/// scores stay in the inputs' dtype (candle's GPU softmax accumulates in f32), as
/// transformers' eager attention does: each pass over the score matrix is memory traffic.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (heads, rows, _) = q.dims3()?;
    let keys = k.dim(1)?;
    let step = heads_per_slice(heads, rows, keys, q.device());
    let fast = crate::ops::fast_path(q);
    let q = if fast { q.clone() } else { (q * scale)? };
    let mut parts = Vec::with_capacity(heads.div_ceil(step));
    for start in (0..heads).step_by(step) {
        let count = step.min(heads - start);
        let scores = q
            .narrow(0, start, count)?
            .matmul(&k.narrow(0, start, count)?.t()?)?;
        let weights = if fast {
            crate::ops::scaled_softmax(&scores, scale, &[])?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        parts.push(weights.matmul(&v.narrow(0, start, count)?)?);
    }
    Tensor::cat(&parts, 0)
}

/// Grouped-query attention for one batch row: `q` `[kv_heads, group·rows, d]` (the query heads
/// sharing a KV head stacked along the rows), `k`/`v` `[kv_heads, keys, d]`. Query row `r`
/// sees keys `visible[r]` (`None`: all keys); `mask`, when given, is the same visibility as
/// an additive mask in the inputs' dtype (see [`Visibility`]). Off the CPU fast path the
/// scale goes into `q` and the scores stay in the inputs' dtype, as in [`attend`].
pub fn attend_grouped(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    group: usize,
    visible: Option<&[(usize, usize)]>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (kv_heads, stacked, _) = q.dims3()?;
    let rows = stacked / group.max(1);
    let keys = k.dim(1)?;
    let step = heads_per_slice(kv_heads, stacked, keys, q.device());
    let fast = crate::ops::fast_path(q);
    // Off the CPU fast path: the same visibility as an additive mask.
    let built;
    let mask = match (visible, mask) {
        (Some(_), Some(mask)) if !fast => Some(mask),
        (Some(ranges), None) if !fast => {
            built = additive_mask(ranges, keys, q.device())?.to_dtype(q.dtype())?;
            Some(&built)
        }
        _ => None,
    };
    let q = if fast { q.clone() } else { (q * scale)? };
    let mut parts = Vec::with_capacity(kv_heads.div_ceil(step));
    for start in (0..kv_heads).step_by(step) {
        let count = step.min(kv_heads - start);
        let scores = q
            .narrow(0, start, count)?
            .matmul(&k.narrow(0, start, count)?.t()?)?;
        let values = v.narrow(0, start, count)?;
        let weights = if fast {
            crate::ops::scaled_softmax(&scores, scale, visible.unwrap_or(&[]))?
        } else {
            let scores = match &mask {
                Some(mask) => scores
                    .reshape((count, group, rows, keys))?
                    .broadcast_add(mask)?
                    .reshape((count, stacked, keys))?,
                None => scores,
            };
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        parts.push(weights.matmul(&values)?);
    }
    Tensor::cat(&parts, 0)
}

/// Grouped attention over a batch: `q` `[B, kv_heads, group·rows, d]`, `k`/`v`
/// `[B, kv_heads, keys, d]` (views of a cache are fine), `visible[b][r]` the key range of query
/// `r` of row `b`. Off the CPU fast path, as many whole batch rows as fit the slice budget go
/// through one batched matmul and softmax (a decode step of 32 segments is a few kernels per
/// layer, not 32 times as many); a row too large for the budget is sliced by KV head.
pub fn attend_grouped_batch(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    group: usize,
    visible: Option<&Visibility>,
) -> Result<Tensor> {
    let batch = q.dim(0)?;
    let keys = k.dim(2)?;
    if !crate::ops::fast_path(q) {
        let (kv_heads, stacked) = (q.dim(1)?, q.dim(2)?);
        let per_row = kv_heads * stacked * keys * 4;
        let budget = if q.device().is_cpu() {
            SLICE_BUDGET
        } else {
            GPU_SLICE_BUDGET
        };
        let rows_per_slice = budget / per_row.max(1);
        if rows_per_slice >= 1 {
            return attend_rows(q, k, v, scale, group, visible, rows_per_slice.min(batch));
        }
    }
    let rows = (0..batch)
        .map(|row| {
            let (ranges, mask) = match visible {
                Some(visible) if !crate::ops::fast_path(q) => (
                    Some(visible.ranges[row].as_slice()),
                    Some(visible.mask(row, keys, q.device(), q.dtype())?),
                ),
                Some(visible) => (Some(visible.ranges[row].as_slice()), None),
                None => (None, None),
            };
            attend_grouped(
                &q.i(row)?,
                &k.i(row)?,
                &v.i(row)?,
                scale,
                group,
                ranges,
                mask,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

/// [`attend_grouped_batch`] off the CPU fast path, `step` whole batch rows per slice.
fn attend_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    group: usize,
    visible: Option<&Visibility>,
    step: usize,
) -> Result<Tensor> {
    let (batch, kv_heads, stacked, _) = q.dims4()?;
    let rows = stacked / group.max(1);
    let keys = k.dim(2)?;
    let masks = match visible {
        Some(visible) => Some(visible.stacked(keys, q.device(), q.dtype())?),
        None => None,
    };
    let q = (q * scale)?;
    let mut parts = Vec::with_capacity(batch.div_ceil(step));
    for start in (0..batch).step_by(step.max(1)) {
        let count = step.min(batch - start);
        let scores = q
            .narrow(0, start, count)?
            .matmul(&k.narrow(0, start, count)?.t()?)?;
        let scores = match masks {
            Some(masks) => scores
                .reshape((count, kv_heads, group, rows, keys))?
                .broadcast_add(
                    &masks
                        .narrow(0, start, count)?
                        .reshape((count, 1, 1, rows, keys))?,
                )?
                .reshape((count, kv_heads, stacked, keys))?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        parts.push(weights.matmul(&v.narrow(0, start, count)?)?);
    }
    Tensor::cat(&parts, 0)
}

/// `softmax(q·kᵀ·scale)·v` by a fused kernel where one applies: on the CPU in f32
/// ([`attend_cpu`]), on a CUDA GPU in bf16/f16 with head dim 64 (`fused::attend`, with the
/// `cuda` feature). Same contract as [`attend_cpu`]: `q` `[B, Hq, L, d]`, `k`/`v`
/// `[B, Hkv, K, d]`, query `i` of row `b` sees `visible.ranges()[b][i]`; returns
/// `[B, L, Hq, d]`, or `None` when no kernel applies (use the tensor-op functions then).
pub fn attend_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    visible: Option<&Visibility>,
) -> Result<Option<Tensor>> {
    if let Some(output) = attend_cpu(q, k, v, scale, visible.map(Visibility::ranges))? {
        return Ok(Some(output));
    }
    #[cfg(feature = "cuda")]
    if let Some(output) = crate::fused::attend(q, k, v, scale, visible)? {
        return Ok(Some(output));
    }
    Ok(None)
}

/// How far [`attend_fused`] on `device` in `dtype` lies from the tensor-op attention computed
/// in f32 on the same device from the same (rounded) inputs: the largest absolute difference
/// per case, `None` where no fused kernel applies. The cases are the decoder's prefill (grouped
/// heads, keys as a view of a larger cache, causal ranges with one row left-padded), a short
/// chunk (two queries per row, every key visible), a decode step at batch 32 (one query per
/// row, padded rows) and the vision tower (no mask, values as a view of the fused qkv
/// projection). The device benchmark runs it before timing the GPU kernel.
pub fn fused_error(
    device: &candle_core::Device,
    dtype: DType,
) -> Result<Vec<(&'static str, Option<f32>)>> {
    fused_error_with(device, dtype, &attend_fused)
}

/// A fused attention: [`attend_fused`]'s signature.
pub type AttentionKernel<'a> =
    dyn Fn(&Tensor, &Tensor, &Tensor, f64, Option<&Visibility>) -> Result<Option<Tensor>> + 'a;

/// [`fused_error`] for a given kernel (the CUDA start-up check passes its kernel directly).
pub fn fused_error_with(
    device: &candle_core::Device,
    dtype: DType,
    fused: &AttentionKernel,
) -> Result<Vec<(&'static str, Option<f32>)>> {
    let head_dim = 64;
    let mut errors = Vec::new();
    // Prefill: 2 rows of 200 new queries after 40 cached positions, 8 query heads on 2 KV heads.
    let (batch, heads, kv_heads, rows, past) = (2, 8, 2, 200, 40);
    let keys = past + rows;
    let q = Tensor::randn(0f32, 1.0, (batch, rows, heads, head_dim), device)?
        .to_dtype(dtype)?
        .transpose(1, 2)?;
    let cache = |seed: f32| {
        Tensor::randn(seed, 1.0, (batch, kv_heads, keys + 60, head_dim), device)?
            .to_dtype(dtype)?
            .narrow(2, 0, keys)
    };
    let (k, v) = (cache(0.0)?, cache(0.5)?);
    let visible = Visibility::new(
        [0usize, 7 + past]
            .iter()
            .map(|&pad| {
                (past..keys)
                    .map(|query| {
                        if query < pad {
                            (query, query + 1)
                        } else {
                            (pad.min(past), query + 1)
                        }
                    })
                    .collect()
            })
            .collect(),
    );
    errors.push((
        "prefill",
        fused_vs_f32(fused, &q, &k, &v, 0.125, Some(&visible))?,
    ));
    // The end of a prefill: 3 rows, two queries each over 1000 keys (all visible), 32 query
    // heads on 8 KV heads.
    let q = Tensor::randn(0f32, 1.0, (3, 32, 2, head_dim), device)?.to_dtype(dtype)?;
    let k = Tensor::randn(0f32, 1.0, (3, 8, 1000, head_dim), device)?.to_dtype(dtype)?;
    let v = Tensor::randn(0f32, 1.0, (3, 8, 1000, head_dim), device)?.to_dtype(dtype)?;
    errors.push(("short", fused_vs_f32(fused, &q, &k, &v, 0.125, None)?));
    // A decode step of 32 rows (one query each, 32 query heads on 8 KV heads) over 130 cached
    // keys, every other row left-padded by 9.
    let (batch, keys) = (32, 130);
    let q = Tensor::randn(0f32, 1.0, (batch, 32, 1, head_dim), device)?.to_dtype(dtype)?;
    let k = Tensor::randn(0f32, 1.0, (batch, 8, keys, head_dim), device)?.to_dtype(dtype)?;
    let v = Tensor::randn(0f32, 1.0, (batch, 8, keys, head_dim), device)?.to_dtype(dtype)?;
    let visible = Visibility::new((0..batch).map(|row| vec![(9 * (row % 2), keys)]).collect());
    errors.push((
        "decode",
        fused_vs_f32(fused, &q, &k, &v, 0.125, Some(&visible))?,
    ));
    // Vision: 3 frames of 257 tokens, 4 heads, values a view of the qkv projection.
    let (frames, tokens, heads) = (3, 257, 4);
    let qkv = Tensor::randn(0f32, 1.0, (frames, tokens, 3, heads, head_dim), device)?
        .to_dtype(dtype)?
        .permute((2, 0, 3, 1, 4))?;
    let (q, k, v) = (
        qkv.get(0)?.contiguous()?,
        qkv.get(1)?.contiguous()?,
        qkv.get(2)?,
    );
    errors.push(("vision", fused_vs_f32(fused, &q, &k, &v, 0.125, None)?));
    Ok(errors)
}

/// `fused` against [`attend_grouped_batch`] in f32: the largest absolute difference.
fn fused_vs_f32(
    fused: &AttentionKernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    visible: Option<&Visibility>,
) -> Result<Option<f32>> {
    let Some(fused) = fused(q, k, v, scale, visible)? else {
        return Ok(None);
    };
    let (batch, heads, rows, head_dim) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let group = heads / kv_heads;
    let f32 = |tensor: &Tensor| tensor.to_dtype(DType::F32)?.contiguous();
    let visible = visible.map(|visible| Visibility::new(visible.ranges().to_vec()));
    let expected = attend_grouped_batch(
        &f32(q)?.reshape((batch, kv_heads, group * rows, head_dim))?,
        &f32(k)?,
        &f32(v)?,
        scale,
        group,
        visible.as_ref(),
    )?
    .reshape((batch, heads, rows, head_dim))?
    .transpose(1, 2)?;
    worst(&(fused.to_dtype(DType::F32)? - expected)?.abs()?).map(Some)
}

/// The largest of an f32 tensor of errors, or NaN when one is not finite (`max` would step
/// over a NaN). Shared by the kernel checks.
pub fn worst(errors: &Tensor) -> Result<f32> {
    let errors = errors.flatten_all()?;
    if !errors.sum_all()?.to_scalar::<f32>()?.is_finite() {
        return Ok(f32::NAN);
    }
    errors.max(0)?.to_scalar::<f32>()
}

/// Scratch scores per query block (f32): small enough to stay in L2.
const BLOCK_BUDGET: usize = 512 << 10;

/// `softmax(q·kᵀ·scale)·v` on the CPU in f32 for `q` `[B, Hq, L, d]` and `k`/`v`
/// `[B, Hkv, K, d]` — any strides with a unit last stride, so transposed views of a
/// `[B, L, H, d]` projection or of a KV cache need no copy. Query head `h` reads KV head
/// `h / (Hq / Hkv)` (grouped-query attention). Query `i` of row `b` sees the keys
/// `visible[b][i]` (`None`: all keys). Returns the heads-last layout `[B, L, Hq, d]` (what the
/// output projection reads), or `None` when the inputs are not CPU f32 (use the tensor-op
/// functions then).
pub fn attend_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    visible: Option<&[Vec<(usize, usize)>]>,
) -> Result<Option<Tensor>> {
    if !(crate::ops::fast_path(q) && crate::ops::fast_path(k) && crate::ops::fast_path(v)) {
        return Ok(None);
    }
    let contiguous_rows = |tensor: &Tensor| -> Result<Tensor> {
        if tensor.stride().last() == Some(&1) {
            Ok(tensor.clone())
        } else {
            tensor.contiguous()
        }
    };
    let op = FusedAttention {
        scale: scale as f32,
        visible,
    };
    let (q, k, v) = (
        contiguous_rows(q)?,
        contiguous_rows(k)?,
        contiguous_rows(v)?,
    );
    Ok(Some(q.apply_op3_no_bwd(&k, &v, &op)?))
}

struct FusedAttention<'a> {
    scale: f32,
    visible: Option<&'a [Vec<(usize, usize)>]>,
}

/// One operand of the kernel: its values and where row `r` of head `h` of batch row `b` starts.
struct Operand<'a> {
    values: &'a [f32],
    start: usize,
    strides: [usize; 3],
}

impl<'a> Operand<'a> {
    /// Checks that every `[dims[0], dims[1], dims[2], head_dim]` row lies inside the storage,
    /// so the raw reads below stay in bounds.
    fn new(storage: &'a CpuStorage, layout: &Layout, name: &str) -> Result<(Self, [usize; 4])> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("attention: {name} must be f32");
        };
        let dims: [usize; 4] = layout
            .dims()
            .try_into()
            .map_err(|_| candle_core::Error::Msg(format!("attention: {name} must be 4-D")))?;
        let stride = layout.stride();
        if stride[3] != 1 {
            candle_core::bail!("attention: {name} rows must be contiguous");
        }
        let start = layout.start_offset();
        let last = (0..3)
            .map(|axis| dims[axis].saturating_sub(1) * stride[axis])
            .sum::<usize>()
            + dims[3];
        if dims.contains(&0) || start + last > values.len() {
            candle_core::bail!("attention: {name} {dims:?} does not fit its storage");
        }
        let operand = Self {
            values,
            start,
            strides: [stride[0], stride[1], stride[2]],
        };
        Ok((operand, dims))
    }

    fn row(&self, batch: usize, head: usize, row: usize) -> *const f32 {
        let offset =
            self.start + batch * self.strides[0] + head * self.strides[1] + row * self.strides[2];
        self.values[offset..].as_ptr()
    }
}

impl CustomOp3 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "vidx-fused-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, [batch, heads, rows, head_dim]) = Operand::new(q_storage, q_layout, "q")?;
        let (k, [k_batch, kv_heads, keys, k_dim]) = Operand::new(k_storage, k_layout, "k")?;
        let (v, v_dims) = Operand::new(v_storage, v_layout, "v")?;
        if [k_batch, kv_heads, keys, k_dim] != v_dims
            || k_batch != batch
            || k_dim != head_dim
            || heads % kv_heads != 0
        {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {v_dims:?} do not match",
                q_layout.dims(),
                k_layout.dims()
            );
        }
        if let Some(visible) = self.visible
            && (visible.len() != batch || visible.iter().any(|row| row.len() != rows))
        {
            candle_core::bail!("attention: visible ranges do not cover {batch} x {rows} queries");
        }
        let group = heads / kv_heads;
        let block = (BLOCK_BUDGET / (4 * keys)).clamp(16, 256).min(rows);
        // Heads-last output `[B, L, Hq, d]`: task (b, head) writes the `d` values of its head
        // in each of its rows, a column set no other task touches.
        let mut output = vec![0f32; batch * rows * heads * head_dim];
        let row_stride = heads * head_dim;
        let destination = Destination(output.as_mut_ptr());
        (0..batch * heads).into_par_iter().for_each(|task| {
            let (b, head) = (task / heads, task % heads);
            let destination = &destination;
            let kv_head = head / group;
            let mut scores = vec![0f32; block * keys];
            let mut ranges = Vec::with_capacity(block);
            for first in (0..rows).step_by(block) {
                let count = block.min(rows - first);
                ranges.clear();
                match self.visible {
                    Some(visible) => ranges.extend(
                        visible[b][first..first + count]
                            .iter()
                            .map(|&(lo, hi)| (lo.min(keys), hi.min(keys))),
                    ),
                    None => ranges.resize(count, (0, keys)),
                }
                let low = ranges.iter().map(|range| range.0).min().unwrap_or(0);
                let high = ranges.iter().map(|range| range.1).max().unwrap_or(0);
                let width = high.saturating_sub(low);
                if width == 0 {
                    // No visible key: the rows keep their zeros.
                    continue;
                }
                let out_offset = (b * rows + first) * row_stride + head * head_dim;
                ranges.iter_mut().for_each(|range| {
                    *range = (range.0.saturating_sub(low), range.1.saturating_sub(low))
                });
                let scores = &mut scores[..count * width];
                #[allow(unsafe_code)]
                // SAFETY: `Operand::new` checked that every row of q, k and v lies inside
                // its storage, and the reads stay within rows `first..first + count` of q
                // and keys `low..high` (≤ keys) of k and v, `head_dim` values each. The
                // scores are this task's own buffer of `count × width`. The output writes
                // stay inside `output` (row `b·L + first + count - 1` is < B·L, columns
                // `head·d..(head + 1)·d` < Hq·d), touch only this task's (b, head) columns,
                // and `output` outlives the parallel loop.
                unsafe {
                    // scores = scale · q_block · k[low..high]ᵀ
                    gemm::gemm(
                        count,
                        width,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        width as isize,
                        false,
                        q.row(b, head, first),
                        1,
                        q.strides[2] as isize,
                        k.row(b, kv_head, low),
                        k.strides[2] as isize,
                        1,
                        0.0,
                        self.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    crate::ops::softmax_rows_in_place(scores, width, &ranges);
                    // out_block = weights · v[low..high]
                    gemm::gemm(
                        count,
                        head_dim,
                        width,
                        destination.0.add(out_offset),
                        1,
                        row_stride as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        width as isize,
                        v.row(b, kv_head, low),
                        1,
                        v.strides[2] as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        Ok((
            CpuStorage::F32(output),
            Shape::from_dims(&[batch, rows, heads, head_dim]),
        ))
    }
}

/// The output buffer shared by the parallel tasks, each writing its own columns.
struct Destination(*mut f32);

#[allow(unsafe_code)]
// SAFETY: the tasks write disjoint elements (see the kernel) and the buffer outlives them.
unsafe impl Sync for Destination {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Attention computed the slow, obvious way in f64.
    fn naive(
        q: &[Vec<Vec<Vec<f32>>>],
        k: &[Vec<Vec<Vec<f32>>>],
        v: &[Vec<Vec<Vec<f32>>>],
        scale: f64,
        visible: &[Vec<(usize, usize)>],
    ) -> Vec<f32> {
        let group = q[0].len() / k[0].len();
        let mut out = Vec::new();
        for (b, heads) in q.iter().enumerate() {
            for (h, rows) in heads.iter().enumerate() {
                let (keys, values) = (&k[b][h / group], &v[b][h / group]);
                for (i, query) in rows.iter().enumerate() {
                    let (lo, hi) = visible[b][i];
                    let scores: Vec<f64> = (lo..hi)
                        .map(|j| {
                            let dot: f64 = query
                                .iter()
                                .zip(&keys[j])
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum();
                            dot * scale
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    let mut mixed = vec![0f64; query.len()];
                    for (j, w) in (lo..hi).zip(&weights) {
                        for (m, value) in mixed.iter_mut().zip(&values[j]) {
                            *m += w * *value as f64;
                        }
                    }
                    out.extend(mixed.iter().map(|m| (m / total) as f32));
                }
            }
        }
        out
    }

    #[test]
    fn fused_kernel_matches_naive_attention_with_groups_padding_and_cache_views() -> Result<()> {
        let device = Device::Cpu;
        let (batch, heads, kv_heads, rows, head_dim) = (2, 4, 2, 37, 16);
        let (past, capacity) = (8, 64);
        let keys = past + rows;
        let q = Tensor::randn(0f32, 1.0, (batch, heads, rows, head_dim), &device)?;
        // K/V as views into a larger cache buffer, as the decoder passes them.
        let k_cache = Tensor::randn(0f32, 1.0, (batch, kv_heads, capacity, head_dim), &device)?;
        let v_cache = Tensor::randn(0f32, 1.0, (batch, kv_heads, capacity, head_dim), &device)?;
        let (k, v) = (k_cache.narrow(2, 0, keys)?, v_cache.narrow(2, 0, keys)?);
        // Row 0: causal. Row 1: 5 left-padding positions, which see only themselves.
        let visible: Vec<Vec<(usize, usize)>> = [0usize, 5]
            .iter()
            .map(|pad| {
                (past..past + rows)
                    .map(|query| {
                        if query < *pad {
                            (query, query + 1)
                        } else {
                            (*pad, query + 1)
                        }
                    })
                    .collect()
            })
            .collect();
        let scale = 0.25;
        let fused = attend_cpu(&q, &k, &v, scale, Some(&visible))?
            .expect("CPU f32 takes the fused kernel")
            .transpose(1, 2)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let expected = naive(&q.to_vec4()?, &k.to_vec4()?, &v.to_vec4()?, scale, &visible);
        let worst = fused
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(fused.len(), expected.len());
        assert!(worst < 1e-5, "max abs diff {worst}");

        // Without ranges every query sees every key, and it agrees with the tensor-op path.
        // Queries as a transposed view of a heads-last projection, as the decoder passes them.
        let q_view = q.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
        let all = attend_cpu(&q_view, &k, &v, scale, None)?
            .expect("fused")
            .transpose(1, 2)?;
        let reference = attend_grouped_batch(
            &q.reshape((batch, kv_heads, 2 * rows, head_dim))?,
            &k.contiguous()?,
            &v.contiguous()?,
            scale,
            2,
            None,
        )?
        .reshape((batch, heads, rows, head_dim))?;
        let diff = (all - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max abs diff {diff}");

        // The tensor-op path a GPU takes (here f64, off the fused kernel), with the masks that
        // one `Visibility` builds once and every layer shares: the same as the naive reference.
        let visibility = Visibility::new(visible.clone());
        let as_f64 = |t: &Tensor| t.to_dtype(DType::F64)?.contiguous();
        for _layer in 0..2 {
            let masked = attend_grouped_batch(
                &as_f64(&q)?.reshape((batch, kv_heads, 2 * rows, head_dim))?,
                &as_f64(&k)?,
                &as_f64(&v)?,
                scale,
                2,
                Some(&visibility),
            )?
            .reshape((batch, heads, rows, head_dim))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
            let worst = masked
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "masked tensor-op path: max abs diff {worst}");
        }
        Ok(())
    }

    #[test]
    fn fused_error_is_small_for_the_cpu_kernel_and_the_output_depends_on_the_scale() -> Result<()> {
        let errors = fused_error(&Device::Cpu, DType::F32)?;
        let names: Vec<_> = errors.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["prefill", "short", "decode", "vision"]);
        for (name, error) in errors {
            let error = error.expect("the CPU kernel applies to f32");
            assert!(error < 1e-4, "{name}: max abs diff {error}");
        }
        // No fused kernel for f64 on the CPU: nothing to compare, said as such.
        assert!(
            fused_error(&Device::Cpu, DType::F64)?
                .iter()
                .all(|(_, error)| error.is_none())
        );
        // The comparison is not blind: a wrong scale shows up.
        let q = Tensor::randn(0f32, 1.0, (1, 2, 9, 64), &Device::Cpu)?;
        let k = Tensor::randn(0f32, 1.0, (1, 2, 9, 64), &Device::Cpu)?;
        let v = Tensor::randn(0f32, 1.0, (1, 2, 9, 64), &Device::Cpu)?;
        let right = attend_fused(&q, &k, &v, 0.125, None)?.expect("fused");
        let wrong = attend_fused(&q, &k, &v, 0.5, None)?.expect("fused");
        let gap = (right - wrong)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(gap > 1e-2, "a 4x scale changes the output: {gap}");
        Ok(())
    }

    trait ToVec4 {
        fn to_vec4(&self) -> Result<Vec<Vec<Vec<Vec<f32>>>>>;
    }

    impl ToVec4 for Tensor {
        fn to_vec4(&self) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
            (0..self.dim(0)?)
                .map(|index| self.i(index)?.to_vec3::<f32>())
                .collect()
        }
    }
}
