// vidx's element-wise CUDA kernels (`kernels/elementwise.cu`) compiled for the CPU: every
// GPU thread of a block runs as a std::thread, warp shuffles meet at a barrier, and bf16 is a
// 16-bit type rounded to nearest even like the GPU's. `tests/kernels_on_cpu.rs` writes the
// kernels' source (their anonymous namespace) to `elementwise_body.inc` and builds this file
// around it. Each kernel runs on its 16-byte path (row lengths divisible by 8, 16-byte aligned
// vectors) and on its one-value path, against a plain loop in f32/f64; it prints one line per
// case and exits with the number of failures.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __restrict__
#define __global__

struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
struct Dim { long long x = 0, y = 0, z = 0; };
static thread_local Dim blockIdx, threadIdx;
static Dim blockDim, gridDim;

struct B16 { uint16_t bits; };
inline float to_float(B16 v) {
  uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T> T from_float(float x);
template <> B16 from_float<B16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return B16{uint16_t(u >> 16)};
}
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

// Warp shuffles: the 32 threads of a warp meet at a barrier, publish, meet again.
static float slots[1024];
static std::barrier<>* warp_barriers[32];
inline float __shfl_xor_sync(unsigned, float v, int offset) {
  int t = threadIdx.x, w = t / 32, lane = t % 32;
  slots[t] = v;
  warp_barriers[w]->arrive_and_wait();
  float r = slots[w * 32 + (lane ^ offset)];
  warp_barriers[w]->arrive_and_wait();
  return r;
}

#include "elementwise_body.inc"

// Runs `body` as a grid of gx × gy blocks of `threads` threads (a multiple of 32), one block
// at a time.
static void launch(int gx, int gy, int threads, const std::function<void()>& body) {
  gridDim.x = gx;
  gridDim.y = gy;
  blockDim.x = threads;
  std::vector<std::unique_ptr<std::barrier<>>> barriers;
  for (int w = 0; w < threads / 32; ++w) {
    barriers.push_back(std::make_unique<std::barrier<>>(32));
    warp_barriers[w] = barriers.back().get();
  }
  for (int by = 0; by < gy; ++by) {
    for (int bx = 0; bx < gx; ++bx) {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          blockIdx.x = bx;
          blockIdx.y = by;
          threadIdx.x = t;
          body();
        });
      }
      for (auto& thread : pool) thread.join();
    }
  }
}

// Vectors come from operator new, 16-byte aligned: the kernels' 16-byte path applies.
static_assert(__STDCPP_DEFAULT_NEW_ALIGNMENT__ >= 16);
static std::mt19937 gen(3);
static std::vector<B16> randv(size_t n) { std::normal_distribution<float> d; std::vector<B16> v(n); for (auto& x : v) x = from_float<B16>(d(gen)); return v; }
static float f(B16 v) { return to_float(v); }
static int failures = 0;
static void report(const char* name, double worst, double tol) { printf("%-28s worst %.3g %s\n", name, worst, worst <= tol ? "ok" : "FAIL"); if (!(worst <= tol)) ++failures; }

