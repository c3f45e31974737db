// AVX-512 HashedNet kernels for float32 (rps_avx512.cpp, built with -mavx512f -mavx512dq): call
// only when osmos::cpu::isa() is avx512 and the CPU has AVX-512 DQ. Both start at `begin`, which
// must be the first element of a group of 16 (global index p.offset + begin divisible by 16; they
// return `begin` unchanged otherwise), handle whole groups of 16 and return where they stopped;
// the caller finishes the rest with the scalar code.
#pragma once
#include <cstdint>

#include "osmos/rps_hash.h"

namespace osmos::cpu::avx512 {

// W[e] = scale * sign(e) * M[h(e)] for e in [begin, returned).
int64_t hashednet_gather_f32(const float* M, float* W, const rps::Map& p, int64_t begin, int64_t end, float scale);

// acc[h(e)] += sign(e) * (scale * G[e]) for e in [begin, returned) whose h(e) is in [lo, hi), in
// increasing e.
int64_t hashednet_scatter_f32(const float* G, float* acc, const rps::Map& p, int64_t begin, int64_t end, float scale,
                              int64_t lo, int64_t hi);

}  // namespace osmos::cpu::avx512
