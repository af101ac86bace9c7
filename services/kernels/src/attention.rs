//! The fused GPU attention kernels as a candle op: bf16/f16, head dim 64, grouped-query
//! heads, a visible key range per query. The score matrix never reaches memory, where candle's
//! tensor ops write and read it several times per layer. Two kernels with one contract
//! ([`Kernel`]): `kernels/attention_mma.cu` keeps its tiles in registers (mma.sync),
//! `kernels/attention.cu` goes through shared memory (WMMA).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Storage};
use candle_core::{Tensor, bail};

const WMMA_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const MMA_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention_mma.ptx"));
/// The head dim the kernel is built for.
const HEAD_DIM: usize = 64;
/// Stacked query rows per block and threads per block (`BM` and `THREADS` in the kernel).
const BLOCK_ROWS: usize = 64;
const BLOCK_THREADS: u32 = 128;

/// One of the fused attention kernels (same contract, same launch shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `kernels/attention_mma.cu`: register-resident mma.sync tiles, cp.async double buffering.
    Mma,
    /// `kernels/attention.cu`: WMMA tiles through shared memory.
    Wmma,
}

impl Kernel {
    /// In the order of preference.
    pub const ALL: [Kernel; 2] = [Kernel::Mma, Kernel::Wmma];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Mma => "mma",
            Kernel::Wmma => "wmma",
        }
    }

    /// (PTX module, module name, bf16 function, f16 function).
    fn code(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kernel::Mma => (
                MMA_PTX,
                "vidx_attention_mma",
                "vidx_attention_mma_d64_bf16",
                "vidx_attention_mma_d64_f16",
            ),
            Kernel::Wmma => (
                WMMA_PTX,
                "vidx_attention",
                "vidx_attention_d64_bf16",
                "vidx_attention_d64_f16",
            ),
        }
    }
}

