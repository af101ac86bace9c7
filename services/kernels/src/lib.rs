//! vidx's own CUDA kernels (`kernels/*.cu`, compiled to PTX by `build.rs` with the `cuda`
//! feature) as candle ops: the fused attention ([`attention`]) and the fused element-wise
//! steps ([`elementwise`]). The models in `vidx-model` call them only after checking, once per
//! process on the device, that they agree with candle's own ops; this crate does not check.
//!
//! `tests/kernels_on_cpu.rs` runs the kernels' source on the CPU (no GPU needed).

#[cfg(feature = "cuda")]
pub mod attention;
#[cfg(feature = "cuda")]
pub mod elementwise;

/// The activation a linear layer's epilogue applies after the bias (its code in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity = 0,
    GeluErf = 1,
}
