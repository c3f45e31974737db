// Sliced GroupNorm loops, written once and compiled per ISA (group_norm.cpp: baseline,
// group_norm_avx512.cpp: the same loops with AVX-512 enabled). x is viewed as [N, C, L] with
// unit stride along L and arbitrary strides along N and C, so a slice of a larger tensor along
// L (a spatial slice) is read in place, without a copy.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/parallel.h"
#include "osmos/dtype.h"

namespace osmos::cpu::group_norm_impl {

struct View { int64_t N, C, L, sN, sC; };

struct LoadF32 { const float* p; float operator()(int64_t i) const { return p[i]; } };
struct LoadF16 { const uint16_t* p; float operator()(int64_t i) const { return f16_to_f32(p[i]); } };
struct LoadBF16 { const uint16_t* p; float operator()(int64_t i) const { return bf16_to_f32(p[i]); } };
struct StoreF32 { float* p; void operator()(int64_t i, float v) const { p[i] = v; } };
struct StoreF16 { uint16_t* p; void operator()(int64_t i, float v) const { p[i] = f32_to_f16(v); } };
struct StoreBF16 { uint16_t* p; void operator()(int64_t i, float v) const { p[i] = f32_to_bf16(v); } };

inline int workers(int64_t rows, int64_t work, int nthreads) {
  return int(std::min<int64_t>(threads_for(work, nthreads, int64_t(1) << 15), std::max<int64_t>(rows, 1)));
}

// Per (n, g): sum and sum of squares in double over the group's C/G channels x L positions,
// ADDED into out[(n*G + g)*2 + {0, 1}], so the statistics of several slices accumulate.
template <class Load>
void stats(const View& v, int64_t G, double* out, int nthreads, Load load) {
  const int64_t cpg = v.C / G, rows = v.N * G;
  parallel_chunks(rows, workers(rows, rows * cpg * v.L, nthreads), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / G, g = r % G;
      double s = 0.0, ss = 0.0;
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const int64_t base = n * v.sN + c * v.sC;
        double rs = 0.0, rss = 0.0;
#pragma omp simd reduction(+ : rs, rss)
        for (int64_t l = 0; l < v.L; ++l) {
          const double x = load(base + l);
          rs += x;
          rss += x * x;
        }
        s += rs;
        ss += rss;
      }
      out[r * 2] += s;
      out[r * 2 + 1] += ss;
    }
  });
}

// y[n, c, l] = act((x - mean[n,g]) * rstd[n,g] * w[c] + b[c]) into contiguous y [N, C, L].
template <class Load, class Store>
void apply(const View& v, int64_t G, const float* mean, const float* rstd, const float* w, const float* b,
           bool silu, int nthreads, Load load, Store store) {
  const int64_t cpg = v.C / G, rows = v.N * v.C;
  parallel_chunks(rows, workers(rows, rows * v.L, nthreads), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / v.C, c = r % v.C, g = c / cpg;
      const float m = mean[n * G + g], rs = rstd[n * G + g];
      const float wc = w ? w[c] : 1.0f, bc = b ? b[c] : 0.0f;
      const int64_t src = n * v.sN + c * v.sC, dst = r * v.L;
      if (silu) {
#pragma omp simd
        for (int64_t l = 0; l < v.L; ++l) {
          const float y = (load(src + l) - m) * rs * wc + bc;
          store(dst + l, y / (1.0f + std::exp(-y)));
        }
      } else {
#pragma omp simd
        for (int64_t l = 0; l < v.L; ++l) store(dst + l, (load(src + l) - m) * rs * wc + bc);
      }
    }
  });
}

// Entry points with the element type chosen at run time; defined once per ISA file.
#define OSMOS_GROUP_NORM_ENTRY_POINTS(SUFFIX)                                                        \
  void group_norm_stats_##SUFFIX(const void* x, int dtype, const View& v, int64_t G, double* out,   \
                                 int nthreads) {                                                    \
    switch (DType(dtype)) {                                                                         \
      case DType::f16: return stats(v, G, out, nthreads, LoadF16{static_cast<const uint16_t*>(x)}); \
      case DType::bf16: return stats(v, G, out, nthreads, LoadBF16{static_cast<const uint16_t*>(x)});\
      default: return stats(v, G, out, nthreads, LoadF32{static_cast<const float*>(x)});             \
    }                                                                                               \
  }                                                                                                 \
  void group_norm_apply_##SUFFIX(const void* x, int dtype, const View& v, int64_t G,                 \
                                 const float* mean, const float* rstd, const float* w,              \
                                 const float* b, bool silu, void* y, int nthreads) {                \
    switch (DType(dtype)) {                                                                         \
      case DType::f16:                                                                              \
        return apply(v, G, mean, rstd, w, b, silu, nthreads, LoadF16{static_cast<const uint16_t*>(x)}, \
                     StoreF16{static_cast<uint16_t*>(y)});                                          \
      case DType::bf16:                                                                             \
        return apply(v, G, mean, rstd, w, b, silu, nthreads, LoadBF16{static_cast<const uint16_t*>(x)}, \
                     StoreBF16{static_cast<uint16_t*>(y)});                                         \
      default:                                                                                      \
        return apply(v, G, mean, rstd, w, b, silu, nthreads, LoadF32{static_cast<const float*>(x)}, \
                     StoreF32{static_cast<float*>(y)});                                             \
    }                                                                                               \
  }

void group_norm_stats_baseline(const void*, int, const View&, int64_t, double*, int);
void group_norm_apply_baseline(const void*, int, const View&, int64_t, const float*, const float*,
                               const float*, const float*, bool, void*, int);
void group_norm_stats_avx512(const void*, int, const View&, int64_t, double*, int);
void group_norm_apply_avx512(const void*, int, const View&, int64_t, const float*, const float*,
                             const float*, const float*, bool, void*, int);

}  // namespace osmos::cpu::group_norm_impl
