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

// The loops live in an anonymous namespace: each including file (baseline, AVX-512) gets its
// own copy compiled with its own flags, instead of the linker keeping one for both.
namespace {

struct LoadF32 { const float* p; float operator()(int64_t i) const { return p[i]; } };
struct LoadF16 { const uint16_t* p; float operator()(int64_t i) const { return f16_to_f32(p[i]); } };
struct LoadBF16 { const uint16_t* p; float operator()(int64_t i) const { return bf16_to_f32(p[i]); } };
struct StoreF32 { float* p; void operator()(int64_t i, float v) const { p[i] = v; } };
struct StoreF16 { uint16_t* p; void operator()(int64_t i, float v) const { p[i] = f32_to_f16(v); } };
struct StoreBF16 { uint16_t* p; void operator()(int64_t i, float v) const { p[i] = f32_to_bf16(v); } };

// SiLU with an exp that vectorises (no libm call): exp(-y) = 2^n * e^r, |r| <= ln2 / 2, Cody-Waite
// reduction and Cephes' expf polynomial (about 2 ulp); n from a truncating conversion of a
// positive number, so the loop needs nothing beyond SSE2.
inline float silu_fast(float y) {
  float z = std::min(std::max(-y, -87.3f), 88.7f);
  const int32_t ni = int32_t(z * 1.44269504f + 128.5f) - 128;  // floor(z log2 e + 1/2)
  const float n = float(ni);
  const float r = (z - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = (p * r * r + r + 1.0f) * bits_f32(uint32_t(ni + 127) << 23);
  return y / (1.0f + e);
}

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
          store(dst + l, silu_fast(y));
        }
      } else {
#pragma omp simd
        for (int64_t l = 0; l < v.L; ++l) store(dst + l, (load(src + l) - m) * rs * wc + bc);
      }
    }
  });
}

}  // namespace

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
