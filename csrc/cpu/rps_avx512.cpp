// AVX-512 (F + DQ) HashedNet gather and scatter for float32: eight 64-bit index hashes per
// instruction (vpmullq + the Mersenne folds of osmos/rps_hash.h), a hardware gather of M, and one
// sign hash per aligned group of 16 elements turned into a lane mask that flips the sign bit.
// Results are bit-identical to the scalar kernels in rps.cpp (same products, same order of adds).
#include <immintrin.h>

#include "cpu/rps_avx512.h"

namespace osmos::cpu::avx512 {
namespace {

using rps::Map;

inline __m512i mod_prime(__m512i x) {
  const __m512i prime = _mm512_set1_epi64(rps::kPrime);
  __m512i y = _mm512_add_epi64(_mm512_and_si512(x, prime), _mm512_srli_epi64(x, 31));
  y = _mm512_add_epi64(_mm512_and_si512(y, prime), _mm512_srli_epi64(y, 31));
  const __mmask8 ge = _mm512_cmpge_epi64_mask(y, prime);
  return _mm512_mask_sub_epi64(y, ge, y, prime);
}

// M indices of the eight elements with global indices i .. i + 7.
inline __m512i hashednet_index8(const Map& p, int64_t i) {
  const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i x = mod_prime(_mm512_add_epi64(_mm512_set1_epi64(i), lanes));
  __m512i acc = _mm512_set1_epi64(p.a[3]);
  acc = mod_prime(_mm512_add_epi64(_mm512_mullo_epi64(acc, x), _mm512_set1_epi64(p.a[2])));
  acc = mod_prime(_mm512_add_epi64(_mm512_mullo_epi64(acc, x), _mm512_set1_epi64(p.a[1])));
  acc = mod_prime(_mm512_add_epi64(_mm512_mullo_epi64(acc, x), _mm512_set1_epi64(p.a[0])));
  return _mm512_srli_epi64(_mm512_mullo_epi64(acc, _mm512_set1_epi64(p.m)), 31);
}

// Lanes whose sign is -1 among the 16 elements with global indices 16 g .. 16 g + 15.
inline __mmask16 negative_lanes(const Map& p, int64_t g) {
  return p.use_sign ? __mmask16(rps::sign_bits(p, g) & 0xffff) : __mmask16(0);
}

}  // namespace

int64_t hashednet_gather_f32(const float* M, float* W, const Map& p, int64_t begin, int64_t end, float scale) {
  int64_t at = begin;
  const int64_t head = (16 - ((p.offset + at) & 15)) & 15;  // elements before the first group of 16
  if (head > 0) return at;  // the caller handles them, then calls again from an aligned index
  const __m512 factor = _mm512_set1_ps(scale);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (; at + 16 <= end; at += 16) {
    const int64_t i = p.offset + at;
    const __m256 lo = _mm512_i64gather_ps(hashednet_index8(p, i), M, 4);
    const __m256 hi = _mm512_i64gather_ps(hashednet_index8(p, i + 8), M, 4);
    __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
    v = _mm512_mul_ps(factor, v);
    v = _mm512_mask_xor_ps(v, negative_lanes(p, i >> 4), v, sign_bit);
    _mm512_storeu_ps(W + at, v);
  }
  return at;
}

int64_t hashednet_scatter_f32(const float* G, float* acc, const Map& p, int64_t begin, int64_t end, float scale,
                              int64_t lo, int64_t hi) {
  int64_t at = begin;
  if (((p.offset + at) & 15) != 0) return at;
  const __m512i lo_v = _mm512_set1_epi64(lo), hi_v = _mm512_set1_epi64(hi);
  alignas(64) int64_t index[16];
  for (; at + 16 <= end; at += 16) {
    const int64_t i = p.offset + at;
    const __m512i j0 = hashednet_index8(p, i), j1 = hashednet_index8(p, i + 8);
    const __mmask8 in0 = _mm512_cmpge_epi64_mask(j0, lo_v) & _mm512_cmplt_epi64_mask(j0, hi_v);
    const __mmask8 in1 = _mm512_cmpge_epi64_mask(j1, lo_v) & _mm512_cmplt_epi64_mask(j1, hi_v);
    unsigned mine = unsigned(in0) | (unsigned(in1) << 8);
    if (!mine) continue;
    _mm512_store_si512(index, j0);
    _mm512_store_si512(index + 8, j1);
    const unsigned negative = negative_lanes(p, i >> 4);
    while (mine) {  // increasing element order, as the scalar kernel adds
      const int q = __builtin_ctz(mine);
      mine &= mine - 1;
      const float v = scale * G[at + q];
      acc[index[q]] += (negative >> q) & 1 ? -v : v;
    }
  }
  return at;
}

}  // namespace osmos::cpu::avx512
