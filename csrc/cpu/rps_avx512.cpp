// AVX-512 (F + DQ) HashedNet kernels for float32: eight 64-bit index hashes per instruction (the
// Horner steps of osmos/rps_hash.h with 32 x 32 -> 64-bit products, exact because both factors
// are below 2^31, and its Mersenne folds), a hardware gather of M, and one sign hash per aligned
// group of 16 elements turned into a lane mask that flips the sign bit. Results are bit-identical
// to the scalar kernels in rps.cpp (same products, same order of adds).
#include <immintrin.h>

#include "cpu/rps_avx512.h"

namespace osmos::cpu::avx512 {
namespace {

using rps::Map;

// x mod P for lanes below 2^63 (rps::mod_prime).
inline __m512i mod_prime(__m512i x) {
  const __m512i prime = _mm512_set1_epi64(rps::kPrime);
  __m512i y = _mm512_add_epi64(_mm512_and_si512(x, prime), _mm512_srli_epi64(x, 31));
  y = _mm512_add_epi64(_mm512_and_si512(y, prime), _mm512_srli_epi64(y, 31));
  const __mmask8 ge = _mm512_cmpge_epi64_mask(y, prime);
  return _mm512_mask_sub_epi64(y, ge, y, prime);
}

// The index hash's constants, broadcast once per call.
struct IndexHash {
  __m512i a0, a1, a2, a3, m;
  bool m_is_32bit;  // m < 2^32: the final product fits a 32 x 32-bit multiply
  explicit IndexHash(const Map& p)
      : a0(_mm512_set1_epi64(p.a[0])), a1(_mm512_set1_epi64(p.a[1])), a2(_mm512_set1_epi64(p.a[2])),
        a3(_mm512_set1_epi64(p.a[3])), m(_mm512_set1_epi64(p.m)), m_is_32bit(p.m < (int64_t(1) << 32)) {}

  // M indices of the eight elements with global indices i .. i + 7 (rps::hashednet_index).
  __m512i index8(int64_t i) const {
    const int64_t x0 = rps::mod_prime(i);  // x0 + lane < P + 8: one conditional subtraction
    const __m512i prime = _mm512_set1_epi64(rps::kPrime);
    __m512i x = _mm512_add_epi64(_mm512_set1_epi64(x0), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    x = _mm512_mask_sub_epi64(x, _mm512_cmpge_epi64_mask(x, prime), x, prime);
    __m512i acc = mod_prime(_mm512_add_epi64(_mm512_mul_epu32(a3, x), a2));
    acc = mod_prime(_mm512_add_epi64(_mm512_mul_epu32(acc, x), a1));
    acc = mod_prime(_mm512_add_epi64(_mm512_mul_epu32(acc, x), a0));
    const __m512i product = m_is_32bit ? _mm512_mul_epu32(acc, m) : _mm512_mullo_epi64(acc, m);
    return _mm512_srli_epi64(product, 31);
  }
};

// Lanes whose sign is -1 among the 16 elements with global indices 16 g .. 16 g + 15.
inline __mmask16 negative_lanes(const Map& p, int64_t g) {
  return p.use_sign ? __mmask16(rps::sign_bits(p, g) & 0xffff) : __mmask16(0);
}

}  // namespace

int64_t hashednet_gather_f32(const float* M, float* W, const Map& p, int64_t begin, int64_t end, float scale) {
  int64_t at = begin;
  if (((p.offset + at) & 15) != 0) return at;  // the caller handles the head, then calls from a group start
  const IndexHash hash(p);
  const __m512 factor = _mm512_set1_ps(scale);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (; at + 16 <= end; at += 16) {
    const int64_t i = p.offset + at;
    const __m256 lo = _mm512_i64gather_ps(hash.index8(i), M, 4);
    const __m256 hi = _mm512_i64gather_ps(hash.index8(i + 8), M, 4);
    __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
    v = _mm512_mul_ps(factor, v);
    v = _mm512_mask_xor_ps(v, negative_lanes(p, i >> 4), v, sign_bit);
    _mm512_storeu_ps(W + at, v);
  }
  return at;
}

int64_t hashednet_bucket_f32(const float* G, const Map& p, int64_t begin, int64_t end, float scale,
                             const Buckets& out) {
  int64_t at = begin;
  if (((p.offset + at) & 15) != 0) return at;
  const IndexHash hash(p);
  const __m512 factor = _mm512_set1_ps(scale);
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  for (; at + 16 <= end; at += 16) {
    const int64_t i = p.offset + at;
    const __m512i j = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(hash.index8(i))),
                                         _mm512_cvtepi64_epi32(hash.index8(i + 8)), 1);
    __m512 v = _mm512_mul_ps(factor, _mm512_loadu_ps(G + at));
    v = _mm512_mask_xor_ps(v, negative_lanes(p, i >> 4), v, sign_bit);
    __mmask16 rest = 0xffff;  // lanes not yet placed, slices in decreasing order
    for (int s = out.slices - 1; s >= 0 && rest; --s) {
      const __mmask16 mine =
          s == 0 ? rest : __mmask16(rest & _mm512_cmpge_epu32_mask(j, _mm512_set1_epi32(int(uint32_t(out.lo[s])))));
      if (!mine) continue;
      const int64_t c = out.count[s];
      _mm512_storeu_si512(out.index[s] + c, _mm512_maskz_compress_epi32(mine, j));
      _mm512_storeu_ps(out.value[s] + c, _mm512_maskz_compress_ps(mine, v));
      out.count[s] = c + __builtin_popcount(mine);
      rest &= __mmask16(~mine);
    }
  }
  return at;
}

}  // namespace osmos::cpu::avx512
