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
//   vidx_norm:     layer norm (x - mean) / sqrt(var + eps) · w + b over each row, or with
//       rms = 1 RMS norm x / sqrt(mean(x²) + eps) · w; b may be null
//
// All tensors contiguous. Memory-bound, so each thread moves 16 bytes (8 values) per access
// where the row length and the pointers allow it, and one value at a time otherwise. One
// block per row (grid-strided) with threads across the columns; one warp per row for the norm.
#include "precision.cuh"
#include <stdint.h>

namespace {

__device__ __forceinline__ bool aligned16(const void* pointer) {
  return (reinterpret_cast<uintptr_t>(pointer) & 15) == 0;
}

// 8 values (16 bytes) to and from f32.
template <typename T>
__device__ __forceinline__ void load8(const T* from, float (&to)[8]) {
  const uint4 bits = *reinterpret_cast<const uint4*>(from);
  const T* values = reinterpret_cast<const T*>(&bits);
#pragma unroll
  for (int i = 0; i < 8; ++i) to[i] = to_float(values[i]);
}

template <typename T>
__device__ __forceinline__ void store8(T* to, const float (&from)[8]) {
  uint4 bits;
  T* values = reinterpret_cast<T*>(&bits);
#pragma unroll
  for (int i = 0; i < 8; ++i) values[i] = from_float<T>(from[i]);
  *reinterpret_cast<uint4*>(to) = bits;
}

__device__ __forceinline__ float gelu_erf(float y) {
  return 0.5f * y * (1.f + erff(y * 0.70710678118654752f));
}

template <typename T>
__device__ __forceinline__ void epilogue(const T* __restrict__ x, const T* __restrict__ bias,
                                         const T* __restrict__ gamma, const T* __restrict__ residual,
                                         T* __restrict__ out, long long rows, int cols, int act) {
  const bool wide = cols % 8 == 0 && aligned16(x) && aligned16(out) &&
                    (bias == nullptr || aligned16(bias)) && (gamma == nullptr || aligned16(gamma)) &&
                    (residual == nullptr || aligned16(residual));
  if (wide) {
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
      const long long base = row * cols;
      for (int c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
        float y[8], other[8];
        load8(x + base + c, y);
        if (bias != nullptr) {
          load8(bias + c, other);
#pragma unroll
          for (int i = 0; i < 8; ++i) y[i] += other[i];
        }
        if (act == 1) {
#pragma unroll
          for (int i = 0; i < 8; ++i) y[i] = gelu_erf(y[i]);
        }
        if (gamma != nullptr) {
          load8(gamma + c, other);
#pragma unroll
          for (int i = 0; i < 8; ++i) y[i] *= other[i];
        }
        if (residual != nullptr) {
          load8(residual + base + c, other);
#pragma unroll
          for (int i = 0; i < 8; ++i) y[i] += other[i];
        }
        store8(out + base + c, y);
      }
    }
    return;
  }
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long base = row * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      float y = to_float(x[base + c]);
      if (bias != nullptr) y += to_float(bias[c]);
      if (act == 1) y = gelu_erf(y);
      if (gamma != nullptr) y *= to_float(gamma[c]);
      if (residual != nullptr) y += to_float(residual[base + c]);
      out[base + c] = from_float<T>(y);
    }
  }
}

__device__ __forceinline__ float silu_times(float gate, float up) {
  return gate / (1.f + __expf(-gate)) * up;
}

template <typename T>
__device__ __forceinline__ void swiglu(const T* __restrict__ x, T* __restrict__ out, long long rows,
                                       int half) {
  if (half % 8 == 0 && aligned16(x) && aligned16(out)) {
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
      const T* in = x + row * 2 * half;
      for (int c = threadIdx.x * 8; c < half; c += blockDim.x * 8) {
        float gate[8], up[8];
        load8(in + c, gate);
        load8(in + half + c, up);
#pragma unroll
        for (int i = 0; i < 8; ++i) gate[i] = silu_times(gate[i], up[i]);
        store8(out + row * half + c, gate);
      }
    }
    return;
  }
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* in = x + row * 2 * half;
    for (int c = threadIdx.x; c < half; c += blockDim.x) {
      out[row * half + c] = from_float<T>(silu_times(to_float(in[c]), to_float(in[half + c])));
    }
  }
}

