// Fused scaled dot-product attention on the GPU with register-resident tensor-core tiles
// (flash-attention 2 style, forward only). Same contract as `attention.cu`, which it replaces
// where the start-up check passes it:
//
//   q    [B, Hq, L, D]      any strides (a transposed view of a projection is fine)
//   k, v [B, Hkv, K, D]     any strides (views of a KV cache are fine)
//   out  [B, L, Hq, D]      contiguous, heads last (what the output projection reads)
//   ranges  [B, L, 2] u32 (lo, hi): query l of row b sees keys lo..hi; null: all K keys
// Query head h reads KV head h / (Hq / Hkv). A query that sees no key gets zeros.
//
// One block of 4 warps takes 64 stacked query rows of one KV head (stacked row s is position
// s / group of query head kv_head·group + s % group) and walks the union of their visible keys
// in tiles of 64, double-buffered with cp.async. Each warp owns 16 rows and keeps everything in
// registers: its Q fragments, the scores S = Q·Kᵀ of a tile (mma.sync m16n8k16, f32
// accumulators), the online softmax (each lane holds two rows, g and g + 8, and a quad of
// lanes shares a row), P as the A operand of P·V (the accumulator layout of S is the operand
// layout of P, so P never leaves registers) and the output. K and V fragments come from
// shared memory with ldmatrix (V transposed on the way).
#include "precision.cuh"
#include <stdint.h>

namespace {

constexpr int D = 64;           // head dim (PE-L and Llama 3.2 1B)
constexpr int BM = 64;          // stacked query rows per block
constexpr int BN = 64;          // keys per tile
constexpr int WARPS = BM / 16;  // 16 rows per warp
constexpr int THREADS = WARPS * 32;
constexpr int LDH = D + 8;      // tile row stride: 144 bytes, so ldmatrix's 8 rows hit 8 banks
static_assert(D == 64 && BN == 64, "the fragment loops below are written for 64");

// The warp-level PTX this kernel is built on. `tests/kernels_on_cpu.rs` compiles the kernel
// for the CPU with its own versions of these (VIDX_HOST_EMULATION).
#ifndef VIDX_HOST_EMULATION
__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Four 8×8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row))
               : "memory");
}

__device__ __forceinline__ void copy_async_16(void* destination, const void* source) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(destination)),
               "l"(source)
               : "memory");
}

__device__ __forceinline__ void copy_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// d += a·b for a 16×16 A (row-major fragments) and a 16×8 B (column-major fragments).
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1, __nv_bfloat16) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1, __half) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif  // VIDX_HOST_EMULATION

// Two values rounded into one register (lo in the low half); `sum` gains the rounded values,
// the weights P·V really multiplies.
template <typename T>
__device__ __forceinline__ uint32_t pack(float lo, float hi, float& sum) {
  const T a = from_float<T>(lo), b = from_float<T>(hi);
  sum += to_float(a) + to_float(b);
  const uint32_t bits_a = *reinterpret_cast<const uint16_t*>(&a);
  const uint32_t bits_b = *reinterpret_cast<const uint16_t*>(&b);
  return bits_a | (bits_b << 16);
}

template <typename T>
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  float unused = 0.f;
  return pack<T>(lo, hi, unused);
}

