// GF(2^8) matrix times blocks with GFNI: one GF2P8AFFINEQB per 64 bytes and coefficient
// (the field's 0x11D polynomial is not GF2P8MULB's 0x11B, so the product is an affine map).
#include <immintrin.h>

#include "cpu/gf256_matmul.h"

namespace osmos::cpu {

void gf256_range_gfni(const Gf256Job& job, int64_t begin, int64_t end) {
  const int k = job.k;
  for_each_row_group(job.rows, [&](auto rows_in_group, int row0) {
    constexpr int R = decltype(rows_in_group)::value;
    const uint64_t* affine = job.affine + size_t(row0) * k;
    int64_t i = begin;
    for (; i + 64 <= end; i += 64) {
      __m512i acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
      for (int j = 0; j < k; ++j) {
        const __m512i x = _mm512_loadu_si512(job.src[j] + i);
        for (int r = 0; r < R; ++r) {
          const __m512i a = _mm512_set1_epi64(int64_t(affine[r * k + j]));
          acc[r] = _mm512_xor_si512(acc[r], _mm512_gf2p8affine_epi64_epi8(x, a, 0));
        }
      }
      for (int r = 0; r < R; ++r) _mm512_storeu_si512(job.dst[row0 + r] + i, acc[r]);
    }
    if (i < end) gf256_rows_scalar(job, row0, R, i, end);
  });
}

}  // namespace osmos::cpu
