// AVX-512 kernels of randomized parameter sharing for float32 (rps_avx512.cpp, built with
// -mavx512f -mavx512dq): call only when osmos::cpu::isa() is avx512 and the CPU has AVX-512 DQ
// (the HashedNet ones also need m < 2^31, for 32-bit indices). Bit-identical to the scalar kernels
// in rps.cpp.
#pragma once
#include <cstdint>

#include "osmos/rps_hash.h"

namespace osmos::cpu::avx512 {

// The gather kernels' `stream`: write whole 64-byte lines of W (16 elements at a 64-byte aligned
// address) with non-temporal stores, which skip reading the line first and leave M in the caches
// instead of W. Each thread calls stream_fence() after its last such store.
void stream_fence();

// out[k] = bits 0..15 of rps::sign_bits(p, g + k) for k < count (the signs of the elements
// 16 (g + k) .. 16 (g + k) + 15), sixteen groups per step by forward differences.
void sign_words(const rps::Map& p, int64_t g, int64_t count, uint16_t* out);

// A run of STABLE-RPS / ROAST (consecutive M indices), up to 16 elements at a time; bit k of
// `negative` is set where element k's sign is -1.
// dst[k] = scale * src[k], negated where the bit is set, for k < count <= 16.
void signed_scale_f32(const float* src, float* dst, int64_t count, float scale, uint32_t negative, bool stream);
// acc[k] += scale * g[k], negated where the bit is set, for k < count <= 16.
void signed_scale_add_f32(const float* g, float* acc, int64_t count, float scale, uint32_t negative);

// One row of a ROAST gather whose tiles' runs do not wrap past the end of M: for c < cols,
// w[c] = scale * M[starts[c / tile_c] + row_offset + c mod tile_c], negated where bit first + c of
// the little-endian uint16 words `negative` is set (nullptr: no signs; it needs one word past the
// last bit used).
void roast_row_f32(const float* M, float* w, const int64_t* starts, int64_t row_offset, int64_t tile_c, int64_t cols,
                   const uint16_t* negative, int first, float scale, bool stream);

// One row of a ROAST scatter into the slice [lo, hi) of M, same layout as roast_row_f32: for the
// c < cols whose index j = starts[c / tile_c] + row_offset + c mod tile_c is in [lo, hi),
// acc[j] += scale * g[c], negated where bit first + c of `negative` is set.
void roast_row_add_f32(const float* g, float* acc, int64_t lo, int64_t hi, const int64_t* starts, int64_t row_offset,
                       int64_t tile_c, int64_t cols, const uint16_t* negative, int first, float scale);

// The HashedNet kernels start at `begin`, which must be the first element of a group of 16
// (global index p.offset + begin divisible by 16; they return `begin` unchanged otherwise),
// handle whole groups of 16 and return where they stopped; the caller finishes the rest.

// W[e] = scale * sign(e) * M[h(e)] for e in [begin, returned).
int64_t hashednet_gather_f32(const float* M, float* W, const rps::Map& p, int64_t begin, int64_t end, float scale,
                             bool stream);

// Per-slice buckets of (M index, value) pairs: slice s holds the indices [lo[s], lo[s + 1]) of M
// (lo[0] = 0, lo[slices] = m); entries are appended at count[s] of index[s] / value[s], each of
// which needs 15 entries of slack past its last entry (vector stores).
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