template <typename T>
__device__ __forceinline__ void attend(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    T* __restrict__ out, const uint32_t* __restrict__ ranges,
    int heads, int kv_heads, int rows, int keys,
    long long q_sb, long long q_sh, long long q_sl,
    long long k_sb, long long k_sh, long long k_sl,
    long long v_sb, long long v_sh, long long v_sl,
    float scale_log2) {
  __shared__ __align__(128) T qs[BM * LDH];
  __shared__ __align__(128) T ks[2][BN * LDH];
  __shared__ __align__(128) T vs[2][BN * LDH];
  __shared__ int row_lo[BM], row_hi[BM];
  __shared__ int block_lo, block_hi;

  const int group = heads / kv_heads;
  const int b = blockIdx.z, kv_head = blockIdx.y;
  const int first = blockIdx.x * BM;
  const int stacked = rows * group;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Accumulator layout: lane holds rows g and g + 8, columns 2·t4 and 2·t4 + 1 of each 8.
  const int g = lane / 4, t4 = lane % 4;

  if (tid == 0) {
    block_lo = keys;
    block_hi = 0;
  }
  __syncthreads();
  // The Q tile, 16 bytes (8 values) per load; rows past the end are zeros.
  for (int c = tid; c < BM * (D / 8); c += THREADS) {
    const int r = c / (D / 8), part = c % (D / 8), s = first + r;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (s < stacked) {
      const int pos = s / group, head = kv_head * group + s % group;
      value = *reinterpret_cast<const uint4*>(q + b * q_sb + head * q_sh + pos * q_sl + part * 8);
    }
    *reinterpret_cast<uint4*>(&qs[r * LDH + part * 8]) = value;
  }
  // Each row's visible keys, and their union over the block.
  if (tid < BM) {
    const int s = first + tid;
    int lo = 0, hi = 0;
    if (s < stacked) {
      const int pos = s / group;
      if (ranges != nullptr) {
        const long long at = (static_cast<long long>(b) * rows + pos) * 2;
        hi = min(static_cast<int>(ranges[at + 1]), keys);
        lo = min(static_cast<int>(ranges[at]), hi);
      } else {
        hi = keys;
      }
    }
    row_lo[tid] = lo;
    row_hi[tid] = hi;
    if (lo < hi) {
      atomicMin(&block_lo, lo);
      atomicMax(&block_hi, hi);
    }
  }
  __syncthreads();

  // The warp's Q rows as A fragments, one per 16 of the head dim.
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    ldmatrix_x4(qf[kk], &qs[row * LDH + kk * 16 + (lane >> 4) * 8]);
  }
  const int r0 = warp * 16 + g, r1 = r0 + 8;
  const int lo0 = row_lo[r0], hi0 = row_hi[r0], lo1 = row_lo[r1], hi1 = row_hi[r1];
  // The keys any of the warp's rows sees: tiles outside them are skipped (warp-uniform).
  int warp_lo = min(lo0 < hi0 ? lo0 : keys, lo1 < hi1 ? lo1 : keys);
  int warp_hi = max(lo0 < hi0 ? hi0 : 0, lo1 < hi1 ? hi1 : 0);
#pragma unroll
  for (int offset = 4; offset < 32; offset *= 2) {
    warp_lo = min(warp_lo, __shfl_xor_sync(0xffffffffu, warp_lo, offset));
    warp_hi = max(warp_hi, __shfl_xor_sync(0xffffffffu, warp_hi, offset));
  }

  const int lo_all = block_lo, hi_all = block_hi;
  const int tiles = hi_all > lo_all ? (hi_all - lo_all + BN - 1) / BN : 0;
  const T* k_head = k + b * k_sb + kv_head * k_sh;
  const T* v_head = v + b * v_sb + kv_head * v_sh;
  auto load_tile = [&](int n0, int buffer) {
    for (int c = tid; c < BN * (D / 8); c += THREADS) {
      const int r = c / (D / 8), part = c % (D / 8), key = n0 + r;
      T* k_to = &ks[buffer][r * LDH + part * 8];
      T* v_to = &vs[buffer][r * LDH + part * 8];
      if (key < keys) {
        copy_async_16(k_to, k_head + key * k_sl + part * 8);
        copy_async_16(v_to, v_head + key * v_sl + part * 8);
      } else {
        // Zeros, not garbage: a masked weight of 0 times a NaN would still be a NaN.
        *reinterpret_cast<uint4*>(k_to) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(v_to) = make_uint4(0, 0, 0, 0);
      }
    }
    copy_async_commit();
  };

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  }
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  if (tiles > 0) {
    load_tile(lo_all, 0);
  }
  for (int t = 0; t < tiles; ++t) {
    const int n0 = lo_all + t * BN, buffer = t & 1;
    if (t + 1 < tiles) {
      load_tile(n0 + BN, buffer ^ 1);
      copy_async_wait<1>();
    } else {
      copy_async_wait<0>();
    }
    __syncthreads();  // the tile is in shared memory for every warp

    if (n0 < warp_hi && n0 + BN > warp_lo) {
      // S = Q·Kᵀ: 8 tiles of 8 keys; K rows are B's columns, so no transpose.
      const T* kt = ks[buffer];
      float s[BN / 8][4];
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          uint32_t kb[4];
          ldmatrix_x4(kb, &kt[(j * 8 + (lane & 7)) * LDH + half * 32 + (lane >> 3) * 8]);
          mma(s[j], qf[half * 2], kb[0], kb[1], T());
          mma(s[j], qf[half * 2 + 1], kb[2], kb[3], T());
        }
      }

      // Online softmax in base 2: row g (values 0, 1) and row g + 8 (values 2, 3).
      float max0 = -INFINITY, max1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + j * 8 + t4 * 2 + (e & 1);
          const bool seen = e < 2 ? (key >= lo0 && key < hi0) : (key >= lo1 && key < hi1);
          s[j][e] = seen ? s[j][e] * scale_log2 : -INFINITY;
        }
        max0 = fmaxf(max0, fmaxf(s[j][0], s[j][1]));
        max1 = fmaxf(max1, fmaxf(s[j][2], s[j][3]));
      }
