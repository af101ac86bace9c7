// Fused element-wise steps for bf16/f16 activations on the GPU, computed in f32. They replace
// chains of candle ops whose broadcast and strided forms index each element with 64-bit
// divisions (a bias add over a [tokens, 4096] activation, SwiGLU over the two halves of a
// stacked projection) and write every intermediate to memory.
//
//   vidx_epilogue: out[r, c] = residual[r, c] + gamma[c] · act(x[r, c] + bias[c])
//       bias, gamma and residual may each be null (left out); act 0: identity, 1: GELU (erf)
//   vidx_swiglu:   out[r, c] = silu(x[r, c]) · x[r, half + c] for x [rows, 2·half]
//   vidx_rope_qk:  the vision tower's q and k out of its fused projection, rotated by 2D RoPE
//       (interleaved pairs: candle's rope_i): qkv [rows = B·T, 3, H, 2·half], cos and sin
//       [T, half] → out [2, rows, H, 2·half] (q, then k); one pass instead of two strided
//       copies and two rotations
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

template <typename T>
__device__ __forceinline__ void rope_qk(const T* __restrict__ qkv, const T* __restrict__ cos,
                                        const T* __restrict__ sin, T* __restrict__ out,
                                        long long rows, int tokens, int pairs, int half) {
  const int which = blockIdx.y;  // 0: q, 1: k
  const long long dim = 2LL * pairs;
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long t = row % tokens;
    const T* x = qkv + row * 3 * dim + which * dim;
    T* y = out + (which * rows + row) * dim;
    for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
      const int p = i % half;
      const float x0 = to_float(x[2 * i]), x1 = to_float(x[2 * i + 1]);
      const float c = to_float(cos[t * half + p]), s = to_float(sin[t * half + p]);
      y[2 * i] = from_float<T>(x0 * c - x1 * s);
      y[2 * i + 1] = from_float<T>(x0 * s + x1 * c);
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
  }                                                                                             \
  extern "C" __global__ void vidx_rope_qk_##SUFFIX(const T* qkv, const T* cos, const T* sin,    \
                                                    T* out, long long rows, int tokens,         \
                                                    int pairs, int half) {                      \
    rope_qk<T>(qkv, cos, sin, out, rows, tokens, pairs, half);                                  \
  }

VIDX_ELEMENTWISE(bf16, __nv_bfloat16)
VIDX_ELEMENTWISE(f16, __half)
