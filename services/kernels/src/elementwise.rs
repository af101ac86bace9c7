//! The fused element-wise kernels of `kernels/elementwise.cu` as candle ops: a linear layer's
//! epilogue (bias, GELU, layer scale, residual), SwiGLU, the vision tower's RoPE and layer/RMS
//! norm, each in bf16 and f16. Every function returns `None` where its kernel does not apply;
//! none of them checks that the kernel agrees with candle's ops on the device: `vidx-model`
//! does that once per process before it uses them.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape};
use candle_core::{Storage, Tensor, bail};

use crate::Activation;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/elementwise.ptx"));
/// Whether `tensor` is a contiguous bf16/f16 tensor of `dtype` on a CUDA device.
fn usable(tensor: &Tensor, dtype: DType) -> bool {
    tensor.device().is_cuda()
        && tensor.dtype() == dtype
        && matches!(dtype, DType::BF16 | DType::F16)
        && tensor.is_contiguous()
}

/// `residual + gamma · act(x + bias)` over the last axis of `x` (`bias`, `gamma` `[cols]`, the
/// residual shaped as `x`; each optional) in one kernel; `None` when it does not apply (not a
/// contiguous bf16/f16 CUDA tensor, shapes off).
pub fn epilogue(
    x: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    gamma: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let Some(&cols) = x.dims().last() else {
        return Ok(None);
    };
    let vector = |tensor: Option<&Tensor>| {
        tensor.is_none_or(|tensor| usable(tensor, dtype) && tensor.dims() == [cols])
    };
    if !usable(x, dtype)
        || cols == 0
        || cols > i32::MAX as usize
        || !vector(bias)
        || !vector(gamma)
        || !residual.is_none_or(|residual| usable(residual, dtype) && residual.dims() == x.dims())
    {
        return Ok(None);
    }
    let op = Epilogue {
        bias: bias.cloned(),
        gamma: gamma.cloned(),
        residual: residual.cloned(),
        act,
    };
    x.apply_op1_no_bwd(&op).map(Some)
}

/// `silu(gate) · up` for `x` `[.., gate | up]` with halves of `half` in one kernel; `None` when
/// it does not apply.
pub fn swiglu(x: &Tensor, half: usize) -> Result<Option<Tensor>> {
    if !usable(x, x.dtype())
        || half == 0
        || half > i32::MAX as usize
        || x.dims().last() != Some(&(2 * half))
    {
        return Ok(None);
    }
    x.apply_op1_no_bwd(&SwiGlu { half }).map(Some)
}

/// The vision tower's `q`, `k` (rotated by interleaved-pair RoPE, `cos`/`sin` `[T, d/2]`) and
/// `v` from its fused projection `qkv` `[B, T, 3·H·d]`, each `[B, H, T, d]`, in one kernel;
/// `None` when it does not apply.
pub fn rope_qk(
    qkv: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let dtype = qkv.dtype();
    let Ok((batch, tokens, width)) = qkv.dims3() else {
        return Ok(None);
    };
    if heads == 0 || !width.is_multiple_of(6 * heads) {
        return Ok(None);
    }
    let head_dim = width / (3 * heads);
    let half = head_dim / 2;
    if !usable(qkv, dtype)
        || !usable(cos, dtype)
        || !usable(sin, dtype)
        || cos.dims() != [tokens, half]
        || sin.dims() != [tokens, half]
        || batch * tokens == 0
        || heads * half > i32::MAX as usize
    {
        return Ok(None);
    }
    let rotated = qkv.apply_op3_no_bwd(
        cos,
        sin,
        &RopeQk {
            tokens,
            heads,
            half,
        },
    )?;
    // [2, B, T, H, d] → q and k as [B, H, T, d] views; v a view of the projection.
    let rotated = rotated.permute((0, 1, 3, 2, 4))?;
    let value = qkv
        .reshape((batch, tokens, 3, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?
        .get(2)?;
    Ok(Some((rotated.get(0)?, rotated.get(1)?, value)))
}

/// The device slice of a contiguous tensor's values.
fn view<'a, T: candle_core::cuda_backend::CudaDType>(
    storage: &'a Storage,
    layout: &Layout,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("vidx kernels: an input is not contiguous");
    };
    match storage {
        Storage::Cuda(storage) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        _ => bail!("vidx kernels: an input is not on the GPU"),
    }
}

