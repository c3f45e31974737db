// AVX-512 HashedNet kernels for float32 (rps_avx512.cpp, built with -mavx512f -mavx512dq): call
// only when osmos::cpu::isa() is avx512, the CPU has AVX-512 DQ and m < 2^31 (32-bit indices). Each starts at `begin`, which
// must be the first element of a group of 16 (global index p.offset + begin divisible by 16; they
// return `begin` unchanged otherwise), handles whole groups of 16 and returns where it stopped;
// the caller finishes the rest with the scalar code.
#pragma once
#include <cstdint>

#include "osmos/rps_hash.h"

namespace osmos::cpu::avx512 {

// W[e] = scale * sign(e) * M[h(e)] for e in [begin, returned).
int64_t hashednet_gather_f32(const float* M, float* W, const rps::Map& p, int64_t begin, int64_t end, float scale);

// Per-slice buckets of (M index, value) pairs: slice s holds the indices [lo[s], lo[s + 1]) of M
// (lo[0] = 0, lo[slices] = m); entries are appended at count[s] of index[s] /
// value[s], each of which needs 15 entries of slack past its last entry (vector stores).
struct Buckets {
  const int64_t* lo;
  int slices;
  uint32_t* const* index;
  float* const* value;
  int64_t* count;
};

// Appends (h(e), sign(e) * (scale * G[e])) to the bucket of h(e)'s slice for e in [begin, returned),
// in increasing e.
int64_t hashednet_bucket_f32(const float* G, const rps::Map& p, int64_t begin, int64_t end, float scale,
                             const Buckets& out);

}  // namespace osmos::cpu::avx512
