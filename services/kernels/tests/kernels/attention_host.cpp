// vidx's register-resident attention kernel (`kernels/attention_mma.cu`) compiled for the CPU
// with the stand-ins of `host.h` and CPU versions of the warp-level PTX it is built on:
// ldmatrix (plain and transposed), mma.sync m16n8k16 and cp.async, each following the PTX ISA's
// fragment layouts (the kernel itself is checked against them on a GPU by
// `plm_bench --check-attention`). `tests/kernels_on_cpu.rs` writes the kernel's source (its
// anonymous namespace) to `kernel_body.inc`. The cases are a causal prefill over a KV-cache
// view with a left-padded row, a decode step, a vision batch (no mask, a partial last tile) and
// a row that sees no key, against softmax attention in double precision on the same rounded
// inputs; the exit code is the number of failures.
#define VIDX_HOST_EMULATION
#include "host.h"

namespace {

uint16_t value_at(const void* row, int column) {
  uint16_t value;
  std::memcpy(&value, static_cast<const char*>(row) + 2 * column, 2);
  return value;
}

float low(uint32_t bits) { return to_float(B16{uint16_t(bits & 0xffff)}); }
float high(uint32_t bits) { return to_float(B16{uint16_t(bits >> 16)}); }

}  // namespace

// Four 8×8 matrices; lanes 8m..8m+7 give matrix m's row addresses. Lane l gets row l/4,
// columns 2(l%4) and 2(l%4)+1 of each (transposed: column l/4 of rows 2(l%4) and 2(l%4)+1).
inline void ldmatrix(uint32_t (&r)[4], const void* row, bool transposed) {
  const int t = threadIdx.x, lane = t % 32, base = t - lane;
  std::memcpy(mailbox[t], &row, sizeof row);
  warp_sync();
  for (int m = 0; m < 4; ++m) {
    const void* rows[8];
    for (int i = 0; i < 8; ++i) std::memcpy(&rows[i], mailbox[base + m * 8 + i], sizeof rows[i]);
    const int pair = 2 * (lane % 4), other = lane / 4;
    const uint32_t first = transposed ? value_at(rows[pair], other) : value_at(rows[other], pair);
    const uint32_t second =
        transposed ? value_at(rows[pair + 1], other) : value_at(rows[other], pair + 1);
    r[m] = first | (second << 16);
  }
  warp_sync();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ldmatrix(r, row, true); }

// The copy lands at once, which the kernel's waits allow.
inline void copy_async_16(void* destination, const void* source) {
  std::memcpy(destination, source, 16);
}
inline void copy_async_commit() {}
template <int N>
void copy_async_wait() {}

// d += a·b for the warp's 16×16 A and 16×8 B. Lane l (g = l/4, c = 2(l%4)) holds A[g][c, c+1],
// A[g+8][c, c+1], A[g][c+8, c+9], A[g+8][c+8, c+9]; B[c, c+1][g] and B[c+8, c+9][g]; and
// D[g][c, c+1], D[g+8][c, c+1].
inline void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, B16) {
  const int t = threadIdx.x, lane = t % 32, base = t - lane;
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  std::memcpy(mailbox[t], mine, sizeof mine);
  warp_sync();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    uint32_t v[6];
    std::memcpy(v, mailbox[base + l], sizeof v);
    const int g = l / 4, c = 2 * (l % 4);
    A[g][c] = low(v[0]), A[g][c + 1] = high(v[0]);
    A[g + 8][c] = low(v[1]), A[g + 8][c + 1] = high(v[1]);
    A[g][c + 8] = low(v[2]), A[g][c + 9] = high(v[2]);
    A[g + 8][c + 8] = low(v[3]), A[g + 8][c + 9] = high(v[3]);
    B[c][g] = low(v[4]), B[c + 1][g] = high(v[4]);
    B[c + 8][g] = low(v[5]), B[c + 9][g] = high(v[5]);
  }
  warp_sync();
  const int g = lane / 4, c = 2 * (lane % 4);
  for (int e = 0; e < 4; ++e) {
    const int row = e < 2 ? g : g + 8, column = c + (e & 1);
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][column];
    d[e] += sum;
  }
}

#include "kernel_body.inc"

