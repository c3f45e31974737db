// CPU receiver side of TopK compression: many workers' sparse messages added into one dense
// float32 buffer (see osmos.ops.topk_accumulate_ for the semantics).
#pragma once
#include <cstdint>

namespace osmos::cpu {

// For r < rows and j < counts[r] (all `cols` when counts is null), in row-major order:
//   out[indices[r, j]] += alpha * (weights[r] * values[r, j])   (the weight product is skipped
//   when weights is null, the alpha product when alpha == 1), rounding each product to float32.
// Row r of values starts at values + r * values_stride (likewise indices, int32 or int64).
// Returns -1, or the flat position r * cols + j of the first index outside [0, n), in which case
// nothing was written.
int64_t topk_accumulate(float* out, int64_t n, const float* values, int64_t values_stride,
                        const void* indices, bool indices_int64, int64_t indices_stride,
                        const int64_t* counts, const float* weights, int64_t rows, int64_t cols,
                        float alpha);

}  // namespace osmos::cpu
