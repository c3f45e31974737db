// CPU TopK EF21 compression (see python/osmos/ops/topk_compress.py for the semantics).
#pragma once
#include <cstdint>

#include "osmos/dtype.h"

namespace osmos::cpu {

// values[k] (state's dtype) and indices[k] (ascending) of the k largest |x - state|, ties to the
// lower index; state[indices] += values. n < 2^31, 0 <= k <= n.
void topk_compress(const void* x, DType x_dtype, void* state, DType state_dtype, int64_t n,
                   int64_t k, void* values, int64_t* indices, int max_threads);

// The fused candidate pass over x[begin, end), state[begin, end): appends, in index order, every
// element whose magnitude key is >= low as (d as float, index). Returns how many it appended, or
// -1 as soon as more than `capacity - 16` would be needed (16 slots of slack for vector stores).
using CandidateFn = int64_t (*)(const void* x, const void* state, int64_t begin, int64_t end,
                                uint32_t low, float* d_out, uint32_t* index_out, int64_t capacity);
CandidateFn candidate_fn_scalar(DType x_dtype, DType state_dtype);
CandidateFn candidate_fn_avx512(DType x_dtype, DType state_dtype);  // nullptr if not compiled

}  // namespace osmos::cpu