#pragma unroll
      for (int offset = 1; offset < 4; offset *= 2) {
        max0 = fmaxf(max0, __shfl_xor_sync(0xffffffffu, max0, offset));
        max1 = fmaxf(max1, __shfl_xor_sync(0xffffffffu, max1, offset));
      }
      const float new0 = fmaxf(m0, max0), new1 = fmaxf(m1, max1);
      // A row with nothing visible yet keeps weight 0 everywhere and scale 1.
      const float base0 = new0 == -INFINITY ? 0.f : new0;
      const float base1 = new1 == -INFINITY ? 0.f : new1;
      const float alpha0 = exp2f(m0 - base0), alpha1 = exp2f(m1 - base1);
      m0 = new0;
      m1 = new1;

      // P in the A-operand layout of P·V: 16 keys per fragment, from two 8-key score tiles.
      uint32_t p[BN / 16][4];
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const float* lo = s[2 * kk];
        const float* hi = s[2 * kk + 1];
        p[kk][0] = pack<T>(exp2f(lo[0] - base0), exp2f(lo[1] - base0), sum0);
        p[kk][1] = pack<T>(exp2f(lo[2] - base1), exp2f(lo[3] - base1), sum1);
        p[kk][2] = pack<T>(exp2f(hi[0] - base0), exp2f(hi[1] - base0), sum0);
        p[kk][3] = pack<T>(exp2f(hi[2] - base1), exp2f(hi[3] - base1), sum1);
      }
      // Each lane's share of the row sums; the quad adds them up at the end.
      l0 = l0 * alpha0 + sum0;
      l1 = l1 * alpha1 + sum1;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[j][0] *= alpha0;
        o[j][1] *= alpha0;
        o[j][2] *= alpha1;
        o[j][3] *= alpha1;
      }

      // O += P·V: V rows are keys, B wants them as columns, so ldmatrix transposes.
      const T* vt = vs[buffer];
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
#pragma unroll
        for (int jp = 0; jp < D / 16; ++jp) {
          uint32_t vb[4];
          const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
          ldmatrix_x4_trans(vb, &vt[key * LDH + jp * 16 + (lane >> 4) * 8]);
          mma(o[2 * jp], p[kk], vb[0], vb[1], T());
          mma(o[2 * jp + 1], p[kk], vb[2], vb[3], T());
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }

#pragma unroll
  for (int offset = 1; offset < 4; offset *= 2) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, offset);
    l1 += __shfl_xor_sync(0xffffffffu, l1, offset);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int s = first + (half == 0 ? r0 : r1);
    if (s < stacked) {
      const int pos = s / group, head = kv_head * group + s % group;
      const float inv = half == 0 ? inv0 : inv1;
      T* row = out + ((static_cast<long long>(b) * rows + pos) * heads + head) * D;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(row + j * 8 + t4 * 2) =
            pack<T>(o[j][half * 2] * inv, o[j][half * 2 + 1] * inv);
      }
    }
  }
}

}  // namespace

#define VIDX_ATTENTION_MMA(NAME, T)                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME(                                 \
      const T* q, const T* k, const T* v, T* out, const uint32_t* ranges, int heads,           \
      int kv_heads, int rows, int keys, long long q_sb, long long q_sh, long long q_sl,        \
      long long k_sb, long long k_sh, long long k_sl, long long v_sb, long long v_sh,          \
      long long v_sl, float scale_log2) {                                                      \
    attend<T>(q, k, v, out, ranges, heads, kv_heads, rows, keys, q_sb, q_sh, q_sl, k_sb, k_sh, \
              k_sl, v_sb, v_sh, v_sl, scale_log2);                                             \
  }

VIDX_ATTENTION_MMA(vidx_attention_mma_d64_bf16, __nv_bfloat16)
VIDX_ATTENTION_MMA(vidx_attention_mma_d64_f16, __half)