/// `softmax(q·kᵀ·scale)·v` by `kernel` for `q` `[B, Hq, L, 64]` and `k`/`v` `[B, Hkv, K, 64]`
/// on a CUDA device in bf16 or f16 (any strides with a unit last stride and 16-byte aligned
/// rows); query `i` of row `b` sees the keys `ranges[b, i]` (`[B, L, 2]` u32 `(lo, hi)` on the
/// device; `None`: all). Returns `[B, L, Hq, 64]`, or `None` when the inputs are outside what
/// the kernel handles.
pub fn attend(
    kernel: Kernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    ranges: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let dtype = q.dtype();
    let usable = |tensor: &Tensor| {
        tensor.device().is_cuda()
            && tensor.dtype() == dtype
            && tensor.rank() == 4
            && tensor.dim(3).ok() == Some(HEAD_DIM)
            && tensor.stride()[3] == 1
            // 16-byte loads: every row starts on a multiple of 8 values.
            && tensor.stride()[..3].iter().all(|stride| stride.is_multiple_of(8))
            && tensor.layout().start_offset().is_multiple_of(8)
    };
    if !(matches!(dtype, DType::BF16 | DType::F16) && usable(q) && usable(k) && usable(v)) {
        return Ok(None);
    }
    let (batch, heads, rows, _) = q.dims4()?;
    let (k_batch, kv_heads, keys, _) = k.dims4()?;
    if k.dims() != v.dims() || k_batch != batch || kv_heads == 0 || heads % kv_heads != 0 {
        bail!(
            "attention: q {:?}, k {:?}, v {:?} do not match",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if keys >= u32::MAX as usize || rows * heads / kv_heads >= i32::MAX as usize {
        return Ok(None);
    }
    let op = CudaAttention {
        kernel,
        scale_log2: (scale * std::f64::consts::LOG2_E) as f32,
        ranges: ranges.cloned(),
    };
    q.apply_op3_no_bwd(k, v, &op).map(Some)
}

struct CudaAttention {
    kernel: Kernel,
    /// `scale · log2(e)`: the kernel's softmax works in base 2.
    scale_log2: f32,
    /// `[B, L, 2]` u32 `(lo, hi)` on the device.
    ranges: Option<Tensor>,
}

/// One operand's element strides `[b, head, row]`, after checking that every row it names
/// lies inside its storage of `len` values (the kernel reads them unchecked).
fn strides(layout: &Layout, len: usize, name: &str) -> Result<[i64; 3]> {
    let dims = layout.dims();
    let stride = layout.stride();
    let last = (0..3)
        .map(|axis| dims[axis].saturating_sub(1) * stride[axis])
        .sum::<usize>()
        + dims[3];
    if dims.contains(&0) || layout.start_offset() + last > len {
        bail!("attention: {name} {dims:?} does not fit its storage");
    }
    Ok([stride[0] as i64, stride[1] as i64, stride[2] as i64])
}

impl CudaAttention {
    #[allow(clippy::too_many_arguments)]
    fn launch<T: DeviceRepr>(
        &self,
        function: &str,
        device: &candle_core::CudaDevice,
        (q, q_layout): (&CudaSlice<T>, &Layout),
        (k, k_layout): (&CudaSlice<T>, &Layout),
        (v, v_layout): (&CudaSlice<T>, &Layout),
    ) -> Result<CudaSlice<T>> {
        let (batch, heads, rows, _) = q_layout.shape().dims4()?;
        let (_, kv_heads, keys, _) = k_layout.shape().dims4()?;
        let q_strides = strides(q_layout, q.len(), "q")?;
        let k_strides = strides(k_layout, k.len(), "k")?;
        let v_strides = strides(v_layout, v.len(), "v")?;
        let guard;
        let ranges = match &self.ranges {
            Some(ranges) => {
                let (storage, layout) = ranges.storage_and_layout();
                if layout.dims() != [batch, rows, 2] || !layout.is_contiguous() {
                    bail!(
                        "attention: ranges {:?} do not cover {batch} x {rows} queries",
                        layout.dims()
                    );
                }
                let offset = layout.start_offset();
                guard = storage;
                match &*guard {
                    Storage::Cuda(storage) => Some(
                        storage
                            .as_cuda_slice::<u32>()?
                            .slice(offset..offset + batch * rows * 2),
                    ),
                    _ => bail!("attention: ranges must be on the GPU"),
                }
            }
            None => None,
        };
        let (ptx, module, _, _) = self.kernel.code();
        let func = device.get_or_load_custom_func(function, module, ptx)?;
        // Not zeroed: the kernel writes every value (tests/kernels_on_cpu.rs checks that no
        // output keeps its initial value).
        #[allow(unsafe_code)]
        // SAFETY: uninitialised device memory of the output's size; the kernel launched below
        // writes all of it before anything reads it.
        let output = unsafe { device.alloc::<T>(batch * rows * heads * HEAD_DIM) }?;
        let stacked = rows * (heads / kv_heads);
        let config = LaunchConfig {
            grid_dim: (
                stacked.div_ceil(BLOCK_ROWS) as u32,
                kv_heads as u32,
                batch as u32,
            ),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let q = q.slice(q_layout.start_offset()..);
        let k = k.slice(k_layout.start_offset()..);
        let v = v.slice(v_layout.start_offset()..);
        let mut builder = func.builder();
        builder.arg(&q);
        builder.arg(&k);
        builder.arg(&v);
        builder.arg(&output);
        let no_ranges = 0u64;
        match &ranges {
            Some(ranges) => builder.arg(ranges),
            None => builder.arg(&no_ranges),
        };
        let dims = [heads as i32, kv_heads as i32, rows as i32, keys as i32];
        for dim in &dims {
            builder.arg(dim);
        }
        for stride in q_strides.iter().chain(&k_strides).chain(&v_strides) {
            builder.arg(stride);
        }
        builder.arg(&self.scale_log2);
        #[allow(unsafe_code)]
        // SAFETY: the argument list matches the kernel's signature (pointers, 4 i32, 9 i64,
        // f32). `strides` checked that every row of q, k and v the kernel reads lies inside
        // its slice; the ranges cover `batch × rows` queries; the output holds
        // `batch × rows × heads × 64` values, which is what the kernel writes.
        unsafe { builder.launch(config) }.w()?;
        Ok(output)
    }
}

impl CustomOp3 for CudaAttention {
    fn name(&self) -> &'static str {
        "vidx-cuda-attention"
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
        bail!("vidx-cuda-attention runs on CUDA devices only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        k: &CudaStorage,
        k_layout: &Layout,
        v: &CudaStorage,
        v_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let device = q.device().clone();
        let (batch, heads, rows, _) = q_layout.shape().dims4()?;
        let (_, _, bf16, f16) = self.kernel.code();
        let slice = match (&q.slice, &k.slice, &v.slice) {
            (CudaStorageSlice::BF16(q), CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => {
                CudaStorageSlice::BF16(self.launch(
                    bf16,
                    &device,
                    (q, q_layout),
                    (k, k_layout),
                    (v, v_layout),
                )?)
            }
            (CudaStorageSlice::F16(q), CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => {
                CudaStorageSlice::F16(self.launch(
                    f16,
                    &device,
                    (q, q_layout),
                    (k, k_layout),
                    (v, v_layout),
                )?)
            }
            _ => bail!("vidx-cuda-attention: q, k and v must all be bf16 or all f16"),
        };
        Ok((
            CudaStorage { slice, device },
            Shape::from_dims(&[batch, rows, heads, HEAD_DIM]),
        ))
    }
}
