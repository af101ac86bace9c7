//! vidx's own CUDA kernels (`kernels/*.cu`, compiled to PTX by `build.rs`, `cuda` feature):
//! the fused element-wise steps of `kernels/elementwise.cu` as candle ops, and the start-up
//! check that gates them and the fused attention of [`crate::attention_cuda`].
//!
//! The first time a model asks for a fused kernel on a CUDA device, [`verified`] runs every
//! kernel on small random inputs against candle's own ops on that device (a few ms). When one
//! disagrees, or `VIDX_FUSED_KERNELS=0` is set, the models use candle's ops for the rest of the
//! process and a log line says why: a kernel fault costs speed, never wrong captions.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape};
use candle_core::{Storage, Tensor, bail};

use crate::ops::Activation;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/elementwise.ptx"));
/// Most errors allowed by the start-up check, relative to `1 + |expected|` (bf16 keeps 8 bits).
const TOLERANCE: f32 = 0.05;

/// Whether vidx's kernels may run on `device`: not turned off, and they passed the start-up
/// check (run once per process, on first use).
pub fn verified(device: &Device) -> bool {
    static VERIFIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !device.is_cuda() {
        return false;
    }
    *VERIFIED.get_or_init(|| {
        if std::env::var("VIDX_FUSED_KERNELS").is_ok_and(|value| value.trim() == "0") {
            tracing::info!("VIDX_FUSED_KERNELS=0: the models use candle's ops on the GPU");
            return false;
        }
        match check(device) {
            Ok(errors) => {
                let worst = errors.iter().map(|(_, error)| *error).fold(0f32, f32::max);
                let bad: Vec<_> = errors
                    .iter()
                    .filter(|(_, error)| error.is_nan() || *error > TOLERANCE)
                    .collect();
                if bad.is_empty() {
                    tracing::info!(max_error = worst, "vidx's CUDA kernels agree with candle's ops");
                    true
                } else {
                    tracing::error!(
                        ?bad,
                        "vidx's CUDA kernels disagree with candle's ops: using candle's ops"
                    );
                    false
                }
            }
            Err(error) => {
                tracing::error!(%error, "vidx's CUDA kernels failed their check: using candle's ops");
                false
            }
        }
    })
}

/// Every kernel against candle's ops on `device`, in bf16: (case, relative error).
pub fn check(device: &Device) -> Result<Vec<(String, f32)>> {
    let dtype = DType::BF16;
    let mut errors = Vec::new();
    for (name, error) in
        crate::attention::fused_error_with(device, dtype, &crate::attention_cuda::attend_unchecked)?
    {
        errors.push((format!("attention {name}"), error.unwrap_or(f32::NAN)));
    }
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype);
    let (x, bias, gamma, residual) = (
        randn(&[3, 37, 200])?,
        randn(&[200])?,
        randn(&[200])?,
        randn(&[3, 37, 200])?,
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
        let fused = epilogue_unchecked(&x, bias, act, gamma, residual)?;
        let expected = crate::ops::epilogue_ops(&x, bias, act, gamma, residual)?;
        errors.push((
            format!("epilogue {name}"),
            relative_error(fused, &expected)?,
        ));
    }
    let stacked = randn(&[2, 9, 2 * 300])?;
    let fused = swiglu_unchecked(&stacked, 300)?;
    let expected = crate::ops::swiglu_ops(&stacked, 300)?;
    errors.push(("swiglu".into(), relative_error(fused, &expected)?));
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

/// Whether `tensor` is a contiguous bf16/f16 tensor of `dtype` on a CUDA device.
fn usable(tensor: &Tensor, dtype: DType) -> bool {
    tensor.device().is_cuda()
        && tensor.dtype() == dtype
        && matches!(dtype, DType::BF16 | DType::F16)
        && tensor.is_contiguous()
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
    if !x.device().is_cuda() || !verified(x.device()) {
        return Ok(None);
    }
    epilogue_unchecked(x, bias, act, gamma, residual)
}

fn epilogue_unchecked(
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

/// [`crate::ops::swiglu`] by the fused kernel, once [`verified`]; `None` when it does not apply.
pub fn swiglu(x: &Tensor, half: usize) -> Result<Option<Tensor>> {
    if !x.device().is_cuda() || !verified(x.device()) {
        return Ok(None);
    }
    swiglu_unchecked(x, half)
}

fn swiglu_unchecked(x: &Tensor, half: usize) -> Result<Option<Tensor>> {
    if !usable(x, x.dtype())
        || half == 0
        || half > i32::MAX as usize
        || x.dims().last() != Some(&(2 * half))
    {
        return Ok(None);
    }
    x.apply_op1_no_bwd(&SwiGlu { half }).map(Some)
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

/// Blocks for `rows` rows (each block walks rows with a grid stride).
fn blocks(rows: usize) -> u32 {
    rows.clamp(1, 1 << 20) as u32
}

struct Epilogue {
    bias: Option<Tensor>,
    gamma: Option<Tensor>,
    residual: Option<Tensor>,
    act: Activation,
}

impl Epilogue {
    fn launch<T>(
        &self,
        kernel: &str,
        device: &candle_core::CudaDevice,
        x: &CudaSlice<T>,
        layout: &Layout,
    ) -> Result<CudaSlice<T>>
    where
        T: DeviceRepr + ValidAsZeroBits + candle_core::cuda_backend::CudaDType,
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
        let output = device.alloc_zeros::<T>(rows * cols)?;
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
            block_dim: (threads(cols), 1, 1),
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
        let device = x.device().clone();
        let slice = match &x.slice {
            CudaStorageSlice::BF16(x) => {
                CudaStorageSlice::BF16(self.launch("vidx_epilogue_bf16", &device, x, layout)?)
            }
            CudaStorageSlice::F16(x) => {
                CudaStorageSlice::F16(self.launch("vidx_epilogue_f16", &device, x, layout)?)
            }
            _ => bail!("vidx-epilogue: bf16 or f16 only"),
        };
        Ok((CudaStorage { slice, device }, layout.shape().clone()))
    }
}

struct SwiGlu {
    half: usize,
}

impl SwiGlu {
    fn launch<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        kernel: &str,
        device: &candle_core::CudaDevice,
        x: &CudaSlice<T>,
        layout: &Layout,
    ) -> Result<CudaSlice<T>> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("vidx swiglu: x is not contiguous");
        };
        let x = x.slice(start..end);
        let rows = (end - start) / (2 * self.half);
        let func = device.get_or_load_custom_func(kernel, "vidx_elementwise", PTX)?;
        let output = device.alloc_zeros::<T>(rows * self.half)?;
        let (rows_arg, half) = (rows as i64, self.half as i32);
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&output);
        builder.arg(&rows_arg);
        builder.arg(&half);
        let config = LaunchConfig {
            grid_dim: (blocks(rows), 1, 1),
            block_dim: (threads(self.half), 1, 1),
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
        let device = x.device().clone();
        let slice = match &x.slice {
            CudaStorageSlice::BF16(x) => {
                CudaStorageSlice::BF16(self.launch("vidx_swiglu_bf16", &device, x, layout)?)
            }
            CudaStorageSlice::F16(x) => {
                CudaStorageSlice::F16(self.launch("vidx_swiglu_f16", &device, x, layout)?)
            }
            _ => bail!("vidx-swiglu: bf16 or f16 only"),
        };
        let mut dims = layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.half;
        }
        Ok((CudaStorage { slice, device }, Shape::from_dims(&dims)))
    }
}
