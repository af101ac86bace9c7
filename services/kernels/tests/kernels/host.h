// CPU stand-ins for the CUDA built-ins vidx's kernels use, for compiling the kernels' source on
// the CPU (`tests/kernels_on_cpu.rs`). A grid runs one block at a time; each thread of the
// block is a std::thread; `__shared__` arrays become statics (one block at a time shares them);
// `__syncthreads` and warp-wide operations meet at barriers; bf16 is a 16-bit type rounded to
// nearest even like the GPU's.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __restrict__
#define __global__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::max;
using std::min;

struct uint4 {
  unsigned x, y, z, w;
};
struct uint2 {
  unsigned x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

struct Dim {
  long long x = 0, y = 0, z = 0;
};
static thread_local Dim blockIdx, threadIdx;
static Dim blockDim, gridDim;

struct B16 {
  uint16_t bits;
};
inline float to_float(B16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
T from_float(float x);
template <>
inline B16 from_float<B16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return B16{uint16_t(u >> 16)};
}
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

// The running block's rendezvous points.
struct BlockBarriers {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
};
static BlockBarriers block_barriers;
inline void __syncthreads() { block_barriers.all->arrive_and_wait(); }
inline void warp_sync() { block_barriers.warps[threadIdx.x / 32]->arrive_and_wait(); }

// Each thread's slot for warp-wide exchanges.
static unsigned char mailbox[1024][64];

template <typename V>
V __shfl_xor_sync(unsigned, V value, int offset) {
  const int t = threadIdx.x, lane = t % 32;
  std::memcpy(mailbox[t], &value, sizeof value);
  warp_sync();
  V other;
  std::memcpy(&other, mailbox[t - lane + (lane ^ offset)], sizeof other);
  warp_sync();
  return other;
}

static std::mutex atomic_mutex;
inline int atomicMin(int* at, int value) {
  std::lock_guard<std::mutex> guard(atomic_mutex);
  const int old = *at;
  *at = std::min(old, value);
  return old;
}
inline int atomicMax(int* at, int value) {
  std::lock_guard<std::mutex> guard(atomic_mutex);
  const int old = *at;
  *at = std::max(old, value);
  return old;
}

// Runs `body` over a gx × gy × gz grid of blocks of `threads` threads (a multiple of 32).
inline void launch(int gx, int gy, int gz, int threads, const std::function<void()>& body) {
  gridDim.x = gx;
  gridDim.y = gy;
  gridDim.z = gz;
  blockDim.x = threads;
  block_barriers.all = std::make_unique<std::barrier<>>(threads);
  block_barriers.warps.clear();
  for (int w = 0; w < threads / 32; ++w) {
    block_barriers.warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  for (int bz = 0; bz < gz; ++bz) {
    for (int by = 0; by < gy; ++by) {
      for (int bx = 0; bx < gx; ++bx) {
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            blockIdx.x = bx;
            blockIdx.y = by;
            blockIdx.z = bz;
            threadIdx.x = t;
            body();
          });
        }
        for (auto& thread : pool) thread.join();
      }
    }
  }
}

// Vectors come from operator new, 16-byte aligned: the kernels' 16-byte paths apply.
static_assert(__STDCPP_DEFAULT_NEW_ALIGNMENT__ >= 16);

static int failures = 0;
inline void report(const char* name, double worst, double tolerance) {
  const bool ok = worst <= tolerance;
  std::printf("%-32s worst %.3g %s\n", name, worst, ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}
