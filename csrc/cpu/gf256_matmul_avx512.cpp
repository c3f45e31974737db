// GF(2^8) matrix times blocks with AVX-512BW split tables: c * v = lo[v & 15] ^ hi[v >> 4],
// one VPSHUFB per nibble per 64 bytes and coefficient.
#include <immintrin.h>

#include <type_traits>

#include "cpu/gf256_matmul.h"

namespace osmos::cpu {

void gf256_range_avx512(const Gf256Job& job, int64_t begin, int64_t end) {
  const int k = job.k;
  const __m512i low_nibble = _mm512_set1_epi8(0x0F);
  for_each_row_group(job.rows, [&](auto rows_in_group, int row0) {
    constexpr int R = decltype(rows_in_group)::value;
    const uint8_t* tables = job.nibble_tables + size_t(row0) * k * 32;
    int64_t i = begin;
    // Prefetching as in the GFNI kernel (gf256_matmul_gfni.cpp): always with 4+ rows, else out of L2.
    auto rows = [&](auto prefetch) {
    for (; i + 64 <= end; i += 64) {
      __m512i acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
      for (int j = 0; j < k; ++j) {
        const __m512i x = _mm512_loadu_si512(job.src[j] + i);
        if constexpr (decltype(prefetch)::value) _mm_prefetch(reinterpret_cast<const char*>(job.src[j] + i + 1024), _MM_HINT_T0);
        const __m512i lo = _mm512_and_si512(x, low_nibble);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi64(x, 4), low_nibble);
        for (int r = 0; r < R; ++r) {
          const uint8_t* t = tables + (size_t(r) * k + j) * 32;
          const __m512i tlo = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
          const __m512i thi = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16)));
          acc[r] = _mm512_ternarylogic_epi64(acc[r], _mm512_shuffle_epi8(tlo, lo), _mm512_shuffle_epi8(thi, hi), 0x96);
        }
      }
      for (int r = 0; r < R; ++r) {
        if (job.stream) _mm512_stream_si512(reinterpret_cast<__m512i*>(job.dst[row0 + r] + i), acc[r]);
        else _mm512_storeu_si512(job.dst[row0 + r] + i, acc[r]);
      }
    }
    };
    if (R >= 4 || job.prefetch) rows(std::true_type{});
    else rows(std::false_type{});
    if (i < end) gf256_rows_scalar(job, row0, R, i, end);
  });
  if (job.stream) _mm_sfence();
}

}  // namespace osmos::cpu
