#include "cpu/topk_accumulate.h"

namespace osmos::cpu {
namespace {

template <typename I>
int64_t first_bad(const I* idx, int64_t stride, const int64_t* counts, int64_t rows, int64_t cols, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const I* row = idx + r * stride;
    const int64_t c = counts ? counts[r] : cols;
    // one branch-free sweep per row; the exact position is only looked up on failure
    bool bad = false;
    for (int64_t j = 0; j < c; ++j) bad |= static_cast<uint64_t>(static_cast<int64_t>(row[j])) >= static_cast<uint64_t>(n);
    if (bad)
      for (int64_t j = 0; j < c; ++j)
        if (static_cast<uint64_t>(static_cast<int64_t>(row[j])) >= static_cast<uint64_t>(n)) return r * cols + j;
  }
  return -1;
}

template <typename I>
void add_rows(float* out, const float* values, int64_t vstride, const I* idx, int64_t istride,
              const int64_t* counts, const float* weights, int64_t rows, int64_t cols, float alpha) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* v = values + r * vstride;
    const I* row = idx + r * istride;
    const int64_t c = counts ? counts[r] : cols;
    const float w = weights ? weights[r] : 1.0f;
    for (int64_t j = 0; j < c; ++j) {
      float p = weights ? v[j] * w : v[j];
      if (alpha != 1.0f) p = alpha * p;
      out[row[j]] += p;
    }
  }
}

}  // namespace

int64_t topk_accumulate(float* out, int64_t n, const float* values, int64_t values_stride,
                        const void* indices, bool indices_int64, int64_t indices_stride,
                        const int64_t* counts, const float* weights, int64_t rows, int64_t cols,
                        float alpha) {
  if (indices_int64) {
    auto idx = static_cast<const int64_t*>(indices);
    const int64_t bad = first_bad(idx, indices_stride, counts, rows, cols, n);
    if (bad >= 0) return bad;
    add_rows(out, values, values_stride, idx, indices_stride, counts, weights, rows, cols, alpha);
  } else {
    auto idx = static_cast<const int32_t*>(indices);
    const int64_t bad = first_bad(idx, indices_stride, counts, rows, cols, n);
    if (bad >= 0) return bad;
    add_rows(out, values, values_stride, idx, indices_stride, counts, weights, rows, cols, alpha);
  }
  return -1;
}

}  // namespace osmos::cpu
