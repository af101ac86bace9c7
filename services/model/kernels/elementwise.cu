// Fused element-wise steps for bf16/f16 activations on the GPU, computed in f32. They replace
// chains of candle ops whose broadcast and strided forms index each element with 64-bit
// divisions (a bias add over a [tokens, 4096] activation, SwiGLU over the two halves of a
// stacked projection) and write every intermediate to memory.
//
//   vidx_epilogue: out[r, c] = residual[r, c] + gamma[c] · act(x[r, c] + bias[c])
//       bias, gamma and residual may each be null (left out); act 0: identity, 1: GELU (erf)
//   vidx_swiglu:   out[r, c] = silu(x[r, c]) · x[r, half + c] for x [rows, 2·half]
//
// All tensors contiguous; one block per row (grid-strided), threads across the columns.
#include "precision.cuh"
#include <stdint.h>

namespace {

template <typename T>
__device__ __forceinline__ void epilogue(const T* __restrict__ x, const T* __restrict__ bias,
                                         const T* __restrict__ gamma, const T* __restrict__ residual,
                                         T* __restrict__ out, long long rows, int cols, int act) {
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long base = row * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      float y = to_float(x[base + c]);
      if (bias != nullptr) y += to_float(bias[c]);
      if (act == 1) y = 0.5f * y * (1.f + erff(y * 0.70710678118654752f));
      if (gamma != nullptr) y *= to_float(gamma[c]);
      if (residual != nullptr) y += to_float(residual[base + c]);
      out[base + c] = from_float<T>(y);
    }
  }
}

template <typename T>
__device__ __forceinline__ void swiglu(const T* __restrict__ x, T* __restrict__ out, long long rows,
                                       int half) {
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* in = x + row * 2 * half;
    for (int c = threadIdx.x; c < half; c += blockDim.x) {
      const float gate = to_float(in[c]);
      const float up = to_float(in[half + c]);
      out[row * half + c] = from_float<T>(gate / (1.f + __expf(-gate)) * up);
    }
  }
}

}  // namespace

#define VIDX_ELEMENTWISE(SUFFIX, T)                                                             \
  extern "C" __global__ void vidx_epilogue_##SUFFIX(const T* x, const T* bias, const T* gamma,  \
                                                     const T* residual, T* out, long long rows, \
                                                     int cols, int act) {                       \
    epilogue<T>(x, bias, gamma, residual, out, rows, cols, act);                               \
  }                                                                                             \
  extern "C" __global__ void vidx_swiglu_##SUFFIX(const T* x, T* out, long long rows, int half) { \
    swiglu<T>(x, out, rows, half);                                                              \
  }

VIDX_ELEMENTWISE(bf16, __nv_bfloat16)
VIDX_ELEMENTWISE(f16, __half)
