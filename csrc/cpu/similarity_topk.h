// Streaming exact top-k inner-product search: the running top-k a query keeps while the
// database streams past in chunks, and the two ways scores reach it (a score block computed
// by BLAS, or dot products fused with the selection for small query batches).
//
// Running state per query: k (score, index) slots sorted best first. Order: higher score
// first; equal scores, lower index first. Empty slots hold (-inf, -1). A candidate enters
// only when it beats the last slot and its score is >= threshold.
#pragma once
#include <cstdint>
#include <limits>

namespace osmos::cpu::simsearch {

inline bool better(float s1, int64_t i1, float s2, int64_t i2) {
  return s1 > s2 || (s1 == s2 && i1 < i2);
}

// Inserts (s, i) into the sorted slots if it beats the last one. Returns the new last score.
inline float insert(float* top_s, int64_t* top_i, int64_t k, float s, int64_t i) {
  if (!better(s, i, top_s[k - 1], top_i[k - 1])) return top_s[k - 1];
  int64_t p = k - 1;
  while (p > 0 && better(s, i, top_s[p - 1], top_i[p - 1])) {
    top_s[p] = top_s[p - 1];
    top_i[p] = top_i[p - 1];
    --p;
  }
  top_s[p] = s;
  top_i[p] = i;
  return top_s[k - 1];
}

// Merges one score row (C scores of database rows offset .. offset+C-1, ascending) into a
// query's slots. Returns true when a NaN score was seen.
bool select_row_scalar(const float* scores, int64_t C, int64_t offset, float threshold,
                       float* top_s, int64_t* top_i, int64_t k);
bool select_row_avx512(const float* scores, int64_t C, int64_t offset, float threshold,
                       float* top_s, int64_t* top_i, int64_t k);

// Fused path: for queries [Q, D] float32 and database rows [rows, D] (dtype code), computes
// every dot product and merges it into the slots top_s/top_i [Q, k]. Returns true on NaN.
bool fused_rows_scalar(const float* queries, int64_t Q, int64_t D, const void* db, int dtype,
                       int64_t rows, int64_t offset, float threshold, float* top_s, int64_t* top_i,
                       int64_t k);
bool fused_rows_avx512(const float* queries, int64_t Q, int64_t D, const void* db, int dtype,
                       int64_t rows, int64_t offset, float threshold, float* top_s, int64_t* top_i,
                       int64_t k);

// Entry points (threaded, dispatched on the ISA).
bool select_chunk(const float* scores, int64_t Q, int64_t C, int64_t ld, int64_t offset,
                  float threshold, float* top_s, int64_t* top_i, int64_t k, int nthreads);
// workspace_s / workspace_i: (nthreads - 1) * Q * k slots each, for per-thread states.
bool fused_search(const float* queries, int64_t Q, int64_t D, const void* db, int dtype,
                  int64_t rows, int64_t offset, float threshold, float* top_s, int64_t* top_i,
                  int64_t k, float* workspace_s, int64_t* workspace_i, int nthreads);

}  // namespace osmos::cpu::simsearch
