// Loads and stores of up to 16 lanes for the AVX-512 kernels: a whole vector (m all ones) with a
// plain instruction, a partial one masked. On a Zen 5 EPYC a stream of masked loads ran at a third
// of the memory bandwidth of plain ones, even with every lane enabled (session 12), so kernels
// load through these instead of calling maskz_loadu on every vector. The branch on m goes the same
// way until a row's last vector. Included by *_avx512.cpp files only.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace osmos::cpu {
namespace {

inline __mmask16 lanes16(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }

inline __m512 load16_f32(const float* p, __mmask16 m) {
  return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}
inline __m256i load16_u16(const uint16_t* p, __mmask16 m) {
  return m == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p);
}
inline void store16_f32(float* p, __m512 v, __mmask16 m) {
  if (m == 0xffff) _mm512_storeu_ps(p, v);
  else _mm512_mask_storeu_ps(p, m, v);
}
inline void store16_u16(uint16_t* p, __m256i v, __mmask16 m) {
  if (m == 0xffff) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  else _mm256_mask_storeu_epi16(p, m, v);
}

}  // namespace
}  // namespace osmos::cpu
