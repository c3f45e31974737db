// AVX-512 path of the fused rank-1 adapter injection (see adapter_inject.h): 16 channels per
// vector, projections four adapters at a time so each x vector is loaded once per group,
// then one pass over the output row that adds every adapter's scaled up-vector.
#include <immintrin.h>

#include <stdexcept>

#include "cpu/adapter_inject.h"
#include "cpu/avx512_lanes.h"
#include "osmos/dtype.h"

namespace osmos::cpu {
namespace {

struct F32 {
  static __m512 load(const void* p, int64_t i, __mmask16 m) { return load16_f32(static_cast<const float*>(p) + i, m); }
  static void store(void* p, int64_t i, __m512 v, __mmask16 m) { store16_f32(static_cast<float*>(p) + i, v, m); }
};
struct F16 {
  static __m512 load(const void* p, int64_t i, __mmask16 m) {
    return _mm512_cvtph_ps(load16_u16(static_cast<const uint16_t*>(p) + i, m));
  }
  static void store(void* p, int64_t i, __m512 v, __mmask16 m) {
    store16_u16(static_cast<uint16_t*>(p) + i, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), m);
  }
};
struct BF16 {
  static __m512 load(const void* p, int64_t i, __mmask16 m) {
    __m256i h = load16_u16(static_cast<const uint16_t*>(p) + i, m);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  // Round to nearest even; NaN stays a quiet NaN (as osmos::f32_to_bf16).
  static void store(void* p, int64_t i, __m512 v, __mmask16 m) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    rounded = _mm512_mask_mov_epi32(rounded, nan, quiet);
    store16_u16(static_cast<uint16_t*>(p) + i, _mm512_cvtepi32_epi16(rounded), m);
  }
};

// R consecutive rows at once: every down- and up-vector load serves R rows. q holds R * C
// projections.
template <class E, int R>
void row_block(const AdapterInjectArgs& a, int64_t r, float* q) {
  const int64_t in = a.in, out = a.out_features, C = a.adapters;
  int64_t k = 0;
  for (; k + 4 <= C; k += 4) {
    const float* d = a.down + k * in;
    __m512 acc[R][4];
    #pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
      #pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < in; c += 16) {
      const __mmask16 m = lanes16(in - c);
      const __m512 d0 = load16_f32(d + c, m), d1 = load16_f32(d + in + c, m), d2 = load16_f32(d + 2 * in + c, m),
                   d3 = load16_f32(d + 3 * in + c, m);
      #pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m512 xv = E::load(a.x, (r + i) * in + c, m);
        acc[i][0] = _mm512_fmadd_ps(xv, d0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(xv, d1, acc[i][1]);
        acc[i][2] = _mm512_fmadd_ps(xv, d2, acc[i][2]);
        acc[i][3] = _mm512_fmadd_ps(xv, d3, acc[i][3]);
      }
    }
    #pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
      #pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) q[i * C + k + j] = _mm512_reduce_add_ps(acc[i][j]);
  }
  for (; k < C; ++k) {
    const float* d = a.down + k * in;
    __m512 acc[R];
    #pragma GCC unroll 4
    for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < in; c += 16) {
      const __mmask16 m = lanes16(in - c);
      const __m512 dv = load16_f32(d + c, m);
      #pragma GCC unroll 4
      for (int i = 0; i < R; ++i) acc[i] = _mm512_fmadd_ps(E::load(a.x, (r + i) * in + c, m), dv, acc[i]);
    }
    #pragma GCC unroll 4
    for (int i = 0; i < R; ++i) q[i * C + k] = _mm512_reduce_add_ps(acc[i]);
  }
  #pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    const int64_t b = (r + i) / a.tokens;
    for (k = 0; k < C; ++k) q[i * C + k] *= a.gamma[b * C + k];
  }
  for (int64_t o = 0; o < out; o += 16) {
    const __mmask16 m = lanes16(out - o);
    __m512 acc[R];
    #pragma GCC unroll 4
    for (int i = 0; i < R; ++i) acc[i] = E::load(a.y, (r + i) * out + o, m);
    for (k = 0; k < C; ++k) {
      const __m512 u = load16_f32(a.up + k * out + o, m);
      #pragma GCC unroll 4
      for (int i = 0; i < R; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * C + k]), u, acc[i]);
    }
    #pragma GCC unroll 4
    for (int i = 0; i < R; ++i) E::store(a.out, (r + i) * out + o, acc[i], m);
  }
}

// Four rows per pass once the adapters' vectors outgrow L1 (32 KiB and up: re-reading them per row
// from L2 was the cost); below that one row at a time, which streams x, y and out with fewer
// concurrent streams (measured on a Zen 5 EPYC: 4096 x 320, C = 4, 10 KiB of adapters: 0.56 ms one
// row at a time vs 0.92-0.97 ms four; C = 16, 40 KiB: 1.97 vs 1.16-1.22 ms).
template <class E>
void rows(const AdapterInjectArgs& a, int64_t r0, int64_t r1, float* q) {
  const bool four = a.adapters * (a.in + a.out_features) * int64_t(sizeof(float)) >= (32 << 10);
  int64_t r = r0;
  if (four)
    for (; r + 4 <= r1; r += 4) row_block<E, 4>(a, r, q);
  for (; r < r1; ++r) row_block<E, 1>(a, r, q);
}

}  // namespace

void adapter_inject_rows_avx512(const AdapterInjectArgs& a, int64_t r0, int64_t r1, float* q) {
  switch (DType(a.dtype)) {
    case DType::f32: return rows<F32>(a, r0, r1, q);
    case DType::f16: return rows<F16>(a, r0, r1, q);
    case DType::bf16: return rows<BF16>(a, r0, r1, q);
    default: throw std::invalid_argument("adapter_inject: x must be float32, float16 or bfloat16");
  }
}

}  // namespace osmos::cpu
