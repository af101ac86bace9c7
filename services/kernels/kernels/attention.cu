// Fused scaled dot-product attention on the GPU (flash-attention style, forward only):
// `softmax(q·kᵀ·scale)·v` with grouped-query heads and a visible key range per query, without
// ever writing the score matrix to memory. Tensor cores (WMMA, 16×16×16 bf16/f16 tiles, f32
// accumulators) do both products; the online softmax runs in shared memory and registers.
//
// Layouts (element strides, the last axis contiguous):
//   q    [B, Hq, L, D]      any strides (a transposed view of a projection is fine)
//   k, v [B, Hkv, K, D]     any strides (views of a KV cache are fine)
//   out  [B, L, Hq, D]      contiguous, heads last (what the output projection reads)
//   ranges  [B, L, 2] u32 (lo, hi): query l of row b sees keys lo..hi; null: all K keys
// Query head h reads KV head h / (Hq / Hkv). A query that sees no key gets zeros.
//
// One block of 4 warps takes 64 "stacked" query rows of one KV head: stacked row s is
// position s / group of query head kv_head·group + s % group, so the heads sharing a KV head
// share every K/V tile a block loads, and a decode step (L = 1) still fills a block with its
// group. The block walks the union of its rows' visible keys in tiles of 64 keys (a causal
// block stops at its last row's position). Each warp owns 16 rows: S = Q·Kᵀ (tensor cores) →
// shared memory → online softmax, one row at a time across the warp's 32 lanes (lane j holds
// columns j and j + 32) → P (bf16/f16) → P·V (tensor cores) → rescaled into the warp's
// output rows, which stay in registers (lane j: columns j and j + 32 of each of its 16 rows).
#include "precision.cuh"
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

namespace {

constexpr int D = 64;            // head dim (PE-L and Llama 3.2 1B)
constexpr int BM = 64;           // stacked query rows per block
constexpr int BN = 64;           // keys per tile
constexpr int WARPS = BM / 16;   // 16 rows per warp
constexpr int THREADS = WARPS * 32;
constexpr int LDH = D + 8;       // half-precision tile row stride (pads off bank conflicts)
constexpr int LDS = BN + 4;      // f32 score row stride
static_assert(BN == D, "the score buffer doubles as the P·V buffer");
static_assert(D == 64 && BN == 64, "lane j holds columns j and j + 32");

template <typename T>
__device__ __forceinline__ void attend(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    T* __restrict__ out, const uint32_t* __restrict__ ranges,
    int heads, int kv_heads, int rows, int keys,
    long long q_sb, long long q_sh, long long q_sl,
    long long k_sb, long long k_sh, long long k_sl,
    long long v_sb, long long v_sh, long long v_sl,
    float scale_log2) {
  __shared__ __align__(32) T qp[BM * LDH];           // the Q tile, then each warp's P
  __shared__ __align__(32) T ks[BN * LDH];
  __shared__ __align__(32) T vs[BN * LDH];
  __shared__ __align__(32) float sc[WARPS * 16 * LDS];  // scores, then P·V, per warp
  __shared__ int row_lo[BM], row_hi[BM];
  __shared__ int block_lo, block_hi;

  const int group = heads / kv_heads;
  const int b = blockIdx.z, kv_head = blockIdx.y;
  const int first = blockIdx.x * BM;
  const int stacked = rows * group;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

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
    *reinterpret_cast<uint4*>(&qp[r * LDH + part * 8]) = value;
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

  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag[D / 16];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    wmma::load_matrix_sync(q_frag[kk], qp + warp * 16 * LDH + kk * 16, LDH);
  }
  __syncwarp();  // the warp's Q rows are in registers: that space now holds its P
  T* p = qp + warp * 16 * LDH;
  float* sw = sc + warp * 16 * LDS;
  const int* my_lo = row_lo + warp * 16;
  const int* my_hi = row_hi + warp * 16;

  float m[16], l[16], o0[16], o1[16];
#pragma unroll
  for (int r = 0; r < 16; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
    o0[r] = 0.f;
    o1[r] = 0.f;
  }