/// Threads per block across a row of `cols` values.
fn threads(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// Threads a row of `values` needs when each moves `wide` of them at a time (the kernels do
/// where the row divides evenly; otherwise one at a time).
fn lanes(values: usize, wide: usize) -> usize {
    if values.is_multiple_of(wide) {
        values / wide
    } else {
        values
    }
}

/// Blocks for `rows` rows (each block walks rows with a grid stride).
fn blocks(rows: usize) -> u32 {
    rows.clamp(1, 1 << 20) as u32
}

/// A one-input vidx kernel with a bf16 and an f16 entry point.
trait HalfKernel {
    /// The entry points for bf16 and for f16 inputs.
    const KERNELS: [&'static str; 2];

    fn launch<T>(
        &self,
        kernel: &str,
        device: &candle_core::CudaDevice,
        x: &CudaSlice<T>,
        layout: &Layout,
    ) -> Result<CudaSlice<T>>
    where
        T: DeviceRepr + candle_core::cuda_backend::CudaDType;
}

/// `CustomOp1::cuda_fwd`'s storage for a [`HalfKernel`]: the entry point for `x`'s type.
fn half_fwd<K: HalfKernel + CustomOp1>(
    kernel: &K,
    x: &CudaStorage,
    layout: &Layout,
) -> Result<CudaStorage> {
    let device = x.device().clone();
    let [bf16, f16] = K::KERNELS;
    let slice = match &x.slice {
        CudaStorageSlice::BF16(x) => {
            CudaStorageSlice::BF16(kernel.launch(bf16, &device, x, layout)?)
        }
        CudaStorageSlice::F16(x) => CudaStorageSlice::F16(kernel.launch(f16, &device, x, layout)?),
        _ => bail!("{}: bf16 or f16 only", kernel.name()),
    };
    Ok(CudaStorage { slice, device })
}

struct Epilogue {
    bias: Option<Tensor>,
    gamma: Option<Tensor>,
    residual: Option<Tensor>,
    act: Activation,
}

impl HalfKernel for Epilogue {
    const KERNELS: [&'static str; 2] = ["vidx_epilogue_bf16", "vidx_epilogue_f16"];

    fn launch<T>(
        &self,
        kernel: &str,
        device: &candle_core::CudaDevice,
        x: &CudaSlice<T>,
        layout: &Layout,
    ) -> Result<CudaSlice<T>>
    where
        T: DeviceRepr + candle_core::cuda_backend::CudaDType,
    {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("vidx epilogue: x is not contiguous");
        };
        let x = x.slice(start..end);
        let cols = layout.dims().last().copied().unwrap_or(0);
        let rows = (end - start) / cols.max(1);
        let guards = [&self.bias, &self.gamma, &self.residual]
            .map(|tensor| tensor.as_ref().map(|tensor| tensor.storage_and_layout()));
        let views = guards
            .iter()
            .map(|guard| match guard {
                Some((storage, layout)) => view::<T>(storage, layout).map(Some),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let [bias, gamma, residual] = [&views[0], &views[1], &views[2]];
        if bias.as_ref().is_some_and(|bias| bias.len() != cols)
            || gamma.as_ref().is_some_and(|gamma| gamma.len() != cols)
            || residual
                .as_ref()
                .is_some_and(|residual| residual.len() != rows * cols)
        {
            bail!(
                "vidx epilogue: bias, gamma or residual does not match x {:?}",
                layout.dims()
            );
        }
        let func = device.get_or_load_custom_func(kernel, "vidx_elementwise", PTX)?;
        // Not zeroed: the kernel writes every value (tests/kernels_on_cpu.rs checks that no
        // output keeps its initial value).
        #[allow(unsafe_code)]
        // SAFETY: uninitialised device memory of the output's size; the kernel launched below
        // writes all of it before anything reads it.
        let output = unsafe { device.alloc::<T>(rows * cols) }?;
        let null = 0u64;
        let mut builder = func.builder();
        builder.arg(&x);
        for operand in [bias, gamma, residual] {
            match operand {
                Some(view) => builder.arg(view),
                None => builder.arg(&null),
            };
        }
        builder.arg(&output);
        let (rows_arg, cols_arg, act) = (rows as i64, cols as i32, self.act as i32);
        builder.arg(&rows_arg);
        builder.arg(&cols_arg);
        builder.arg(&act);
        let config = LaunchConfig {
            grid_dim: (blocks(rows), 1, 1),
            block_dim: (threads(lanes(cols, 8)), 1, 1),
            shared_mem_bytes: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: the arguments match `vidx_epilogue_*` (5 pointers, i64, i32, i32); x and the
        // output hold rows × cols values, bias and gamma `cols` and the residual rows × cols
        // (checked above), which is all the kernel reads and writes.
        unsafe { builder.launch(config) }.w()?;
        Ok(output)
    }
}

impl CustomOp1 for Epilogue {
    fn name(&self) -> &'static str {
        "vidx-epilogue"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("vidx-epilogue runs on CUDA devices only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((half_fwd(self, x, layout)?, layout.shape().clone()))
    }
}

/// Layer norm (`remove_mean`, `bias` optional) or RMS norm over the last axis of `x` in one
/// kernel; `None` when it does not apply.
pub fn norm(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
    remove_mean: bool,
) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let Some(&cols) = x.dims().last() else {
        return Ok(None);
    };
    let vector = |tensor: &Tensor| usable(tensor, dtype) && tensor.dims() == [cols];
    if !usable(x, dtype)
        || cols == 0
        || cols > i32::MAX as usize
        || !vector(weight)
        || !bias.is_none_or(vector)
        || (bias.is_some() && !remove_mean)
    {
        return Ok(None);
    }
    let op = Norm {
        weight: weight.clone(),
        bias: bias.cloned(),
        eps: eps as f32,
        rms: !remove_mean,
    };
    x.apply_op1_no_bwd(&op).map(Some)
}

/// The `len` values of a contiguous operand.
fn exact<'a, T>(
    values: &'a CudaSlice<T>,
    layout: &Layout,
    len: usize,
    name: &str,
) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) if end - start == len => Ok(values.slice(start..end)),
        _ => bail!(
            "vidx kernels: {name} {:?} has the wrong size",
            layout.dims()
        ),
    }
}

struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f32,
    rms: bool,
}

/// Rows per block of the norm kernel (one warp each).
const NORM_ROWS_PER_BLOCK: usize = 8;

impl HalfKernel for Norm {
    const KERNELS: [&'static str; 2] = ["vidx_norm_bf16", "vidx_norm_f16"];

    fn launch<T>(
        &self,
        kernel: &str,
        device: &candle_core::CudaDevice,
        x: &CudaSlice<T>,
        layout: &Layout,
    ) -> Result<CudaSlice<T>>
    where
        T: DeviceRepr + candle_core::cuda_backend::CudaDType,
    {
        let cols = layout.dims().last().copied().unwrap_or(0);
        let count = layout.shape().elem_count();
        let x = exact(x, layout, count, "x")?;
        let rows = count / cols.max(1);
        let (weight_storage, weight_layout) = self.weight.storage_and_layout();
        let weight = view::<T>(&weight_storage, weight_layout)?;
        let bias_guard = self.bias.as_ref().map(|bias| bias.storage_and_layout());
        let bias = match &bias_guard {
            Some((storage, layout)) => Some(view::<T>(storage, layout)?),
            None => None,
        };
        if weight.len() != cols || bias.as_ref().is_some_and(|bias| bias.len() != cols) {
            bail!(
                "vidx norm: weight or bias does not match x {:?}",
                layout.dims()
            );
        }
        let func = device.get_or_load_custom_func(kernel, "vidx_elementwise", PTX)?;
        // Not zeroed: the kernel writes every value (tests/kernels_on_cpu.rs checks that no
        // output keeps its initial value).
        #[allow(unsafe_code)]
        // SAFETY: uninitialised device memory of the output's size; the kernel launched below
        // writes all of it before anything reads it.
        let output = unsafe { device.alloc::<T>(count) }?;
        let null = 0u64;
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&weight);
        match &bias {
            Some(bias) => builder.arg(bias),
            None => builder.arg(&null),
        };
        builder.arg(&output);
        let (rows_arg, cols_arg, rms) = (rows as i64, cols as i32, i32::from(self.rms));
        builder.arg(&rows_arg);
        builder.arg(&cols_arg);
        builder.arg(&self.eps);
        builder.arg(&rms);
        let config = LaunchConfig {
            grid_dim: (blocks(rows.div_ceil(NORM_ROWS_PER_BLOCK)), 1, 1),
            block_dim: (32 * NORM_ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: the arguments match `vidx_norm_*` (4 pointers, i64, i32, f32, i32); x and the
        // output hold rows × cols values, weight and bias `cols` (checked above), which is all
        // the kernel reads and writes.
        unsafe { builder.launch(config) }.w()?;
        Ok(output)
    }
}

impl CustomOp1 for Norm {
    fn name(&self) -> &'static str {
        "vidx-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("vidx-norm runs on CUDA devices only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((half_fwd(self, x, layout)?, layout.shape().clone()))
    }
}

struct RopeQk {
    tokens: usize,
    heads: usize,
    half: usize,
}

impl RopeQk {
    fn launch<T: DeviceRepr>(
        &self,
        kernel: &str,
        device: &candle_core::CudaDevice,
        (qkv, qkv_layout): (&CudaSlice<T>, &Layout),
        (cos, cos_layout): (&CudaSlice<T>, &Layout),
        (sin, sin_layout): (&CudaSlice<T>, &Layout),
    ) -> Result<CudaSlice<T>> {
        let pairs = self.heads * self.half;
        let rows = qkv_layout.shape().elem_count() / (6 * pairs);
        let qkv = exact(qkv, qkv_layout, rows * 6 * pairs, "qkv")?;
        let cos = exact(cos, cos_layout, self.tokens * self.half, "cos")?;
        let sin = exact(sin, sin_layout, self.tokens * self.half, "sin")?;
        let func = device.get_or_load_custom_func(kernel, "vidx_elementwise", PTX)?;
        // Not zeroed: the kernel writes every value (tests/kernels_on_cpu.rs checks that no
        // output keeps its initial value).
        #[allow(unsafe_code)]
        // SAFETY: uninitialised device memory of the output's size; the kernel launched below
        // writes all of it before anything reads it.
        let output = unsafe { device.alloc::<T>(2 * rows * 2 * pairs) }?;
        let (rows_arg, tokens, pairs_arg, half) = (
            rows as i64,
            self.tokens as i32,
            pairs as i32,
            self.half as i32,
        );
        let mut builder = func.builder();
        builder.arg(&qkv);
        builder.arg(&cos);
        builder.arg(&sin);
        builder.arg(&output);
        builder.arg(&rows_arg);
        builder.arg(&tokens);
        builder.arg(&pairs_arg);
        builder.arg(&half);
        let config = LaunchConfig {
            grid_dim: (blocks(rows), 2, 1),
            block_dim: (
                threads(lanes(
                    pairs,
                    if self.half.is_multiple_of(4) { 4 } else { 1 },
                )),
                1,
                1,
            ),
            shared_mem_bytes: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: the arguments match `vidx_rope_qk_*` (4 pointers, i64, 3 i32); qkv holds
        // rows × 3 × 2·pairs values, cos and sin tokens × half (checked above; a row's token is
        // row % tokens), the output 2 × rows × 2·pairs: all the kernel reads and writes.
        unsafe { builder.launch(config) }.w()?;
        Ok(output)
    }
}

impl CustomOp3 for RopeQk {
    fn name(&self) -> &'static str {
        "vidx-rope-qk"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("vidx-rope-qk runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        qkv_layout: &Layout,
        cos: &CudaStorage,
        cos_layout: &Layout,
        sin: &CudaStorage,
        sin_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let device = qkv.device().clone();
        let slice = match (&qkv.slice, &cos.slice, &sin.slice) {
            (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(c), CudaStorageSlice::BF16(s)) => {
                CudaStorageSlice::BF16(self.launch(
                    "vidx_rope_qk_bf16",
                    &device,
                    (x, qkv_layout),
                    (c, cos_layout),
                    (s, sin_layout),
                )?)
            }
            (CudaStorageSlice::F16(x), CudaStorageSlice::F16(c), CudaStorageSlice::F16(s)) => {
                CudaStorageSlice::F16(self.launch(
                    "vidx_rope_qk_f16",
                    &device,
                    (x, qkv_layout),
                    (c, cos_layout),
                    (s, sin_layout),
                )?)
            }
            _ => bail!("vidx-rope-qk: qkv, cos and sin must all be bf16 or all f16"),
        };
        let (batch, tokens, _) = qkv_layout.shape().dims3()?;
        Ok((
            CudaStorage { slice, device },
            Shape::from_dims(&[2, batch, tokens, self.heads, 2 * self.half]),
        ))
    }
}

struct SwiGlu {
    half: usize,
}

impl HalfKernel for SwiGlu {
    const KERNELS: [&'static str; 2] = ["vidx_swiglu_bf16", "vidx_swiglu_f16"];

    fn launch<T>(
        &self,
        kernel: &str,
        device: &candle_core::CudaDevice,
        x: &CudaSlice<T>,
        layout: &Layout,
    ) -> Result<CudaSlice<T>>
    where
        T: DeviceRepr + candle_core::cuda_backend::CudaDType,
    {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("vidx swiglu: x is not contiguous");
        };
        let x = x.slice(start..end);
        let rows = (end - start) / (2 * self.half);
        let func = device.get_or_load_custom_func(kernel, "vidx_elementwise", PTX)?;
        // Not zeroed: the kernel writes every value (tests/kernels_on_cpu.rs checks that no
        // output keeps its initial value).
        #[allow(unsafe_code)]
        // SAFETY: uninitialised device memory of the output's size; the kernel launched below
        // writes all of it before anything reads it.
        let output = unsafe { device.alloc::<T>(rows * self.half) }?;
        let (rows_arg, half) = (rows as i64, self.half as i32);
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&output);
        builder.arg(&rows_arg);
        builder.arg(&half);
        let config = LaunchConfig {
            grid_dim: (blocks(rows), 1, 1),
            block_dim: (threads(lanes(self.half, 8)), 1, 1),
            shared_mem_bytes: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: the arguments match `vidx_swiglu_*` (2 pointers, i64, i32); x holds
        // rows × 2·half values and the output rows × half, what the kernel reads and writes.
        unsafe { builder.launch(config) }.w()?;
        Ok(output)
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "vidx-swiglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("vidx-swiglu runs on CUDA devices only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let storage = half_fwd(self, x, layout)?;
        let mut dims = layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.half;
        }
        Ok((storage, Shape::from_dims(&dims)))
    }
}