template <typename T>
__device__ __forceinline__ void rope_qk(const T* __restrict__ qkv, const T* __restrict__ cos,
                                        const T* __restrict__ sin, T* __restrict__ out,
                                        long long rows, int tokens, int pairs, int half) {
  const int which = blockIdx.y;  // 0: q, 1: k
  const long long dim = 2LL * pairs;
  // Four pairs (8 values) per thread when a head's pairs split into fours and rows line up.
  const bool wide = half % 4 == 0 && aligned16(qkv) && aligned16(out) &&
                    (reinterpret_cast<uintptr_t>(cos) & 7) == 0 &&
                    (reinterpret_cast<uintptr_t>(sin) & 7) == 0;
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long t = row % tokens;
    const T* x = qkv + row * 3 * dim + which * dim;
    T* y = out + (which * rows + row) * dim;
    const T* c_row = cos + t * half;
    const T* s_row = sin + t * half;
    if (wide) {
      for (int i = threadIdx.x * 4; i < pairs; i += blockDim.x * 4) {
        const int p = i % half;
        float v[8];
        load8(x + 2 * i, v);
        const uint2 c_bits = *reinterpret_cast<const uint2*>(c_row + p);
        const uint2 s_bits = *reinterpret_cast<const uint2*>(s_row + p);
        const T* c4 = reinterpret_cast<const T*>(&c_bits);
        const T* s4 = reinterpret_cast<const T*>(&s_bits);
        float r[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float c = to_float(c4[j]), s = to_float(s4[j]);
          r[2 * j] = v[2 * j] * c - v[2 * j + 1] * s;
          r[2 * j + 1] = v[2 * j] * s + v[2 * j + 1] * c;
        }
        store8(y + 2 * i, r);
      }
    } else {
      for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
        const int p = i % half;
        const float x0 = to_float(x[2 * i]), x1 = to_float(x[2 * i + 1]);
        const float c = to_float(c_row[p]), s = to_float(s_row[p]);
        y[2 * i] = from_float<T>(x0 * c - x1 * s);
        y[2 * i + 1] = from_float<T>(x0 * s + x1 * c);
      }
    }
  }
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// One row per warp: the mean, then the variance around it (the row is re-read from L1/L2,
// not summed as x and x² in one pass, which loses precision when the mean is large), then the
// normalised row.
template <typename T, bool WIDE>
__device__ __forceinline__ void norm_row(const T* __restrict__ x, const T* __restrict__ w,
                                         const T* __restrict__ b, T* __restrict__ y, int cols,
                                         float eps, bool rms, int lane) {
  constexpr int STEP = WIDE ? 8 : 1;
  float mean = 0.f;
  if (!rms) {
    float sum = 0.f;
    for (int c = lane * STEP; c < cols; c += 32 * STEP) {
      if (WIDE) {
        float v[8];
        load8(x + c, v);
#pragma unroll
        for (int i = 0; i < 8; ++i) sum += v[i];
      } else {
        sum += to_float(x[c]);
      }
    }
    mean = warp_sum(sum) / cols;
  }
  float squares = 0.f;
  for (int c = lane * STEP; c < cols; c += 32 * STEP) {
    if (WIDE) {
      float v[8];
      load8(x + c, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) squares += (v[i] - mean) * (v[i] - mean);
    } else {
      const float d = to_float(x[c]) - mean;
      squares += d * d;
    }
  }
  const float inv = rsqrtf(warp_sum(squares) / cols + eps);
  for (int c = lane * STEP; c < cols; c += 32 * STEP) {
    if (WIDE) {
      float v[8], scale[8], shift[8];
      load8(x + c, v);
      load8(w + c, scale);
      if (b != nullptr) {
        load8(b + c, shift);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) shift[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = (v[i] - mean) * inv * scale[i] + shift[i];
      store8(y + c, v);
    } else {
      const float shift = b != nullptr ? to_float(b[c]) : 0.f;
      y[c] = from_float<T>((to_float(x[c]) - mean) * inv * to_float(w[c]) + shift);
    }
  }
}

template <typename T>
__device__ __forceinline__ void norm(const T* __restrict__ x, const T* __restrict__ w,
                                     const T* __restrict__ b, T* __restrict__ out, long long rows,
                                     int cols, float eps, int rms) {
  const bool wide = cols % 8 == 0 && aligned16(x) && aligned16(w) && aligned16(out) &&
                    (b == nullptr || aligned16(b));
  const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (long long row = static_cast<long long>(blockIdx.x) * warps + threadIdx.x / 32; row < rows;
       row += static_cast<long long>(gridDim.x) * warps) {
    const long long base = row * cols;
    if (wide) {
      norm_row<T, true>(x + base, w, b, out + base, cols, eps, rms != 0, lane);
    } else {
      norm_row<T, false>(x + base, w, b, out + base, cols, eps, rms != 0, lane);
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
  }                                                                                             \
  extern "C" __global__ void vidx_norm_##SUFFIX(const T* x, const T* w, const T* b, T* out,     \
                                                 long long rows, int cols, float eps, int rms) { \
    norm<T>(x, w, b, out, rows, cols, eps, rms);                                                \
  }

VIDX_ELEMENTWISE(bf16, __nv_bfloat16)
VIDX_ELEMENTWISE(f16, __half)
