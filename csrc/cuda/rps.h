// CUDA kernels of randomized parameter sharing (see rps.cu and osmos/rps_hash.h). All launch on
// `stream` and return without synchronising.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "osmos/dtype.h"

namespace osmos::cuda {
// walk: the warp-chunk kernel (osmos/rps_walk.h: hashes once per partition / tile / 16 signs);
// otherwise one thread per element hashing everything (kept to compare against).
void rps_gather(const void* M, void* W, DType dtype, const int64_t* config, int64_t rows, int64_t cols, double scale,
                bool walk, cudaStream_t stream);
// acc (float32, float64 for float64 G) [m] += scatter of G [rows, cols], with atomics.
void rps_scatter_atomic(const void* G, DType dtype, void* acc, const int64_t* config, int64_t rows, int64_t cols,
                        double scale, bool walk, cudaStream_t stream);
// acc[slots[u]] = ordered sum over order[starts[u] .. starts[u+1]) (elements sorted stably by index).
void rps_scatter_sorted(const void* G, DType dtype, void* acc, const int64_t* config, double scale, const int64_t* order,
                        const int64_t* slots, const int64_t* starts, int64_t nslots, cudaStream_t stream);
void rps_indices(int64_t* index, int8_t* sign, const int64_t* config, int64_t rows, int64_t cols, cudaStream_t stream);
}  // namespace osmos::cuda
