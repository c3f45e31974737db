// Streaming similarity top-k, AVX-512 paths: the threshold-filtered selection over a score
// block, and the fused dot-product + selection kernel with f16/bf16 conversion on load.
#include <immintrin.h>

#include <cmath>

#include "cpu/avx512_lanes.h"
#include "cpu/similarity_topk.h"
#include "osmos/dtype.h"

namespace osmos::cpu::simsearch {

bool select_row_avx512(const float* scores, int64_t C, int64_t offset, float threshold,
                       float* top_s, int64_t* top_i, int64_t k) {
  const __m512 thr = _mm512_set1_ps(threshold);
  float last = top_s[k - 1];
  __m512 lastv = _mm512_set1_ps(last);
  __mmask16 nan = 0;
  for (int64_t j = 0; j < C; j += 16) {
    const __mmask16 live = lanes16(C - j);
    const __m512 v = load16_f32(scores + j, live);
    nan |= _mm512_mask_cmp_ps_mask(live, v, v, _CMP_UNORD_Q);
    __mmask16 hit = _mm512_mask_cmp_ps_mask(live, v, lastv, _CMP_GT_OQ) &
                    _mm512_cmp_ps_mask(v, thr, _CMP_GE_OQ);
    if (!hit) continue;
    while (hit) {
      const int b = __builtin_ctz(hit);
      hit &= hit - 1;
      const float s = scores[j + b];
      if (s > last) last = insert(top_s, top_i, k, s, offset + j + b);
    }
    lastv = _mm512_set1_ps(last);
  }
  return nan != 0;
}

namespace {

// 16 database elements (dtype DT: 0 f32, 1 f16, 2 bf16) as float32; lanes outside m are 0.
template <int DT>
inline __m512 load16(const void* base, int64_t idx, __mmask16 m) {
  if constexpr (DT == 0) {
    return load16_f32(static_cast<const float*>(base) + idx, m);
  } else {
    const __m256i h = load16_u16(static_cast<const uint16_t*>(base) + idx, m);
    if constexpr (DT == 1) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// out[r][q] = <database row r, query q> for R rows and QB queries, accumulated in 16 lanes.
template <int DT, int R, int QB>
inline void tile(const float* queries, int64_t D, const void* db, int64_t row0, float out[4][4]) {
  __m512 acc[R][QB];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < QB; ++q) acc[r][q] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 m = lanes16(D - d);
    __m512 x[R];
    for (int r = 0; r < R; ++r) x[r] = load16<DT>(db, (row0 + r) * D + d, m);
    for (int q = 0; q < QB; ++q) {
      const __m512 qv = load16_f32(queries + q * D + d, m);
      for (int r = 0; r < R; ++r) acc[r][q] = _mm512_fmadd_ps(x[r], qv, acc[r][q]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < QB; ++q) out[r][q] = _mm512_reduce_add_ps(acc[r][q]);
}

template <int DT, int R>
inline void tile_q(int qb, const float* queries, int64_t D, const void* db, int64_t row0, float out[4][4]) {
  switch (qb) {
    case 4: tile<DT, R, 4>(queries, D, db, row0, out); break;
    case 3: tile<DT, R, 3>(queries, D, db, row0, out); break;
    case 2: tile<DT, R, 2>(queries, D, db, row0, out); break;
    default: tile<DT, R, 1>(queries, D, db, row0, out); break;
  }
}

template <int DT>
bool fused_impl(const float* queries, int64_t Q, int64_t D, const void* db, int64_t rows,
                int64_t offset, float threshold, float* top_s, int64_t* top_i, int64_t k) {
  bool nan = false;
  float out[4][4];
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int rb = rows - r0 >= 4 ? 4 : int(rows - r0);
    for (int64_t q0 = 0; q0 < Q; q0 += 4) {
      const int qb = Q - q0 >= 4 ? 4 : int(Q - q0);
      const float* qp = queries + q0 * D;
      if (rb == 4) {
        tile_q<DT, 4>(qb, qp, D, db, r0, out);
      } else {
        for (int r = 0; r < rb; ++r) {
          float one[4][4];
          tile_q<DT, 1>(qb, qp, D, db, r0 + r, one);
          for (int q = 0; q < qb; ++q) out[r][q] = one[0][q];
        }
      }
      for (int q = 0; q < qb; ++q) {
        float* ts = top_s + (q0 + q) * k;
        int64_t* ti = top_i + (q0 + q) * k;
        for (int r = 0; r < rb; ++r) {
          const float s = out[r][q];
          if (s != s) { nan = true; continue; }
          if (s > ts[k - 1] && s >= threshold) insert(ts, ti, k, s, offset + r0 + r);
        }
      }
    }
  }
  return nan;
}

}  // namespace

bool fused_rows_avx512(const float* queries, int64_t Q, int64_t D, const void* db, int dtype,
                       int64_t rows, int64_t offset, float threshold, float* top_s, int64_t* top_i,
                       int64_t k) {
  switch (DType(dtype)) {
    case DType::f16: return fused_impl<1>(queries, Q, D, db, rows, offset, threshold, top_s, top_i, k);
    case DType::bf16: return fused_impl<2>(queries, Q, D, db, rows, offset, threshold, top_s, top_i, k);
    default: return fused_impl<0>(queries, Q, D, db, rows, offset, threshold, top_s, top_i, k);
  }
}

}  // namespace osmos::cpu::simsearch
