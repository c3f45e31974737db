// CPU kernels of randomized parameter sharing (see rps.cpp and osmos/rps_hash.h).
#pragma once
#include <cstdint>
#include <stdexcept>

#include "osmos/dtype.h"

namespace osmos::cpu {
// W[rows, cols] = scale * sign * M[h]; M and W of one float dtype.
void rps_gather(const void* M, void* W, DType dtype, const int64_t* config, int64_t rows, int64_t cols,
                double scale, int threads);
// acc[j] = sum of scale * sign * G[e] over the elements e of G[rows, cols] with h(e) = j, in
// increasing e (acc is written, not added to); acc is float32 (float64 when G is float64).
void rps_scatter(const void* G, DType dtype, void* acc, const int64_t* config, int64_t rows, int64_t cols,
                 double scale, int threads);
// index[rows*cols] (int64) and sign[rows*cols] (int8, +-1) of every element.
void rps_indices(int64_t* index, int8_t* sign, const int64_t* config, int64_t rows, int64_t cols, int threads);
}  // namespace osmos::cpu
