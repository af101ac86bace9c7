// vidx's element-wise CUDA kernels (`kernels/elementwise.cu`) compiled for the CPU with the
// stand-ins of `host.h`. `tests/kernels_on_cpu.rs` writes the kernels' source (their anonymous
// namespace) to `kernel_body.inc`. Each kernel runs on its 16-byte path (row lengths divisible
// by 8) and on its one-value path, against a plain loop on the same rounded inputs; the exit
// code is the number of failures.
#include "host.h"

#include "kernel_body.inc"

namespace {

std::mt19937 generator(3);

std::vector<B16> random_values(size_t count, float shift = 0.f) {
  std::normal_distribution<float> normal;
  std::vector<B16> values(count);
  for (auto& value : values) value = from_float<B16>(normal(generator) + shift);
  return values;
}

float f(B16 value) { return to_float(value); }

// What an output holds before the kernel runs: a value no case produces, so a missed write
// shows.
const B16 unwritten = from_float<B16>(99.f);

// |got - expected| / (1 + |expected|), the start-up check's measure.
double relative(float got, double expected) {
  return std::fabs(got - expected) / (1 + std::fabs(expected));
}

void test_epilogue(int rows, int cols, int act, bool has_bias, bool has_gamma, bool has_residual) {
  const auto x = random_values(size_t(rows) * cols), bias = random_values(cols),
             gamma = random_values(cols), residual = random_values(size_t(rows) * cols);
  std::vector<B16> out(size_t(rows) * cols, unwritten);
  launch(3, 1, 1, 64, [&] {
    epilogue<B16>(x.data(), has_bias ? bias.data() : nullptr, has_gamma ? gamma.data() : nullptr,
                  has_residual ? residual.data() : nullptr, out.data(), rows, cols, act);
  });
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      double y = f(x[r * cols + c]);
      if (has_bias) y += f(bias[c]);
      if (act == 1) y = 0.5 * y * (1 + std::erf(y / std::sqrt(2.0)));
      if (has_gamma) y *= f(gamma[c]);
      if (has_residual) y += f(residual[r * cols + c]);
      worst = std::max(worst, relative(f(out[r * cols + c]), y));
    }
  }
  char name[64];
  std::snprintf(name, sizeof name, "epilogue %dx%d act%d bias%d gamma%d residual%d", rows, cols,
                act, has_bias, has_gamma, has_residual);
  report(name, worst, 0.01);
}

void test_swiglu(int rows, int half) {
  const auto x = random_values(size_t(rows) * 2 * half);
  std::vector<B16> out(size_t(rows) * half, unwritten);
  launch(2, 1, 1, 64, [&] { swiglu<B16>(x.data(), out.data(), rows, half); });
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < half; ++c) {
      const double gate = f(x[r * 2 * half + c]), up = f(x[r * 2 * half + half + c]);
      worst = std::max(worst, relative(f(out[r * half + c]), gate / (1 + std::exp(-gate)) * up));
    }
  }
  char name[64];
  std::snprintf(name, sizeof name, "swiglu %dx%d", rows, half);
  report(name, worst, 0.01);
}

void test_rope(int batch, int tokens, int heads, int head_dim) {
  const int half = head_dim / 2, pairs = heads * half;
  const long long rows = (long long)batch * tokens;
  const auto qkv = random_values(rows * 3 * heads * head_dim);
  std::vector<B16> cos(tokens * half), sin(tokens * half), out(2 * rows * heads * head_dim, unwritten);
  std::normal_distribution<float> normal;
  for (int i = 0; i < tokens * half; ++i) {
    const float angle = normal(generator) * 3;
    cos[i] = from_float<B16>(std::cos(angle));
    sin[i] = from_float<B16>(std::sin(angle));
  }
  launch(4, 2, 1, 32, [&] {
    rope_qk<B16>(qkv.data(), cos.data(), sin.data(), out.data(), rows, tokens, pairs, half);
  });
  double worst = 0;
  for (int which = 0; which < 2; ++which) {
    for (long long row = 0; row < rows; ++row) {
      const int t = row % tokens;
      for (int h = 0; h < heads; ++h) {
        const B16* x = &qkv[(row * 3 + which) * heads * head_dim + h * head_dim];
        const B16* y = &out[(which * rows + row) * heads * head_dim + h * head_dim];
        for (int i = 0; i < half; ++i) {
          const double c = f(cos[t * half + i]), s = f(sin[t * half + i]);
          const double x0 = f(x[2 * i]), x1 = f(x[2 * i + 1]);
          worst = std::max(worst, relative(f(y[2 * i]), x0 * c - x1 * s));
          worst = std::max(worst, relative(f(y[2 * i + 1]), x0 * s + x1 * c));
        }
      }
    }
  }
  char name[64];
  std::snprintf(name, sizeof name, "rope %dx%dx%dx%d", batch, tokens, heads, head_dim);
  report(name, worst, 0.01);
}

void test_norm(int rows, int cols, bool rms, bool has_bias) {
  // A mean of 5: a one-pass sum of squares would lose the variance.
  const auto x = random_values(size_t(rows) * cols, 5.f), weight = random_values(cols),
             bias = random_values(cols);
  std::vector<B16> out(size_t(rows) * cols, unwritten);
  launch(2, 1, 1, 64, [&] {
    norm<B16>(x.data(), weight.data(), has_bias ? bias.data() : nullptr, out.data(), rows, cols,
              1e-5f, rms);
  });
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    double mean = 0, variance = 0;
    for (int c = 0; c < cols; ++c) mean += f(x[r * cols + c]);
    mean = rms ? 0 : mean / cols;
    for (int c = 0; c < cols; ++c) variance += std::pow(f(x[r * cols + c]) - mean, 2);
    variance /= cols;
    for (int c = 0; c < cols; ++c) {
      const double y = (f(x[r * cols + c]) - mean) / std::sqrt(variance + 1e-5) * f(weight[c]) +
                       (has_bias ? f(bias[c]) : 0);
      worst = std::max(worst, relative(f(out[r * cols + c]), y));
    }
  }
  char name[64];
  std::snprintf(name, sizeof name, "norm %dx%d rms%d bias%d", rows, cols, rms, has_bias);
  report(name, worst, 0.01);
}

}  // namespace

int main() {
  for (int cols : {200, 36, 1024}) {
    test_epilogue(7, cols, 0, true, false, false);
    test_epilogue(7, cols, 1, true, false, false);
    test_epilogue(7, cols, 0, true, true, true);
    test_epilogue(7, cols, 0, false, true, false);
  }
  test_swiglu(5, 304);
  test_swiglu(5, 300);
  test_swiglu(3, 8);
  test_rope(2, 5, 3, 8);
  test_rope(2, 5, 3, 6);
  test_rope(2, 9, 4, 64);
  for (int cols : {200, 36, 1024, 2048}) {
    test_norm(11, cols, false, true);
    test_norm(11, cols, true, false);
    test_norm(5, cols, false, false);
  }
  std::printf("%d failures\n", failures);
  return failures;
}
