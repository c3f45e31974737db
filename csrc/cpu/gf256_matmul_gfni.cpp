// GF(2^8) matrix times blocks with GFNI: one GF2P8AFFINEQB per 64 bytes and coefficient
// (the field's 0x11D polynomial is not GF2P8MULB's 0x11B, so the product is an affine map).
#include <immintrin.h>

#include <type_traits>

#include "cpu/gf256_matmul.h"

namespace osmos::cpu {
namespace {

enum class Access { plain, stream, masked };  // full vectors (stores cached / non-temporal), or a tail

// Rows r < R of dst over [i, i + 64 * U): U vectors per source load share each coefficient's
// broadcast. Inlined into the row loop so the source and destination pointers and the
// coefficients stay in registers; `mask` limits the loads and stores of a tail (U = 1).
// PF > 0: each source's lines PF bytes ahead are prefetched into L1 as its vectors are loaded.
template <int R, int U, Access A, int PF = 0>
__attribute__((always_inline)) inline void gfni_step(const uint8_t* const* src, int k, const uint64_t* affine,
                                                     uint8_t* const* dst, int64_t i, __mmask64 mask) {
  auto load = [&](const uint8_t* p) {
    if constexpr (A == Access::masked) return _mm512_maskz_loadu_epi8(mask, p);
    else return _mm512_loadu_si512(p);
  };
  // acc[r * U + u] = XOR_j affine[r][j] x src[j] over vector u; source 0 initialises (k >= 1).
  __m512i acc[R * U];
  auto accumulate = [&](int j, auto first) {
    const uint8_t* s = src[j] + i;
    __m512i x[U];
#pragma GCC unroll 16
    for (int u = 0; u < U; ++u) x[u] = load(s + 64 * u);
    if constexpr (PF > 0) {
#pragma GCC unroll 16
      for (int u = 0; u < U; ++u) _mm_prefetch(reinterpret_cast<const char*>(s + PF + 64 * u), _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i a = _mm512_set1_epi64(int64_t(affine[r * k + j]));
#pragma GCC unroll 16
      for (int u = 0; u < U; ++u) {
        const __m512i product = _mm512_gf2p8affine_epi64_epi8(x[u], a, 0);
        if constexpr (decltype(first)::value) acc[r * U + u] = product;
        else acc[r * U + u] = _mm512_xor_si512(acc[r * U + u], product);
      }
    }
  };
  accumulate(0, std::true_type{});
  for (int j = 1; j < k; ++j) accumulate(j, std::false_type{});
#pragma GCC unroll 16
  for (int a = 0; a < R * U; ++a) {
    uint8_t* d = dst[a / U] + i + 64 * (a % U);
    if constexpr (A == Access::stream) _mm512_stream_si512(reinterpret_cast<__m512i*>(d), acc[a]);
    else if constexpr (A == Access::masked) _mm512_mask_storeu_epi8(d, mask, acc[a]);
    else _mm512_storeu_si512(d, acc[a]);
  }
}

template <int R, int U, Access A, int PF = 0>
inline int64_t gfni_rows(const uint8_t* const* src, int k, const uint64_t* affine, uint8_t* const* dst,
                         int64_t i, int64_t end) {
  for (; i + 64 * U <= end; i += 64 * U) gfni_step<R, U, A, PF>(src, k, affine, dst, i, 0);
  return i;
}

// Prefetch distance (bytes ahead in every source). Measured on a Zen 5 EPYC against ISA-L
// (session 14, standalone harness, one thread, shards as rows of one buffer): with 4-6 output
// rows the hardware prefetchers do not keep 10+ source streams fed, and prefetching 1 KiB ahead
// ran RS(10,4) at 1.5x (64 KiB shards), 1.8x (1 MiB) and 1.0x (16 MiB) of the same kernel without
// it; 512 B - 2 KiB were alike, 4 KiB worse. With 1-3 rows it paid only out of L2 (1 MiB shards:
// 1.05-1.12x) and cost 10-15% in L2 (64 KiB), so there it follows job.prefetch.
constexpr int kPrefetchBytes = 1024;

}  // namespace

void gf256_range_gfni(const Gf256Job& job, int64_t begin, int64_t end) {
  for_each_row_group(job.rows, [&](auto rows_in_group, int row0) {
    constexpr int R = decltype(rows_in_group)::value;
    // Vectors per source load: R * U accumulators plus U loaded vectors stay within the 32
    // vector registers. Measured on a Zen 5 EPYC (session 12, against ISA-L on the same shards):
    // with 1-3 rows one vector per source is the only choice that keeps up with ISA-L whatever
    // the shards' placement (4 ran 1.1-1.4x faster on some heap placements and 0.7-0.8x on rows
    // of one buffer, the layout of osmos.ft's stripes); with 4 rows 4 vectors beat 1, 2 and 3
    // (RS(10,4), 16 KiB - 1 MiB shards). With 5 and 6 rows 4 vectors spill registers: 2 ran
    // 1.2-2.3x ISA-L where 4 ran 0.57-1.6x (session 14: RS(6,6), RS(12,5), RS(10,6), prefetching).
    constexpr int U = R <= 3 ? 1 : (R == 4 ? 4 : 2);
    const int k = job.k;
    const uint64_t* affine = job.affine + size_t(row0) * k;
    uint8_t* dst[R];
    for (int r = 0; r < R; ++r) dst[r] = job.dst[row0 + r];
    int64_t i = begin;
    if (job.stream) {
      i = gfni_rows<R, U, Access::stream>(job.src, k, affine, dst, i, end);
      i = gfni_rows<R, 1, Access::stream>(job.src, k, affine, dst, i, end);
    }
    if (R >= 4 || job.prefetch) i = gfni_rows<R, U, Access::plain, kPrefetchBytes>(job.src, k, affine, dst, i, end);
    i = gfni_rows<R, U, Access::plain>(job.src, k, affine, dst, i, end);
    i = gfni_rows<R, 1, Access::plain>(job.src, k, affine, dst, i, end);
    if (i < end)
      gfni_step<R, 1, Access::masked>(job.src, k, affine, dst, i, _bzhi_u64(~0ull, unsigned(end - i)));
  });
  if (job.stream) _mm_sfence();
}

}  // namespace osmos::cpu