  const int lo_all = block_lo, hi_all = block_hi;
  for (int n0 = lo_all; n0 < hi_all; n0 += BN) {
    __syncthreads();  // every warp is done with the previous K/V tile
    for (int c = tid; c < BN * (D / 8); c += THREADS) {
      const int r = c / (D / 8), part = c % (D / 8), key = n0 + r;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key < keys) {
        kv = *reinterpret_cast<const uint4*>(k + b * k_sb + kv_head * k_sh + key * k_sl + part * 8);
        vv = *reinterpret_cast<const uint4*>(v + b * v_sb + kv_head * v_sh + key * v_sl + part * 8);
      }
      *reinterpret_cast<uint4*>(&ks[r * LDH + part * 8]) = kv;
      *reinterpret_cast<uint4*>(&vs[r * LDH + part * 8]) = vv;
    }
    __syncthreads();

    // S = Q·Kᵀ for the warp's 16 rows: Kᵀ is K read column-major.
#pragma unroll
    for (int j = 0; j < BN / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> k_frag;
        wmma::load_matrix_sync(k_frag, ks + j * 16 * LDH + kk * 16, LDH);
        wmma::mma_sync(acc, q_frag[kk], k_frag, acc);
      }
      wmma::store_matrix_sync(sw + j * 16, acc, LDS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax, row by row; lane j holds keys n0 + j and n0 + j + 32.
    float alpha[16];
    const int key0 = n0 + lane, key1 = n0 + lane + 32;
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      const int lo = my_lo[r], hi = my_hi[r];
      const float x0 = (key0 >= lo && key0 < hi) ? sw[r * LDS + lane] * scale_log2 : -INFINITY;
      const float x1 = (key1 >= lo && key1 < hi) ? sw[r * LDS + lane + 32] * scale_log2 : -INFINITY;
      float mx = fmaxf(x0, x1);
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, offset));
      }
      const float m_new = fmaxf(m[r], mx);
      float p0 = 0.f, p1 = 0.f, a = 1.f;
      if (m_new != -INFINITY) {
        p0 = exp2f(x0 - m_new);
        p1 = exp2f(x1 - m_new);
        a = exp2f(m[r] - m_new);
      }
      const T h0 = from_float<T>(p0), h1 = from_float<T>(p1);
      p[r * LDH + lane] = h0;
      p[r * LDH + lane + 32] = h1;
      // The sum of the rounded weights: the ones P·V multiplies.
      float sum = to_float(h0) + to_float(h1);
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      }
      l[r] = l[r] * a + sum;
      m[r] = m_new;
      alpha[r] = a;
    }
    __syncwarp();

    // P·V into the score buffer (the scores are spent).
#pragma unroll
    for (int j = 0; j < D / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v_frag;
        wmma::load_matrix_sync(p_frag, p + kk * 16, LDH);
        wmma::load_matrix_sync(v_frag, vs + kk * 16 * LDH + j * 16, LDH);
        wmma::mma_sync(acc, p_frag, v_frag, acc);
      }
      wmma::store_matrix_sync(sw + j * 16, acc, LDS, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      o0[r] = o0[r] * alpha[r] + sw[r * LDS + lane];
      o1[r] = o1[r] * alpha[r] + sw[r * LDS + lane + 32];
    }
    __syncwarp();  // the next tile's scores overwrite the buffer
  }

#pragma unroll
  for (int r = 0; r < 16; ++r) {
    const int s = first + warp * 16 + r;
    if (s < stacked) {
      const int pos = s / group, head = kv_head * group + s % group;
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      T* row = out + ((static_cast<long long>(b) * rows + pos) * heads + head) * D;
      row[lane] = from_float<T>(o0[r] * inv);
      row[lane + 32] = from_float<T>(o1[r] * inv);
    }
  }
}

}  // namespace

#define VIDX_ATTENTION(NAME, T)                                                               \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME(                                 \
      const T* q, const T* k, const T* v, T* out, const uint32_t* ranges, int heads,           \
      int kv_heads, int rows, int keys, long long q_sb, long long q_sh, long long q_sl,        \
      long long k_sb, long long k_sh, long long k_sl, long long v_sb, long long v_sh,          \
      long long v_sl, float scale_log2) {                                                      \
    attend<T>(q, k, v, out, ranges, heads, kv_heads, rows, keys, q_sb, q_sh, q_sl, k_sb, k_sh, \
              k_sl, v_sb, v_sh, v_sl, scale_log2);                                             \
  }

VIDX_ATTENTION(vidx_attention_d64_bf16, __nv_bfloat16)
VIDX_ATTENTION(vidx_attention_d64_f16, __half)
