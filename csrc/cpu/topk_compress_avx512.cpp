// AVX-512 candidate pass of the CPU TopK EF21 compression: 16 elements per step, keys compared
// in registers, hits compressed into the candidate buffer with full-width stores.
#include "cpu/topk_compress.h"

#include "osmos/topk.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#include "cpu/avx512_lanes.h"

namespace osmos::cpu {
namespace {

inline __m512 widen(F32, const float* p, __mmask16 m) { return load16_f32(p, m); }
inline __m512 widen(F16, const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(load16_u16(p, m)); }
inline __m512 widen(BF16, const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load16_u16(p, m)), 16));
}

// v rounded to the dtype (nearest-even), as floats; NaN lanes stay NaN.
inline __m512 round_to(F32, __m512 v) { return v; }
inline __m512 round_to(F16, __m512 v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline __m512 round_to(BF16, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  r = _mm512_and_si512(r, _mm512_set1_epi32(int(0xffff0000u)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_castsi512_ps(_mm512_mask_blend_epi32(nan, r, u));
}

template <class X, class S>
int64_t candidates_avx512(const void* xv, const void* sv, int64_t begin, int64_t end, uint32_t low,
                          float* d_out, uint32_t* index_out, int64_t capacity) {
  auto* x = static_cast<const typename X::storage*>(xv);
  auto* s = static_cast<const typename S::storage*>(sv);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i nan_key = _mm512_set1_epi32(int(topk::kNanKey));
  const __m512i low_v = _mm512_set1_epi32(int(low));
  const __m512i step = _mm512_set1_epi32(16);
  __m512i index = _mm512_add_epi32(_mm512_set1_epi32(int(begin)),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const int64_t limit = capacity - 16;
  int64_t count = 0;
  for (int64_t i = begin; i < end; i += 16) {
    const __mmask16 m = lanes16(end - i);
    const __m512 d = round_to(S{}, _mm512_sub_ps(widen(X{}, x + i, m), widen(S{}, s + i, m)));
    // |d| bits, NaNs (all above 0x7f800000) clamped to the one NaN key.
    const __m512i key = _mm512_min_epu32(_mm512_and_si512(_mm512_castps_si512(d), abs_mask), nan_key);
    const __mmask16 hit = _mm512_mask_cmpge_epu32_mask(m, key, low_v);
    if (hit) {
      _mm512_storeu_ps(d_out + count, _mm512_maskz_compress_ps(hit, d));
      _mm512_storeu_si512(index_out + count, _mm512_maskz_compress_epi32(hit, index));
      count += __builtin_popcount(unsigned(hit));
      if (count > limit) return -1;
    }
    index = _mm512_add_epi32(index, step);
  }
  return count;
}

}  // namespace

CandidateFn candidate_fn_avx512(DType xt, DType st) {
  CandidateFn fn = nullptr;
  topk::dispatch_pair(xt, st, [&](auto xtag, auto stag) {
    fn = &candidates_avx512<decltype(xtag), decltype(stag)>;
  });
  return fn;
}

}  // namespace osmos::cpu

#else

namespace osmos::cpu {
CandidateFn candidate_fn_avx512(DType, DType) { return nullptr; }
}  // namespace osmos::cpu

#endif
