// GF(2^8) matrix times blocks with AVX2 split tables: c * v = lo[v & 15] ^ hi[v >> 4],
// one VPSHUFB per nibble per 32 bytes and coefficient.
#include <immintrin.h>

#include <type_traits>

#include "cpu/gf256_matmul.h"

namespace osmos::cpu {

void gf256_range_avx2(const Gf256Job& job, int64_t begin, int64_t end) {
  const int k = job.k;
  const __m256i low_nibble = _mm256_set1_epi8(0x0F);
  for_each_row_group(job.rows, [&](auto rows_in_group, int row0) {
    constexpr int R = decltype(rows_in_group)::value;
    const uint8_t* tables = job.nibble_tables + size_t(row0) * k * 32;
    int64_t i = begin;
    // Prefetching as in the GFNI kernel (gf256_matmul_gfni.cpp): always with 4+ rows, else out of L2.
    auto rows = [&](auto prefetch) {
    for (; i + 32 <= end; i += 32) {
      __m256i acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
      for (int j = 0; j < k; ++j) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(job.src[j] + i));
        if constexpr (decltype(prefetch)::value) _mm_prefetch(reinterpret_cast<const char*>(job.src[j] + i + 1024), _MM_HINT_T0);
        const __m256i lo = _mm256_and_si256(x, low_nibble);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi64(x, 4), low_nibble);
        for (int r = 0; r < R; ++r) {
          const uint8_t* t = tables + (size_t(r) * k + j) * 32;
          const __m256i tlo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
          const __m256i thi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 16)));
          acc[r] = _mm256_xor_si256(acc[r], _mm256_xor_si256(_mm256_shuffle_epi8(tlo, lo), _mm256_shuffle_epi8(thi, hi)));
        }
      }
      for (int r = 0; r < R; ++r) _mm256_storeu_si256(reinterpret_cast<__m256i*>(job.dst[row0 + r] + i), acc[r]);
    }
    };
    if (R >= 4 || job.prefetch) rows(std::true_type{});
    else rows(std::false_type{});
    if (i < end) gf256_rows_scalar(job, row0, R, i, end);
  });
}

}  // namespace osmos::cpu
