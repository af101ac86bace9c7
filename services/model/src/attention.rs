//! Scaled dot-product attention computed in slices of heads, so the score matrix of a slice
//! stays a few MB: it stays in cache, and large short-lived allocations (fresh pages from the
//! kernel each time) are avoided. The result equals the unsliced computation.

use candle_core::{DType, IndexOp, Result, Tensor};

/// Bytes of f32 scores per slice.
const SLICE_BUDGET: usize = 8 << 20;

/// How many of `count` heads fit one slice when each has `rows × keys` scores.
fn heads_per_slice(count: usize, rows: usize, keys: usize) -> usize {
    (SLICE_BUDGET / (rows * keys * 4).max(1)).clamp(1, count.max(1))
}

/// `softmax(q·kᵀ·scale)·v` for `q`, `k`, `v` of shape `[heads, rows, d]` (any strides the
/// matmul accepts), without a mask.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (heads, rows, _) = q.dims3()?;
    let keys = k.dim(1)?;
    let step = heads_per_slice(heads, rows, keys);
    let mut parts = Vec::with_capacity(heads.div_ceil(step));
    for start in (0..heads).step_by(step) {
        let count = step.min(heads - start);
        let scores = q
            .narrow(0, start, count)?
            .matmul(&k.narrow(0, start, count)?.t()?)?;
        let weights = if crate::ops::fast_path(&scores) {
            crate::ops::scaled_softmax(&scores, scale, &[])?
        } else {
            candle_nn::ops::softmax_last_dim(&(scores * scale)?)?
        };
        parts.push(weights.matmul(&v.narrow(0, start, count)?)?);
    }
    Tensor::cat(&parts, 0)
}

/// Grouped-query attention for one batch row: `q` `[kv_heads, group·rows, d]` (the query heads
/// sharing a KV head stacked along the rows), `k`/`v` `[kv_heads, keys, d]`. Query row `r`
/// sees keys `visible[r]` (`None`: all keys). Scores and softmax in f32.
pub fn attend_grouped(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    group: usize,
    visible: Option<&[(usize, usize)]>,
) -> Result<Tensor> {
    let (kv_heads, stacked, _) = q.dims3()?;
    let rows = stacked / group.max(1);
    let keys = k.dim(1)?;
    let step = heads_per_slice(kv_heads, stacked, keys);
    // Off the CPU fast path: the same visibility as an additive mask.
    let mask = match visible {
        Some(ranges) if !crate::ops::fast_path(q) => {
            let mut values = vec![f32::NEG_INFINITY; rows * keys];
            for (row, (lo, hi)) in ranges.iter().enumerate() {
                values[row * keys + lo..row * keys + hi]
                    .iter_mut()
                    .for_each(|value| *value = 0.0);
            }
            Some(Tensor::from_vec(values, (rows, keys), q.device())?)
        }
        _ => None,
    };
    let mut parts = Vec::with_capacity(kv_heads.div_ceil(step));
    for start in (0..kv_heads).step_by(step) {
        let count = step.min(kv_heads - start);
        let scores = q
            .narrow(0, start, count)?
            .matmul(&k.narrow(0, start, count)?.t()?)?;
        let values = v.narrow(0, start, count)?;
        let weights = if crate::ops::fast_path(&scores) {
            crate::ops::scaled_softmax(&scores, scale, visible.unwrap_or(&[]))?
        } else {
            let scores = (scores * scale)?.to_dtype(DType::F32)?;
            let scores = match &mask {
                Some(mask) => scores
                    .reshape((count, group, rows, keys))?
                    .broadcast_add(mask)?
                    .reshape((count, stacked, keys))?,
                None => scores,
            };
            candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(values.dtype())?
        };
        parts.push(weights.matmul(&values)?);
    }
    Tensor::cat(&parts, 0)
}

/// Per-row grouped attention over a batch: `q` `[B, kv_heads, group·rows, d]`, `k`/`v`
/// `[B, kv_heads, keys, d]`, `visible[b][r]` the key range of query `r` of row `b`.
pub fn attend_grouped_batch(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    group: usize,
    visible: Option<&[Vec<(usize, usize)>]>,
) -> Result<Tensor> {
    let batch = q.dim(0)?;
    let rows = (0..batch)
        .map(|row| {
            attend_grouped(
                &q.i(row)?,
                &k.i(row)?,
                &v.i(row)?,
                scale,
                group,
                visible.map(|ranges| ranges[row].as_slice()),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}
