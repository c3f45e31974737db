// Randomized parameter sharing (RPS): where weight element (r, c) of a layer reads the shared
// array M, and with which sign. One definition for the CPU and CUDA kernels; the Triton kernels
// (triton_kernels/rps_common.py) and the torch reference (python/osmos/ops/rps_mapping.py) mirror it
// operation by operation, so every backend yields the same indices.
//
// Integer math only, in int64 with every intermediate below 2^63: values are reduced modulo the
// Mersenne prime P = 2^31 - 1 before they are multiplied, so a product is below 2^62. (The kernels
// reduce with shifts, `mod_prime`; the mirrors may use %: the results are equal.)
//
// A layer's weight is viewed as a 2-D array [rows, cols] (Linear: [out, in]; Conv2d:
// [out, in/groups * kh * kw]; Embedding: [num, dim]); its element (r, c) has the global index
// i = offset + r * cols + c over all compressed weights of the model, and W[r, c] = scale *
// sign(i) * M[h(r, c)] with M of size m.
//   HashedNet: h = reduce(poly(i mod P; a), m)                              (elementwise)
//   ROAST:     tile (rb, cb) = (r div tile_r, c div tile_c), Z = tile_r * tile_c,
//              start = reduce((rb*a2 mod P + cb*a1 mod P + a0) mod P, max(m - Z, 1))
//              h = (start + (r mod tile_r) * tile_c + (c mod tile_c)) mod m   (a0 is per layer)
//   STABLE-RPS: h = (reduce(poly(i div m mod P; a), m) + i mod m) mod m     (cyclic partitions)
// reduce(x, k) = (x * k) >> 31 maps x in [0, P) to [0, k) almost uniformly with no division
// (k <= 2^32, so the product stays below 2^63).
//   sign(i) = 1 - 2 * ((poly(i div 16 mod P; s) >> (i mod 16)) & 1) when signs are on, else 1:
//              one hash gives the signs of 16 consecutive elements (bits 0..15 of a value that is
//              uniform on [0, P), so each bit is within 2^-15 of fair).
// poly(x; a) = ((a3 x + a2) x + a1) x + a0 mod P, Horner's rule, reducing after every step.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define OSMOS_RPS_HD __host__ __device__ __forceinline__
#else
#define OSMOS_RPS_HD inline
#endif

namespace osmos::rps {

constexpr int64_t kPrime = 2147483647;  // 2^31 - 1
enum Kind : int64_t { kHashedNet = 0, kRoast = 1, kStable = 2 };

// The mapping of one layer. The Python layer packs it as a list of kConfigLen ints in this order.
struct Map {
  int64_t kind, m, offset, cols, tile_r, tile_c;
  int64_t a[4];   // index hash coefficients, each in [0, P)
  int64_t s[4];   // sign hash coefficients, each in [0, P)
  int64_t use_sign;
};
constexpr int kConfigLen = 15;

inline Map map_from_config(const int64_t* c) {
  Map p;
  p.kind = c[0]; p.m = c[1]; p.offset = c[2]; p.cols = c[3]; p.tile_r = c[4]; p.tile_c = c[5];
  for (int k = 0; k < 4; ++k) { p.a[k] = c[6 + k]; p.s[k] = c[10 + k]; }
  p.use_sign = c[14];
  return p;
}

// x mod P for 0 <= x < 2^63, without a division: 2^31 = 1 (mod P), so fold the high bits onto the
// low ones twice (y < 2^31 + 3 after the second fold) and subtract P once. Equal to x % kPrime.
OSMOS_RPS_HD int64_t mod_prime(int64_t x) {
  int64_t y = (x & kPrime) + (x >> 31);
  y = (y & kPrime) + (y >> 31);
  return y >= kPrime ? y - kPrime : y;
}

// (x * k) >> 31 for x in [0, P), k in [1, 2^32]: a value in [0, k).
OSMOS_RPS_HD int64_t reduce(int64_t x, int64_t k) { return (x * k) >> 31; }

// poly(x) for x in [0, P): every intermediate below 2^62 + 2^31.
OSMOS_RPS_HD int64_t poly_hash(int64_t x, const int64_t* a) {
  int64_t acc = a[3];
  acc = mod_prime(acc * x + a[2]);
  acc = mod_prime(acc * x + a[1]);
  acc = mod_prime(acc * x + a[0]);
  return acc;
}

OSMOS_RPS_HD int64_t global_index(const Map& p, int64_t r, int64_t c) { return p.offset + r * p.cols + c; }

// HashedNet's index of the element with global index i.
OSMOS_RPS_HD int64_t hashednet_index(const Map& p, int64_t i) { return reduce(poly_hash(mod_prime(i), p.a), p.m); }

// Index into M of element (r, c).
OSMOS_RPS_HD int64_t index(const Map& p, int64_t r, int64_t c) {
  if (p.kind == kStable) {
    int64_t i = global_index(p, r, c);
    int64_t q = i / p.m;
    int64_t shift = reduce(poly_hash(mod_prime(q), p.a), p.m);
    int64_t h = shift + (i - q * p.m);
    return h >= p.m ? h - p.m : h;
  }
  if (p.kind == kRoast) {
    int64_t z = p.tile_r * p.tile_c;
    int64_t span = p.m > z ? p.m - z : 1;
    int64_t rb = r / p.tile_r, cb = c / p.tile_c;
    int64_t start = reduce(mod_prime(mod_prime(mod_prime(rb) * p.a[2]) + mod_prime(mod_prime(cb) * p.a[1]) + p.a[0]), span);
    int64_t h = start + (r - rb * p.tile_r) * p.tile_c + (c - cb * p.tile_c);
    return h < p.m ? h : h % p.m;
  }
  return hashednet_index(p, global_index(p, r, c));
}

// The sign bits of the 16 elements with global indices 16 g .. 16 g + 15 (bit k: element 16 g + k).
OSMOS_RPS_HD int64_t sign_bits(const Map& p, int64_t g) { return poly_hash(mod_prime(g), p.s); }

// +1 or -1 for the element with global index i.
OSMOS_RPS_HD int sign_of(const Map& p, int64_t i) {
  if (!p.use_sign) return 1;
  return 1 - 2 * int((sign_bits(p, i >> 4) >> (i & 15)) & 1);
}

// +1 or -1 for element (r, c).
OSMOS_RPS_HD int sign(const Map& p, int64_t r, int64_t c) { return sign_of(p, global_index(p, r, c)); }

// Length of the run of elements (r, c), (r, c+1), ... (within row r, at most `limit`) whose indices
// are consecutive (index(r, c + k) = index(r, c) + k). CPU kernels walk rows run by run.
inline int64_t run_length(const Map& p, int64_t r, int64_t c, int64_t start_index, int64_t limit) {
  int64_t len = 1;
  if (p.kind == kStable) {
    int64_t i = global_index(p, r, c);
    int64_t to_partition_end = p.m - i % p.m;
    int64_t to_wrap = p.m - start_index;
    len = to_partition_end < to_wrap ? to_partition_end : to_wrap;
  } else if (p.kind == kRoast) {
    int64_t to_tile_end = p.tile_c - c % p.tile_c;
    int64_t to_wrap = p.m - start_index;
    len = to_tile_end < to_wrap ? to_tile_end : to_wrap;
  }
  return len < limit ? len : limit;
}

}  // namespace osmos::rps

#undef OSMOS_RPS_HD
