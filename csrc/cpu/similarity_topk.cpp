// Streaming similarity top-k: scalar paths, threading and ISA dispatch.
#include "cpu/similarity_topk.h"

#include <atomic>
#include <cmath>
#include <stdexcept>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"
#include "osmos/dtype.h"

namespace osmos::cpu::simsearch {

bool select_row_scalar(const float* scores, int64_t C, int64_t offset, float threshold,
                       float* top_s, int64_t* top_i, int64_t k) {
  bool nan = false;
  float last = top_s[k - 1];
  for (int64_t j = 0; j < C; ++j) {
    float s = scores[j];
    if (s != s) { nan = true; continue; }
    // Indices only grow, so an equal score never beats the last slot.
    if (s > last && s >= threshold) last = insert(top_s, top_i, k, s, offset + j);
  }
  return nan;
}

static float load_f32(const void* db, int dtype, int64_t idx) {
  switch (DType(dtype)) {
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(db)[idx]);
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(db)[idx]);
    default: return static_cast<const float*>(db)[idx];
  }
}

bool fused_rows_scalar(const float* queries, int64_t Q, int64_t D, const void* db, int dtype,
                       int64_t rows, int64_t offset, float threshold, float* top_s, int64_t* top_i,
                       int64_t k) {
  bool nan = false;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t q = 0; q < Q; ++q) {
      const float* qv = queries + q * D;
      float acc = 0.f;
      for (int64_t d = 0; d < D; ++d) acc += qv[d] * load_f32(db, dtype, r * D + d);
      if (acc != acc) { nan = true; continue; }
      float* ts = top_s + q * k;
      if (acc > ts[k - 1] && acc >= threshold) insert(ts, top_i + q * k, k, acc, offset + r);
    }
  }
  return nan;
}

bool select_chunk(const float* scores, int64_t Q, int64_t C, int64_t ld, int64_t offset,
                  float threshold, float* top_s, int64_t* top_i, int64_t k, int nthreads) {
  if (k == 0 || C == 0 || Q == 0) return false;
  const bool wide = isa() == Isa::avx512;
  std::atomic<bool> nan{false};
  parallel_chunks(Q, threads_for(Q * C, nthreads, 1 << 16), [&](int, int64_t b, int64_t e) {
    bool local = false;
    for (int64_t q = b; q < e; ++q) {
      const float* row = scores + q * ld;
      local |= wide ? select_row_avx512(row, C, offset, threshold, top_s + q * k, top_i + q * k, k)
                    : select_row_scalar(row, C, offset, threshold, top_s + q * k, top_i + q * k, k);
    }
    if (local) nan = true;
  });
  return nan;
}

bool fused_search(const float* queries, int64_t Q, int64_t D, const void* db, int dtype,
                  int64_t rows, int64_t offset, float threshold, float* top_s, int64_t* top_i,
                  int64_t k, float* workspace_s, int64_t* workspace_i, int nthreads) {
  if (k == 0 || rows == 0 || Q == 0) return false;
  const bool wide = isa() == Isa::avx512;
  const int64_t elem = DType(dtype) == DType::f32 ? 4 : 2;
  const int nt = threads_for(rows * Q * D, nthreads, 1 << 20);
  std::atomic<bool> nan{false};
  // Thread t > 0 searches its contiguous row range into its own slots (workspace), starting
  // empty; thread 0 works in place. The states are merged below in thread order.
  parallel_chunks(rows, nt, [&](int t, int64_t b, int64_t e) {
    float* ts = top_s;
    int64_t* ti = top_i;
    if (t > 0) {
      ts = workspace_s + (t - 1) * Q * k;
      ti = workspace_i + (t - 1) * Q * k;
      for (int64_t x = 0; x < Q * k; ++x) { ts[x] = -INFINITY; ti[x] = -1; }
    }
    const void* part = static_cast<const char*>(db) + b * D * elem;
    bool local = wide ? fused_rows_avx512(queries, Q, D, part, dtype, e - b, offset + b, threshold, ts, ti, k)
                      : fused_rows_scalar(queries, Q, D, part, dtype, e - b, offset + b, threshold, ts, ti, k);
    if (local) nan = true;
  });
  for (int t = 1; t < nt; ++t) {
    const float* ws = workspace_s + (t - 1) * Q * k;
    const int64_t* wi = workspace_i + (t - 1) * Q * k;
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t x = 0; x < k && wi[q * k + x] >= 0; ++x)
        insert(top_s + q * k, top_i + q * k, k, ws[q * k + x], wi[q * k + x]);
  }
  return nan;
}

}  // namespace osmos::cpu::simsearch