void test_epilogue(int rows, int cols, int act, bool b, bool g, bool r) {
  auto x = randv(rows * cols), bias = randv(cols), gamma = randv(cols), res = randv(rows * cols);
  std::vector<B16> out(rows * cols);
  launch(3, 1, 64, [&] { epilogue<B16>(x.data(), b ? bias.data() : nullptr, g ? gamma.data() : nullptr, r ? res.data() : nullptr, out.data(), rows, cols, act); });
  double worst = 0;
  for (int i = 0; i < rows; ++i) for (int c = 0; c < cols; ++c) {
    float y = f(x[i * cols + c]); if (b) y += f(bias[c]); if (act) y = 0.5f * y * (1 + std::erf(y / std::sqrt(2.f))); if (g) y *= f(gamma[c]); if (r) y += f(res[i * cols + c]);
    worst = std::fmax(worst, std::fabs(f(out[i * cols + c]) - y) / (1 + std::fabs(y)));
  }
  char name[64]; snprintf(name, 64, "epilogue %dx%d a%d%d%d%d", rows, cols, act, b, g, r); report(name, worst, 0.01);
}
void test_swiglu(int rows, int half) {
  auto x = randv(rows * 2 * half); std::vector<B16> out(rows * half);
  launch(2, 1, 64, [&] { swiglu<B16>(x.data(), out.data(), rows, half); });
  double worst = 0;
  for (int i = 0; i < rows; ++i) for (int c = 0; c < half; ++c) {
    float gt = f(x[i * 2 * half + c]), up = f(x[i * 2 * half + half + c]); float y = gt / (1 + std::exp(-gt)) * up;
    worst = std::fmax(worst, std::fabs(f(out[i * half + c]) - y) / (1 + std::fabs(y)));
  }
  char name[64]; snprintf(name, 64, "swiglu %dx%d", rows, half); report(name, worst, 0.01);
}
void test_rope(int B, int T, int H, int D) {
  int half = D / 2, pairs = H * half; long long rows = B * T;
  auto qkv = randv(rows * 3 * H * D); std::vector<B16> cs(T * half), sn(T * half), out(2 * rows * H * D);
  std::normal_distribution<float> d; for (int i = 0; i < T * half; ++i) { float a = d(gen) * 3; cs[i] = from_float<B16>(std::cos(a)); sn[i] = from_float<B16>(std::sin(a)); }
  launch(4, 2, 32, [&] { rope_qk<B16>(qkv.data(), cs.data(), sn.data(), out.data(), rows, T, pairs, half); });
  double worst = 0;
  for (int w = 0; w < 2; ++w) for (int b = 0; b < B; ++b) for (int t = 0; t < T; ++t) for (int h = 0; h < H; ++h) for (int i = 0; i < half; ++i) {
    const B16* x = &qkv[((b * T + t) * 3 + w) * H * D + h * D]; float c = f(cs[t * half + i]), s = f(sn[t * half + i]);
    float e0 = f(x[2*i]) * c - f(x[2*i+1]) * s, e1 = f(x[2*i]) * s + f(x[2*i+1]) * c;
    const B16* y = &out[((w * B + b) * T + t) * H * D + h * D];
    worst = std::fmax(worst, std::fabs(f(y[2*i]) - e0) / (1 + std::fabs(e0))); worst = std::fmax(worst, std::fabs(f(y[2*i+1]) - e1) / (1 + std::fabs(e1)));
  }
  char name[64]; snprintf(name, 64, "rope %dx%dx%dx%d", B, T, H, D); report(name, worst, 0.01);
}
void test_norm(int rows, int cols, bool rms, bool has_b) {
  auto x = randv(rows * cols), w = randv(cols), b = randv(cols); std::vector<B16> out(rows * cols);
  for (auto& v : x) v = from_float<B16>(f(v) + 5.f);  // a large mean
  launch(2, 1, 64, [&] { norm<B16>(x.data(), w.data(), has_b ? b.data() : nullptr, out.data(), rows, cols, 1e-5f, rms); });
  double worst = 0;
  for (int i = 0; i < rows; ++i) {
    double mean = 0, var = 0; for (int c = 0; c < cols; ++c) mean += f(x[i * cols + c]); mean = rms ? 0 : mean / cols;
    for (int c = 0; c < cols; ++c) { double dd = f(x[i * cols + c]) - mean; var += dd * dd; } var /= cols;
    for (int c = 0; c < cols; ++c) { double y = (f(x[i * cols + c]) - mean) / std::sqrt(var + 1e-5) * f(w[c]) + (has_b ? f(b[c]) : 0);
      worst = std::fmax(worst, std::fabs(f(out[i * cols + c]) - y) / (1 + std::fabs(y))); }
  }
  char name[64]; snprintf(name, 64, "norm %dx%d rms%d b%d", rows, cols, rms, has_b); report(name, worst, 0.01);
}
int main() {
  for (int cols : {200, 36, 1024}) { test_epilogue(7, cols, 0, 1, 0, 0); test_epilogue(7, cols, 1, 1, 0, 0); test_epilogue(7, cols, 0, 1, 1, 1); test_epilogue(7, cols, 0, 0, 1, 0); }
  test_swiglu(5, 304); test_swiglu(5, 300); test_swiglu(3, 8);
  test_rope(2, 5, 3, 8); test_rope(2, 5, 3, 6); test_rope(2, 9, 4, 64);
  for (int cols : {200, 36, 1024, 2048}) { test_norm(11, cols, false, true); test_norm(11, cols, true, false); test_norm(5, cols, false, false); }
  printf("%d failures\n", failures);
  return failures != 0;
}
