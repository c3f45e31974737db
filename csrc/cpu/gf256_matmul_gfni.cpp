// GF(2^8) matrix times blocks with GFNI: one GF2P8AFFINEQB per 64 bytes and coefficient
// (the field's 0x11D polynomial is not GF2P8MULB's 0x11B, so the product is an affine map).
#include <immintrin.h>

#include "cpu/gf256_matmul.h"

namespace osmos::cpu {
namespace {

// Rows [row0, row0 + R) over [i, i + 64 * U): U vectors per source load share each
// coefficient's broadcast. `mask` limits the loads and stores of a final partial vector (U = 1).
template <int R, int U, bool Stream>
inline void gfni_step(const Gf256Job& job, const uint64_t* affine, int row0, int64_t i, __mmask64 mask) {
  const int k = job.k;
  __m512i acc[R * U];
#pragma GCC unroll 16
  for (int a = 0; a < R * U; ++a) acc[a] = _mm512_setzero_si512();
  for (int j = 0; j < k; ++j) {
    const uint8_t* s = job.src[j] + i;
    __m512i x[U];
#pragma GCC unroll 16
    for (int u = 0; u < U; ++u) x[u] = _mm512_maskz_loadu_epi8(mask, s + 64 * u);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i a = _mm512_set1_epi64(int64_t(affine[r * k + j]));
#pragma GCC unroll 16
      for (int u = 0; u < U; ++u)
        acc[r * U + u] = _mm512_xor_si512(acc[r * U + u], _mm512_gf2p8affine_epi64_epi8(x[u], a, 0));
    }
  }
#pragma GCC unroll 16
  for (int a = 0; a < R * U; ++a) {
    uint8_t* d = job.dst[row0 + a / U] + i + 64 * (a % U);
    if constexpr (Stream) _mm512_stream_si512(reinterpret_cast<__m512i*>(d), acc[a]);
    else _mm512_mask_storeu_epi8(d, mask, acc[a]);
  }
}

}  // namespace

void gf256_range_gfni(const Gf256Job& job, int64_t begin, int64_t end) {
  for_each_row_group(job.rows, [&](auto rows_in_group, int row0) {
    constexpr int R = decltype(rows_in_group)::value;
    constexpr int U = R <= 3 ? 4 : 2;  // accumulators R * U stay within the 32 vector registers
    const uint64_t* affine = job.affine + size_t(row0) * job.k;
    const __mmask64 all = ~__mmask64(0);
    int64_t i = begin;
    if (job.stream) {
      for (; i + 64 * U <= end; i += 64 * U) gfni_step<R, U, true>(job, affine, row0, i, all);
      for (; i + 64 <= end; i += 64) gfni_step<R, 1, true>(job, affine, row0, i, all);
    }
    for (; i + 64 * U <= end; i += 64 * U) gfni_step<R, U, false>(job, affine, row0, i, all);
    for (; i + 64 <= end; i += 64) gfni_step<R, 1, false>(job, affine, row0, i, all);
    if (i < end) gfni_step<R, 1, false>(job, affine, row0, i, _bzhi_u64(~0ull, unsigned(end - i)));
  });
  if (job.stream) _mm_sfence();
}

}  // namespace osmos::cpu