namespace {

std::mt19937 generator(7);

std::vector<B16> random_values(size_t count) {
  std::normal_distribution<float> normal;
  std::vector<B16> values(count);
  for (auto& value : values) value = from_float<B16>(normal(generator));
  return values;
}

// One case: q stored [B, L, Hq, 64] and read as [B, Hq, L, 64] (a transposed view), k and v
// [B, Hkv, capacity, 64] of which the first `keys` positions are read (a KV-cache view).
void run_case(const char* name, int batch, int heads, int kv_heads, int rows, int keys,
              int capacity, const std::vector<uint32_t>& ranges) {
  constexpr int HD = 64;
  const auto q = random_values(size_t(batch) * rows * heads * HD);
  const auto k = random_values(size_t(batch) * kv_heads * capacity * HD);
  const auto v = random_values(size_t(batch) * kv_heads * capacity * HD);
  std::vector<B16> out(size_t(batch) * rows * heads * HD, from_float<B16>(99.f));
  const long long q_sb = (long long)rows * heads * HD, q_sh = HD, q_sl = (long long)heads * HD;
  const long long k_sb = (long long)kv_heads * capacity * HD, k_sh = (long long)capacity * HD,
                  k_sl = HD;
  const float scale = 0.125f, scale_log2 = scale * 1.4426950408889634f;
  const int group = heads / kv_heads;
  const int blocks = (rows * group + 63) / 64;
  launch(blocks, kv_heads, batch, 128, [&] {
    attend<B16>(q.data(), k.data(), v.data(), out.data(), ranges.empty() ? nullptr : ranges.data(),
                heads, kv_heads, rows, keys, q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, k_sb, k_sh, k_sl,
                scale_log2);
  });
  double worst = 0;
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < heads; ++h) {
      const int kv = h / group;
      for (int l = 0; l < rows; ++l) {
        int lo = 0, hi = keys;
        if (!ranges.empty()) {
          hi = std::min<int>(ranges[(size_t(b) * rows + l) * 2 + 1], keys);
          lo = std::min<int>(ranges[(size_t(b) * rows + l) * 2], hi);
        }
        const B16* query = &q[b * q_sb + h * q_sh + l * q_sl];
        std::vector<double> weights(keys, 0.0);
        double top = -INFINITY, total = 0;
        for (int j = lo; j < hi; ++j) {
          double dot = 0;
          for (int i = 0; i < HD; ++i) {
            dot += double(to_float(query[i])) * to_float(k[b * k_sb + kv * k_sh + j * k_sl + i]);
          }
          weights[j] = dot * scale;
          top = std::max(top, weights[j]);
        }
        for (int j = lo; j < hi; ++j) total += weights[j] = std::exp(weights[j] - top);
        const B16* row = &out[((size_t(b) * rows + l) * heads + h) * HD];
        for (int i = 0; i < HD; ++i) {
          double expected = 0;
          for (int j = lo; j < hi; ++j) {
            expected += weights[j] / total * to_float(v[b * k_sb + kv * k_sh + j * k_sl + i]);
          }
          worst = std::max(worst, std::fabs(to_float(row[i]) - expected));
        }
      }
    }
  }
  report(name, worst, 0.02);
}

}  // namespace

int main() {
  // Prefill: 2 rows of 40 new queries after 30 cached positions, 8 query heads on 2 KV heads;
  // row 1 is left-padded by 9, and its query 0 sees nothing.
  {
    const int rows = 40, past = 30;
    std::vector<uint32_t> ranges;
    for (int b = 0; b < 2; ++b) {
      for (int l = 0; l < rows; ++l) {
        const uint32_t lo = b == 0 ? 0 : 9, hi = past + l + 1;
        ranges.push_back(b == 1 && l == 0 ? 5 : lo);
        ranges.push_back(b == 1 && l == 0 ? 5 : hi);
      }
    }
    run_case("attention prefill causal", 2, 8, 2, rows, past + rows, 100, ranges);
  }
  // Decode: 3 rows of one query over 100 keys, row b left-padded by 7b.
  {
    std::vector<uint32_t> ranges;
    for (int b = 0; b < 3; ++b) ranges.insert(ranges.end(), {uint32_t(7 * b), 100});
    run_case("attention decode", 3, 8, 2, 1, 100, 100, ranges);
  }
  // Vision: every query sees all 130 keys (a partial last tile), one query head per KV head.
  run_case("attention vision", 2, 2, 2, 130, 130, 130, {});
  std::printf("%d failures\n", failures);
  return failures;
}
