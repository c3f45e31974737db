// Walking the RPS mapping (osmos/rps_hash.h) along increasing element positions, for the CUDA
// gather, scatter and index tables: STABLE-RPS hashes and divides once per partition a thread
// enters, ROAST once per tile (the row's share of the tile hash kept, columns divided in 32 bits),
// instead of everything for every element.
//
// The GPU kernels give each warp a chunk of kWarpChunk consecutive elements of W (flattened
// row-major); lane l handles positions chunk + l + 32 k for k = 0 .. kPerLane - 1, so every
// load of M and store of W is coalesced across the warp, and each lane's positions increase by
// 32. An IndexWalker follows one lane's positions; its index() equals rps::index(p, r, c) for
// every position it is given in increasing order (tests/ops/rps_walk_check.cpp checks this
// against rps::index on the CPU). HashedNet hashes every element by definition: the walker then
// calls the elementwise hash.
//
// Signs: a chunk's kWarpChunk elements have global indices I0 .. I0 + kWarpChunk - 1, so they
// fall in at most kWarpChunk / 16 + 1 = 33 sign groups of 16 (rps::sign_bits). Lane l hashes
// group G0 + l, every lane also group G0 + 32, and each element takes its group's bits from the
// lane that hashed them (a warp shuffle): one hash per 16 elements instead of one per element.
// sign_slot() is that group's slot (0 .. 32).
#pragma once
#include <cstdint>

#include "osmos/rps_hash.h"

#if defined(__CUDACC__)
#define OSMOS_WALK_HD __host__ __device__ __forceinline__
#else
#define OSMOS_WALK_HD inline
#endif

namespace osmos::rps {

constexpr int kLanes = 32;
constexpr int kPerLane = 16;
constexpr int64_t kWarpChunk = int64_t(kLanes) * kPerLane;  // 512 elements per warp and chunk

// The first sign group G0 of the chunk whose first element is at position e0.
OSMOS_WALK_HD int64_t sign_group0(const Map& p, int64_t e0) { return (p.offset + e0) >> 4; }

// Which of the chunk's 33 groups (0 .. 32) holds the sign of the element at position e.
OSMOS_WALK_HD int sign_slot(const Map& p, int64_t e, int64_t group0) { return int(((p.offset + e) >> 4) - group0); }

// Sign (+1 / -1) of the element at position e from its group's 16 sign bits.
OSMOS_WALK_HD int sign_from_bits(const Map& p, int64_t e, int64_t bits) {
  return 1 - 2 * int((bits >> ((p.offset + e) & 15)) & 1);
}

struct IndexWalker {
  Map p;
  // STABLE: the partition [lo, hi) of global indices the last position fell in, and its shift.
  int64_t lo = 0, hi = 0, shift = 0;
  // ROAST: the last position's row and column, its tile's rows [r_lo, r_lo + tile_r) (and that
  // row of tiles' share of the hash) and columns [c_lo, c_lo + tile_c), and the tile's start in M.
  int64_t r = 0, c = 0, e_last = -1, r_lo = 0, c_lo = 0, row_term = 0, span = 1, start = 0;
  bool row_known = false, col_known = false;

  OSMOS_WALK_HD explicit IndexWalker(const Map& map) : p(map) {}

  // M index of the element at flattened position e (e = r * cols + c); positions must be given in
  // increasing order.
  OSMOS_WALK_HD int64_t index(int64_t e) {
    if (p.kind == kStable) {
      const int64_t i = p.offset + e;
      if (i >= hi) {  // entered a new partition (always true at the first position: hi = 0 <= i)
        const int64_t q = i / p.m;
        lo = q * p.m;
        hi = lo + p.m;
        shift = reduce(poly_hash(mod_prime(q), p.a), p.m);
      }
      const int64_t h = shift + (i - lo);
      return h >= p.m ? h - p.m : h;
    }
    if (p.kind == kRoast) {
      advance_to(e);
      if (!row_known || r < r_lo || r >= r_lo + p.tile_r) {  // a new row of tiles
        const int64_t rb = r / p.tile_r;
        r_lo = rb * p.tile_r;
        row_term = mod_prime(mod_prime(rb) * p.a[2]);
        const int64_t z = p.tile_r * p.tile_c;
        span = p.m > z ? p.m - z : 1;
        row_known = true;
        col_known = false;
      }
      if (!col_known || c < c_lo || c >= c_lo + p.tile_c) {  // a new tile in the row
        // 32-bit division where it is exact (columns below 2^31): several times cheaper on a GPU
        const int64_t cb = p.cols <= 0x7fffffff && p.tile_c <= 0x7fffffff ? int64_t(uint32_t(c) / uint32_t(p.tile_c))
                                                                           : c / p.tile_c;
        c_lo = cb * p.tile_c;
        start = reduce(mod_prime(row_term + mod_prime(mod_prime(cb) * p.a[1]) + p.a[0]), span);
        col_known = true;
      }
      const int64_t h = start + (r - r_lo) * p.tile_c + (c - c_lo);
      return h < p.m ? h : h % p.m;
    }
    return hashednet_index(p, p.offset + e);
  }

 private:
  // (r, c) of position e: one division at the first position, then steps along the row.
  OSMOS_WALK_HD void advance_to(int64_t e) {
    if (e_last < 0 || e - e_last > p.cols) {
      r = e / p.cols;
      c = e - r * p.cols;
    } else {
      c += e - e_last;
      while (c >= p.cols) {
        c -= p.cols;
        ++r;
      }
    }
    e_last = e;
  }
};

}  // namespace osmos::rps

#undef OSMOS_WALK_HD
